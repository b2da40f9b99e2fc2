"""Edge cases of the webhook checks (webhooks.py) and the ref poller's decisions (refwatch.py).

No hub and no Docker: secrets, signatures, payloads, ref matching, rate
limits, ``git ls-remote`` output, and when the poller rebuilds. The ref
checks against a repository run real ``git ls-remote`` on the test git
server (tests/helpers/gitserver.py).
"""

import hashlib
import hmac
import json
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from tornado.httputil import HTTPHeaders

from tests.helpers.gitserver import add_commit, make_repo
from tljh_repo2docker.service import push_webhooks as webhooks
from tljh_repo2docker.service import ref_watcher as refwatch
from tljh_repo2docker.db import store

KEY = b"k" * 32
UID = "0123456789abcdef0123456789abcdef"
SHA1 = "a" * 40
SHA2 = "b" * 40


def signed(secret, body, **extra):
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return HTTPHeaders({"X-Hub-Signature-256": sig, "Content-Type": "application/json", **extra})


def push_body(ref="refs/heads/main", after=SHA2, default_branch="main", gitlab=False):
    where = "project" if gitlab else "repository"
    return json.dumps({"ref": ref, "after": after, where: {"default_branch": default_branch}}).encode()


# -- secrets ----------------------------------------------------------------


def test_stored_form_is_salt_and_hash_and_gives_back_the_secret():
    secret, stored = webhooks.new_secret(KEY, UID)
    salt, digest = stored.split("$")
    assert len(salt) == 32 and len(digest) == 64 and len(stored) <= 128
    assert secret not in stored
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert webhooks.secret_of(KEY, UID, stored) == secret


def test_every_secret_is_new():
    first, stored1 = webhooks.new_secret(KEY, UID)
    second, stored2 = webhooks.new_secret(KEY, UID)
    assert first != second
    assert webhooks.secret_of(KEY, UID, stored1) == first  # each row gives back its own


@pytest.mark.parametrize(
    "key, uid, stored",
    [
        (b"another key", UID, None),  # the cookie secret changed: secrets invalid
        (KEY, "f" * 32, None),  # another environment's row
        (KEY, UID, ""),
        (KEY, UID, "no-dollar"),
        (KEY, UID, "a$b$c"),
    ],
)
def test_a_secret_from_another_key_uid_or_a_broken_row_is_none(key, uid, stored):
    _, good = webhooks.new_secret(KEY, UID)
    assert webhooks.secret_of(key, uid, good if stored is None else stored) is None


def test_no_row_is_none():
    assert webhooks.secret_of(KEY, UID, None) is None


# -- signatures -------------------------------------------------------------


def test_github_signature_of_the_exact_body():
    secret, _ = webhooks.new_secret(KEY, UID)
    body = push_body()
    assert webhooks.check_signature(secret, body, signed(secret, body)) == "github"
    with pytest.raises(webhooks.WebhookRefused):
        webhooks.check_signature(secret, body + b" ", signed(secret, body))
    with pytest.raises(webhooks.WebhookRefused):
        webhooks.check_signature(secret, body, signed("other", body))


@pytest.mark.parametrize(
    "header",
    ["", "sha256=", "sha1=" + "0" * 40, "sha256=" + "0" * 64, "sha256=zz", "ünïcode", "sha256=" + "a" * 5000],
)
def test_bad_github_signatures(header):
    secret, _ = webhooks.new_secret(KEY, UID)
    with pytest.raises(webhooks.WebhookRefused):
        webhooks.check_signature(secret, b"{}", HTTPHeaders({"X-Hub-Signature-256": header}))


def test_gitlab_token():
    secret, _ = webhooks.new_secret(KEY, UID)
    assert webhooks.check_signature(secret, b"{}", HTTPHeaders({"X-Gitlab-Token": secret})) == "gitlab"
    for token in ("", secret[:-1], secret + "x", secret.upper(), "é"):
        with pytest.raises(webhooks.WebhookRefused):
            webhooks.check_signature(secret, b"{}", HTTPHeaders({"X-Gitlab-Token": token}))


