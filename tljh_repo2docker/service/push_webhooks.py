"""Push webhooks from GitHub and GitLab: secrets, signature checks, payloads, refs.

Nothing here touches the database or the network: the handler
(handlers/webhook.py) reads the environment and calls these.

Secrets. GitHub signs the raw body with HMAC-SHA256 keyed with the secret
(``X-Hub-Signature-256: sha256=<hex>``), so checking it needs the secret
itself, not a hash of it. The secret is therefore derived, never stored:
``S = HMAC-SHA256(service key, uid + ":" + salt)`` with the service's own
key (its cookie secret) and a random salt; the database keeps only
``salt$sha256(S)``. A check recomputes S from the salt, makes sure its hash
is the stored one, then checks the signature (GitHub) or compares the token
(GitLab, ``X-Gitlab-Token: S``). Changing the service's cookie secret makes
every webhook secret invalid: enable the webhooks again.
"""

import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from urllib.parse import parse_qs

_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_ZERO_SHA = re.compile(r"^0+$")
#: Used when the uid is unknown, so that a check costs the same either way.
_DUMMY_STORED = "0" * 32 + "$" + "0" * 64


class WebhookRefused(Exception):
    """The request is not a valid webhook for this environment (always answered 403, no detail)."""


def is_full_sha(ref):
    """Whether ``ref`` is a full commit id (it names a commit that never moves)."""
    return bool(ref) and bool(_FULL_SHA.match(ref.lower()))


def derive_secret(key: bytes, uid: str, salt: str) -> str:
    return hmac.new(key, f"{uid}:{salt}".encode(), hashlib.sha256).hexdigest()


def new_secret(key: bytes, uid: str) -> tuple[str, str]:
    """``(secret, stored)``: a new secret for ``uid`` and what the database keeps of it."""
    salt = secrets.token_hex(16)
    secret = derive_secret(key, uid, salt)
    return secret, f"{salt}${hashlib.sha256(secret.encode()).hexdigest()}"


def secret_of(key: bytes, uid: str, stored: str | None) -> str | None:
    """The secret behind ``stored`` (``salt$hash``), or None when it does not
    match (another service key) or there is none. Costs the same either way."""
    valid = isinstance(stored, str) and stored.count("$") == 1
    salt, digest = (stored if valid else _DUMMY_STORED).split("$")
    secret = derive_secret(key, uid, salt)
    matches = hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), digest)
    return secret if valid and matches else None


def check_signature(secret: str | None, body: bytes, headers) -> str:
    """Which sender (``"github"`` or ``"gitlab"``) signed the request with
    ``secret``; WebhookRefused when none did. ``headers``: a mapping with
    case-insensitive names (Tornado's HTTPHeaders)."""
    key = (secret or "").encode()
    signature = headers.get("X-Hub-Signature-256")
    token = headers.get("X-Gitlab-Token")
    ok = False
    sender = None
    if signature is not None:
        expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace"))
        sender = "github"
    elif token is not None:
        ok = hmac.compare_digest(key, token.encode("utf-8", "replace"))
        sender = "gitlab"
    if not (ok and secret):
        raise WebhookRefused()
    return sender


class Push:
    """What a push event says: the ref pushed, the commit it is at now, and
    the repository's default branch (None when not said)."""

    def __init__(self, ref, after, default_branch):
        self.ref = ref
        self.after = after
        self.default_branch = default_branch

    @property
    def deleted(self):
        return not self.after or bool(_ZERO_SHA.match(self.after))


def _json(body: bytes, content_type: str):
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        # GitHub's other content type: the JSON in a form field "payload".
        form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=10)
        (payload,) = form["payload"]
        return json.loads(payload)
    return json.loads(body.decode("utf-8"))


def parse_event(sender: str, headers, body: bytes) -> Push | None:
    """The push of a signed request, None for other events (GitHub's ping, …);
    WebhookRefused for a body that is not what the event says it is."""
    if sender == "github":
        event = headers.get("X-GitHub-Event", "")
        if event != "push":
            return None
    else:
        event = headers.get("X-Gitlab-Event", "")
        if event not in ("Push Hook", "Tag Push Hook"):
            return None
    try:
        payload = _json(body, headers.get("Content-Type", "application/json"))
    except (ValueError, KeyError, RecursionError, UnicodeDecodeError):
        raise WebhookRefused() from None
    if not isinstance(payload, dict):
        raise WebhookRefused()
    ref = payload.get("ref")
    after = payload.get("after")
    repository = payload.get("repository") if sender == "github" else payload.get("project")
    default_branch = repository.get("default_branch") if isinstance(repository, dict) else None
    if not isinstance(ref, str) or not ref.startswith("refs/"):
        raise WebhookRefused()
    if after is not None and not isinstance(after, str):
        raise WebhookRefused()
    if not isinstance(default_branch, str):
        default_branch = None
    return Push(ref, after, default_branch)


def ref_matches(env_ref: str, pushed: str, default_branch: str | None) -> bool:
    """Whether a push of ``pushed`` (``refs/heads/x``, ``refs/tags/y``) moves
    the environment's ref ``env_ref``: ``main`` is the branch or the tag
    main, ``refs/...`` itself, ``HEAD`` the default branch; a commit id never."""
    if not env_ref or is_full_sha(env_ref):
        return False
    if env_ref == "HEAD":
        return bool(default_branch) and pushed == f"refs/heads/{default_branch}"
    if env_ref.startswith("refs/"):
        return pushed == env_ref
    return pushed in (f"refs/heads/{env_ref}", f"refs/tags/{env_ref}")


class TokenBuckets:
    """Rate limits per key: ``rate`` requests per minute, in bursts of up to
    ``rate``. Keeps at most ``max_keys`` keys (the least recently used go)."""

    def __init__(self, rate, max_keys=10_000, clock=time.monotonic):
        self.rate = float(rate)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets = OrderedDict()  # key -> (tokens, last time)

    def take(self, key) -> float:
        """Take one token for ``key``: 0 when allowed, else the seconds until one is there."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate / 60)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) * 60 / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