def test_no_secret_accepts_nothing_not_even_an_empty_signature():
    body = b"{}"
    empty_sig = "sha256=" + hmac.new(b"", body, hashlib.sha256).hexdigest()
    for headers in (
        HTTPHeaders(),
        HTTPHeaders({"X-Hub-Signature-256": empty_sig}),
        HTTPHeaders({"X-Gitlab-Token": ""}),
    ):
        with pytest.raises(webhooks.WebhookRefused):
            webhooks.check_signature(None, body, headers)


# -- payloads -----------------------------------------------------------------


def test_github_push_and_ping():
    body = push_body()
    push = webhooks.parse_event("github", HTTPHeaders({"X-GitHub-Event": "push"}), body)
    assert (push.ref, push.after, push.default_branch, push.deleted) == ("refs/heads/main", SHA2, "main", False)
    assert webhooks.parse_event("github", HTTPHeaders({"X-GitHub-Event": "ping"}), b"{}") is None
    assert webhooks.parse_event("github", HTTPHeaders({"X-GitHub-Event": "issues"}), b"[") is None


def test_github_form_encoded_payload():
    body = urlencode({"payload": push_body().decode()}).encode()
    headers = HTTPHeaders(
        {"X-GitHub-Event": "push", "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert webhooks.parse_event("github", headers, body).ref == "refs/heads/main"


def test_gitlab_push_and_tag_push():
    body = push_body(ref="refs/tags/v1", gitlab=True)
    for event in ("Push Hook", "Tag Push Hook"):
        push = webhooks.parse_event("gitlab", HTTPHeaders({"X-Gitlab-Event": event}), body)
        assert push.ref == "refs/tags/v1" and push.default_branch == "main"
    assert webhooks.parse_event("gitlab", HTTPHeaders({"X-Gitlab-Event": "Issue Hook"}), body) is None


def test_deleted_branch():
    body = push_body(after="0" * 40)
    push = webhooks.parse_event("github", HTTPHeaders({"X-GitHub-Event": "push"}), body)
    assert push.deleted


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"text"',
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"ref": 1}',
        b'{"ref": "main"}',  # not a full ref
        b'{"after": "x"}',
        b'{"ref": "refs/heads/main", "after": 5}',
    ],
)
def test_malformed_push_bodies_are_refused(body):
    with pytest.raises(webhooks.WebhookRefused):
        webhooks.parse_event("github", HTTPHeaders({"X-GitHub-Event": "push"}), body)


def test_malformed_form_body_is_refused():
    headers = HTTPHeaders({"X-GitHub-Event": "push", "Content-Type": "application/x-www-form-urlencoded"})
    for body in (b"", b"x=1", b"payload=1&payload=2", b"payload=%7B"):
        with pytest.raises(webhooks.WebhookRefused):
            webhooks.parse_event("github", headers, body)


def test_a_default_branch_that_is_not_text_is_ignored():
    body = json.dumps({"ref": "refs/heads/main", "repository": {"default_branch": ["main"]}}).encode()
    push = webhooks.parse_event("github", HTTPHeaders({"X-GitHub-Event": "push"}), body)
    assert push.default_branch is None and push.deleted  # no "after": nothing to build


# -- refs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_ref, pushed, default, matches",
    [
        ("main", "refs/heads/main", None, True),
        ("main", "refs/tags/main", None, True),
        ("main", "refs/heads/main2", None, False),
        ("main", "refs/heads/feature/main", None, False),
        ("feature/x", "refs/heads/feature/x", None, True),
        ("v1.0", "refs/tags/v1.0", None, True),
        ("HEAD", "refs/heads/main", "main", True),
        ("HEAD", "refs/heads/dev", "main", False),
        ("HEAD", "refs/heads/main", None, False),  # no default branch said: not guessed
        ("HEAD", "refs/tags/main", "main", False),
        ("refs/heads/main", "refs/heads/main", None, True),
        ("refs/heads/main", "refs/tags/main", None, False),
        (SHA1, f"refs/heads/{SHA1}", None, False),  # a commit never moves
        (SHA1.upper(), f"refs/heads/{SHA1.upper()}", None, False),
        ("", "refs/heads/", None, False),
    ],
)
def test_ref_matching(env_ref, pushed, default, matches):
    assert webhooks.ref_matches(env_ref, pushed, default) is matches


# -- rate limits ----------------------------------------------------------------


def test_token_bucket_bursts_then_waits_then_refills():
    now = [0.0]
    buckets = webhooks.TokenBuckets(6, clock=lambda: now[0])  # 6 a minute: one each 10 s
    assert [buckets.take("a") for _ in range(6)] == [0.0] * 6
    wait = buckets.take("a")
    assert 9 < wait <= 10
    assert buckets.take("b") == 0.0  # each key its own
    now[0] += 10
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_token_buckets_keep_a_bounded_number_of_keys():
    buckets = webhooks.TokenBuckets(1, max_keys=100)
    for i in range(1000):
        buckets.take(str(i))
    assert len(buckets._buckets) == 100


def test_no_rate_is_no_limit():
    buckets = webhooks.TokenBuckets(0)
    assert all(buckets.take("a") == 0 for _ in range(1000))


# -- the poller's decisions -------------------------------------------------------


LS_REMOTE = "\n".join(
    [
        f"{'1' * 40}\tHEAD",
        f"{'1' * 40}\trefs/heads/main",
        f"{'2' * 40}\trefs/tags/main",
        f"{'3' * 40}\trefs/tags/v1",
        f"{'4' * 40}\trefs/tags/v1^{{}}",
        f"{'5' * 40}\trefs/tags/light",
    ]
)


@pytest.mark.parametrize(
    "ref, commit",
    [
        ("HEAD", "1" * 40),
        ("main", "1" * 40),  # the branch wins over the tag
        ("v1", "4" * 40),  # an annotated tag: the commit it points to
        ("light", "5" * 40),
        ("refs/tags/main", "2" * 40),
        ("nothere", None),
    ],
)
def test_resolve(ref, commit):
    assert refwatch.resolve(LS_REMOTE, ref) == commit


def env(**fields):
    base = dict(commit=SHA1, remote_commit=None, status=store.BUILT)
    base.update(fields)
    return SimpleNamespace(**base)


def test_should_rebuild():
    assert not refwatch.should_rebuild(env(), SHA1)
    assert not refwatch.should_rebuild(env(), SHA1[:12])  # abbreviated ids are the same commit
    assert refwatch.should_rebuild(env(), SHA2)
    # a rebuild for SHA2 failed (or was cancelled): not again for SHA2
    assert not refwatch.should_rebuild(env(status=store.FAILED, remote_commit=SHA2), SHA2)
    assert not refwatch.should_rebuild(env(status=store.CANCELLED, remote_commit=SHA2), SHA2)
    # ... until the ref moves on
    assert refwatch.should_rebuild(env(status=store.FAILED, remote_commit=SHA2), "c" * 40)
    # refused by a quota (nothing built, status still built): tried again
    assert refwatch.should_rebuild(env(remote_commit=SHA2), SHA2)
    # the backend did not say which commit it built: the last seen is the reference
    assert not refwatch.should_rebuild(env(commit=None, remote_commit=SHA2), SHA2)
    assert not refwatch.should_rebuild(env(commit=None), SHA2)  # no reference yet: no guess
    assert not refwatch.should_rebuild(env(), None)


@pytest.fixture
def watcher():
    from tljh_repo2docker.app import TljhRepo2Docker

    return refwatch.RefWatcher(parent=TljhRepo2Docker())


def test_git_gets_no_secrets_and_no_prompts(watcher, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret-token")
    monkeypatch.setenv("TLJH_REPO2DOCKER_COOKIE_SECRET", "ab" * 32)
    env_vars = watcher.git_environment()
    assert "secret-token" not in json.dumps(env_vars) and "ab" * 32 not in json.dumps(env_vars)
    assert env_vars["GIT_TERMINAL_PROMPT"] == "0"
    assert "ext" not in env_vars["GIT_ALLOW_PROTOCOL"].split(":")


async def test_ls_remote_on_a_real_repository(watcher, git_server, git_root):
    name = "refwatch-unit"
    make_repo(git_root, name, {"README": "one"})
    url = git_server.url(name)
    first = await watcher.ls_remote(url, "HEAD")
    assert first == await watcher.ls_remote(url, "main")
    second = add_commit(git_root, name, {"README": "two"})
    assert await watcher.ls_remote(url, "main") == second != first
    assert await watcher.ls_remote(url, "abc1234") is None  # an abbreviated commit id
    with pytest.raises(refwatch.LsRemoteError, match="no branch or tag 'nothere'"):
        await watcher.ls_remote(url, "nothere")


async def test_ls_remote_failures_say_why(watcher, private_git_server, private_git_root, git_server):
    make_repo(private_git_root, "refwatch-private", {"README": "x"})
    with pytest.raises(refwatch.LsRemoteError, match="asks for credentials"):
        await watcher.ls_remote(private_git_server.url("refwatch-private"), "HEAD")
    with pytest.raises(refwatch.LsRemoteError, match="git ls-remote failed"):
        await watcher.ls_remote(git_server.url("does-not-exist"), "HEAD")
    with pytest.raises(refwatch.LsRemoteError, match="failed"):
        await watcher.ls_remote("ext::sh -c touch% /tmp/refwatch-pwned", "HEAD")


async def test_ls_remote_timeout(watcher):
    import socket

    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        watcher.timeout = 1
        with pytest.raises(refwatch.LsRemoteError, match="longer than 1s"):
            await watcher.ls_remote(f"http://127.0.0.1:{listener.getsockname()[1]}/x.git", "HEAD")


async def test_what_cannot_be_polled_is_recorded_not_guessed(sqlite_sessions, git_server, git_root):
    """Private repositories, non-URL specs and commit ids: no ls-remote, no rebuild."""
    from tljh_repo2docker.app import TljhRepo2Docker

    app = TljhRepo2Docker()
    app.sessions = sqlite_sessions
    watcher = refwatch.RefWatcher(parent=app, sessions=sqlite_sessions)
    common = dict(owner="o", image_id="sha256:x", commit=SHA1, auto_rebuild=True)
    cases = {
        "private": dict(repo=git_server.url("x"), ref="main", private=True),
        "spec": dict(repo="owner/repo", ref="main", provider="gh"),
        "sha": dict(repo=git_server.url("x"), ref=SHA2),
    }
    for name, fields in cases.items():
        await store.create_environment(
            sqlite_sessions, uid=name, name=name, image_name=f"t/{name}:1", **{**common, **fields}
        )
        await store.update_environment(sqlite_sessions, name, status=store.BUILT)
    assert {e.uid for e in await store.auto_rebuild_environments(sqlite_sessions)} == set(cases)
    await watcher.check_all()
    private = await store.get_environment(sqlite_sessions, "private")
    assert private.remote_error == refwatch.PRIVATE and private.build_number == 1
    spec = await store.get_environment(sqlite_sessions, "spec")
    assert spec.remote_error == refwatch.NOT_A_URL and spec.build_number == 1
    sha = await store.get_environment(sqlite_sessions, "sha")
    assert sha.remote_error is None and sha.remote_checked is None and sha.build_number == 1
    # queued or building, or never built: not checked
    await store.update_environment(sqlite_sessions, "private", status=store.QUEUED)
    await store.update_environment(sqlite_sessions, "spec", image_id=None)
    assert {e.uid for e in await store.auto_rebuild_environments(sqlite_sessions)} == {"sha"}
