"""Build environments with a BinderHub, following its event stream.

BinderHub builds an image when asked ``GET {url}/build/<provider>/<spec>``
and answers with a server-sent event stream: one ``data: {json}`` message per
step, each with a ``phase`` (``waiting``, ``fetching``, ``building``,
``pushing``, ...) and a ``message``, and ``:keepalive`` comment lines while
nothing happens. With ``build_only=true`` (accepted when BinderHub runs with
``BinderHub.enable_api_only_mode``) it stops after the image is pushed to its
registry and ends the stream with ``phase: ready`` and the ``imageName``;
``phase: failed`` ends a failed build. KubeSpawner then pulls that image from
the registry when a user starts the environment.

What BinderHub does not offer, and what this backend does instead:

* no credentials or build args per build (``supports_credentials`` and
  ``supports_build_args`` are False; BinderHub's repo providers hold the
  credentials for private repositories);
* no labels on the image and no choice of its name: the name comes from the
  final event, and the environment's metadata lives in our database only;
* no cancel endpoint: :meth:`BinderHubBuilder.cancel` stops following the
  stream; BinderHub notices the closed stream only when it next has an event
  to send, and the build may still finish and push its image, which the
  cancelled (or deleted) environment never takes up;
* errors of its own (no token, no ``Accept``, ``build_only`` refused) come
  with HTTP 200 as a ``failed`` event carrying ``status_code``, which counts
  here as the answer's status;
* a failed build's ``failed`` message is repo2docker's summary (often the
  whole ``docker buildx build`` command line): the reason stored is the log
  line that says why, chosen by :func:`.failure.describe` like the Docker
  backend does;
* no re-attach by build id: :meth:`BinderHubBuilder.attach` returns None and
  a build that was running when the service restarted is requested again
  (``resubmit_on_recover``), which BinderHub answers by following the build
  it still runs or with the image it already pushed;
* no image deletion: images stay in the registry.
"""

import asyncio
import collections
import json
import os
import re
from contextlib import suppress
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import httpx
from httpx_sse import SSEError, aconnect_sse
from traitlets import Float, Integer, Unicode, default, validate

from . import failure
from .base import BUILT, CANCELLED, FAILED, LOG, STATUS, Builder, BuildError, BuildEvent

#: The check of a built image (see docker/check.py) is the Docker backend's.
BINDERHUB_CHECK_SKIPPED = "BinderHub builds are not checked: its images live in its registry"

#: Repository providers of BinderHub's default configuration (its
#: ``repo_providers``), by URL prefix, with a label for forms.
PROVIDERS = {
    "gh": "GitHub",
    "gl": "GitLab",
    "git": "Git repository",
    "gist": "Gist",
    "zenodo": "Zenodo DOI",
    "figshare": "Figshare DOI",
    "hydroshare": "HydroShare resource",
    "dataverse": "Dataverse DOI",
    "ckan": "CKAN dataset",
}

#: Phases that end a BinderHub event stream successfully. With
#: ``build_only=true`` BinderHub ends with ``ready``; an older BinderHub that
#: ignores ``build_only`` says ``built`` before it tries to launch.
_DONE_PHASES = frozenset({"ready", "built"})
#: BinderHub says ``failed``; repo2docker's own log lines may say ``failure``.
_FAILED_PHASES = frozenset({"failed", "failure"})
#: Phases that carry log lines but are not a step of the build.
_LOG_ONLY_PHASES = frozenset({"", "log"})

_DOI_RE = re.compile(r"^10\.\d{4,}/\S+$")
_DOI_PREFIXES = ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "http://dx.doi.org/")
_HYDROSHARE_ID_RE = re.compile(r"[0-9a-f]{32}")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")

#: What the build's log says when a BinderHub build is cancelled.
CANCEL_NOTE = (
    "Stopped following the BinderHub build. BinderHub cannot cancel a build: it "
    "notices only when it next has news to send, and may still finish the build "
    "and make its image, which this environment will not use."
)


class SpecError(ValueError):
    """The repository cannot be expressed for this provider; the message says why."""


def _strip_host(repo, hosts):
    """``https://host/a/b`` or ``host/a/b`` -> ``a/b`` (any host for a URL)."""
    if "://" in repo:
        return urlsplit(repo).path.strip("/")
    for host in hosts:
        if repo.lower().startswith(host + "/"):
            return repo[len(host) + 1 :].strip("/")
    return repo.strip("/")


def _strip_git_suffix(path):
    return path[: -len(".git")] if path.endswith(".git") else path


def _doi(repo, label):
    doi = repo
    for prefix in _DOI_PREFIXES:
        if doi.lower().startswith(prefix):
            doi = doi[len(prefix) :]
            break
    if doi.lower().startswith("doi:"):
        doi = doi[len("doi:") :]
    doi = doi.strip().strip("/")
    if not _DOI_RE.match(doi):
        raise SpecError(f"{repo!r} is not a {label} DOI like 10.1234/name")
    # BinderHub reads these specs raw (``https://doi.org/{spec}``): keep the slashes.
    return quote(doi, safe="/")


def build_spec(provider, repo, ref):
    """The ``<spec>`` of BinderHub's ``/build/<provider>/<spec>`` for a repository.

    Follows BinderHub's table of repository providers:

    * ``gh``: ``<owner>/<repo>/<ref>``; the ref may contain ``/`` (BinderHub
      splits the spec in three at the first two slashes);
    * ``gl``: ``<url-escaped namespace>/<url-escaped ref>`` (nested groups);
    * ``git``: ``<url-escaped repository URL>/<url-escaped ref>``;
    * ``gist``: ``<user>/<gist id>[/<ref>]``;
    * ``zenodo``, ``figshare``, ``dataverse``: the DOI (no ref);
    * ``hydroshare``: the 32-hex-digit resource id (no ref);
    * ``ckan``: ``<url-escaped CKAN URL>/<dataset id>`` (the ref is the dataset id).

    ``repo`` may be a full URL (``https://github.com/owner/repo.git``) for the
    hosted providers. An empty ref means ``HEAD`` where a ref applies. A URL
    with credentials in it is refused. Raises :class:`SpecError` with a
    message for the user.
    """
    provider = (provider or "").strip()
    repo = (repo or "").strip()
    ref = (ref or "").strip()
    if provider not in PROVIDERS:
        known = ", ".join(sorted(PROVIDERS))
        raise SpecError(f"unknown BinderHub provider {provider!r} (known: {known})")
    if not repo:
        raise SpecError(f"a {PROVIDERS[provider]} repository is required")

    if provider == "gh":
        path = _strip_git_suffix(_strip_host(repo, ("github.com", "www.github.com")))
        parts = path.split("/")
        if len(parts) != 2 or not all(parts):
            raise SpecError(f"{repo!r} is not a GitHub repository like owner/name")
        owner, name = parts
        return f"{quote(owner, safe='')}/{quote(name, safe='')}/{quote(ref or 'HEAD', safe='/')}"

    if provider == "gist":
        path = _strip_host(repo, ("gist.github.com",))
        parts = path.split("/")
        if len(parts) != 2 or not all(parts):
            raise SpecError(f"{repo!r} is not a gist like user/gist-id")
        spec = "/".join(quote(p, safe="") for p in parts)
        return f"{spec}/{quote(ref, safe='')}" if ref else spec

    if provider == "gl":
        namespace = _strip_git_suffix(_strip_host(repo, ("gitlab.com", "www.gitlab.com")))
        if "/" not in namespace or not all(namespace.split("/")):
            raise SpecError(f"{repo!r} is not a GitLab project like group/name")
        return f"{quote(namespace, safe='')}/{quote(ref or 'HEAD', safe='')}"

    if provider in {"git", "ckan"} and "://" in repo:
        parts = urlsplit(repo)
        if parts.username or parts.password:
            # BinderHub would log it and repeat it in its messages.
            raise SpecError(
                "a repository URL must not hold credentials; give BinderHub's "
                "repository providers their own credentials instead"
            )

    if provider == "git":
        return f"{quote(repo, safe='')}/{quote(ref or 'HEAD', safe='')}"

    if provider in {"zenodo", "figshare", "dataverse"}:
        return _doi(repo, PROVIDERS[provider].split()[0])

    if provider == "hydroshare":
        match = _HYDROSHARE_ID_RE.search(repo.lower())
        if not match:
            raise SpecError(f"{repo!r} holds no HydroShare resource id (32 hexadecimal digits)")
        return match.group(0)

    # ckan
    if not ref:
        raise SpecError("a CKAN build needs the dataset id as its ref")
    return f"{quote(repo, safe='')}/{quote(ref, safe='')}"


def build_url(base_url, provider, spec):
    """``{base_url}/build/{provider}/{spec}`` for a base URL with or without a path or slash."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return f"{base}build/{quote(provider, safe='')}/{spec}"


def _failure_message(body, status_code):
    """The reason in an error response: BinderHub writes errors as a failed event."""
    text = body.decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith("data:"):
            with suppress(ValueError, AttributeError):
                message = json.loads(line[len("data:") :]).get("message")
                if isinstance(message, str) and message.strip():
                    return message.strip()
    text = " ".join(text.split())
    if text and not text.lstrip().startswith("<"):
        return text[:200]
    return httpx.codes.get_reason_phrase(status_code) or "error"


@dataclass
class _Follower:
    """One followed build: the task reading the stream and the queue to ``build()``."""

    uid: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    finished: bool = False

    def emit(self, event):
        if self.finished:
            return
        self.finished = event.final
        self.queue.put_nowait(event)


class _Answered(Exception):
    """BinderHub answered with an error status (HTTP, or ``status_code`` of its event)."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _StreamEnded(Exception):
    """The stream ended; ``event`` is the final event to report."""

    def __init__(self, event):
        super().__init__(event.message)
        self.event = event


class BinderHubBuilder(Builder):
    """Build environments with a BinderHub in build-only mode."""

    supports_credentials = False
    supports_build_args = False
    # BinderHub builds repositories only.
    sources = ("git",)
    # Asking again for the same build attaches to it while BinderHub still
    # runs it, or finds the pushed image: see attach().
    resubmit_on_recover = True
    display_name = "BinderHub"

    url = Unicode(
        "",
        help="""
        Base URL of the BinderHub, for example ``http://binder/services/binder/``.

        Builds are requested at ``{url}build/<provider>/<spec>?build_only=true``
        and the health check at ``{url}health``. The URL may have a path (a
        BinderHub running as a JupyterHub service lives under
        ``/services/<name>/``); a missing trailing slash is added.
        Default: empty, which makes every build fail with a message saying so.
        """,
    ).tag(config=True)

    @validate("url")
    def _validate_url(self, proposal):
        url = proposal.value.strip()
        if not url:
            return url
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(
                f"BinderHubBuilder.url must be an http(s) URL like "
                f"http://binder/services/binder/, not {url!r}"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"BinderHubBuilder.url must not have a query or fragment: {url!r}")
        return url if url.endswith("/") else url + "/"

    token = Unicode(
        help="""
        API token sent to BinderHub as ``Authorization: token <token>``.

        A BinderHub with ``BinderHub.auth_enabled`` checks it with JupyterHub,
        so it must be a token with the ``access:services!service=<binder
        service name>`` scope. Default: the environment variable
        ``JUPYTERHUB_API_TOKEN``, the token JupyterHub gives a hub-managed
        service. Never logged or shown in build logs.
        """,
    ).tag(config=True)

    @default("token")
    def _default_token(self):
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    connect_timeout = Float(
        10.0,
        help="""
        Seconds to wait for a connection to BinderHub (and for a request to be
        sent) before counting the attempt as failed; also the time allowed for
        each read of the health check's answer. Default: 10 seconds.
        """,
    ).tag(config=True)

    read_timeout = Float(
        300.0,
        help="""
        Seconds of silence after which a build's event stream is considered dead
        and the build is reported failed.

        BinderHub sends a keep-alive comment every 25 to 30 seconds, so any value
        well above that only fires when BinderHub or the network is gone.
        Default: 300 seconds.
        """,
    ).tag(config=True)

    retries = Integer(
        3,
        min=0,
        help="""
        How many times to retry a build request that could not connect or that
        BinderHub answered with a 5xx status, before any event arrived.

        A stream that breaks after it started is not retried: the build is
        reported failed with the reason. Default: 3 retries.
        """,
    ).tag(config=True)

    retry_delay = Float(
        1.0,
        min=0,
        help="""
        Seconds to wait before the first retry of a build request; the wait
        doubles after every further failed attempt. Default: 1 second.
        """,
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._client = None
        self._followers = {}
        # Whether BinderHub's health lists its registry; None until it is read.
        self._registry = None

    # -- HTTP --------------------------------------------------------------

    @property
    def client(self):
        """The one HTTP client for this BinderHub, created on first use."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._stream_timeout(), follow_redirects=False)
        return self._client

    def _stream_timeout(self):
        # Read per request, so that changed settings apply to the next build.
        return httpx.Timeout(
            connect=self.connect_timeout,
            read=self.read_timeout,
            write=self.connect_timeout,
            pool=self.connect_timeout,
        )

    def _headers(self):
        return {"Authorization": f"token {self.token}"} if self.token else {}

    # -- building ----------------------------------------------------------

    async def build(self, request):
        follower = _Follower(request.uid)
        follower.task = asyncio.create_task(
            self._follow(request, follower), name=f"binderhub-build-{request.uid}"
        )
        self._followers[request.uid] = follower
        try:
            while True:
                event = await follower.queue.get()
                yield event
                if event.final:
                    return
        finally:
            if self._followers.get(request.uid) is follower:
                del self._followers[request.uid]
            await self._stop(follower)

    async def _stop(self, follower):
        task = follower.task
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def _follow(self, request, follower):
        """Request the build and relay its events; always ends with a final event."""
        try:
            await self._request_and_relay(request, follower)
        except _StreamEnded as e:
            follower.emit(e.event)
        except asyncio.CancelledError:
            follower.emit(BuildEvent(CANCELLED, CANCEL_NOTE))
            raise
        except Exception:
            self.log.exception("Following BinderHub build %s failed", request.uid)
            follower.emit(
                BuildEvent(FAILED, "Unexpected error while following the BinderHub build")
            )
        finally:
            if not follower.finished:
                follower.emit(BuildEvent(FAILED, "The BinderHub build ended without a result"))

    def _fail(self, message):
        return _StreamEnded(BuildEvent(FAILED, message))

    def _prepare(self, request):
        if not self.url:
            raise self._fail("No BinderHub URL is configured (BinderHubBuilder.url)")
        if request.has_credentials:
            raise self._fail(
                "BinderHub builds cannot use credentials; configure them in "
                "BinderHub's repository providers instead"
            )
        if request.build_args:
            raise self._fail("BinderHub builds cannot use build arguments")
        try:
            spec = build_spec(request.provider, request.repo, request.ref)
        except SpecError as e:
            raise self._fail(f"Cannot build with BinderHub: {e}") from None
        return build_url(self.url, request.provider, spec)

    async def _request_and_relay(self, request, follower):
        url = self._prepare(request)
        self.log.info("Building %s on BinderHub: %s", request.uid, url)
        delay = self.retry_delay
        for attempt in range(self.retries + 1):
            retry_reason = None
            try:
                async with aconnect_sse(
                    self.client,
                    "GET",
                    url,
                    params={"build_only": "true"},
                    headers=self._headers(),
                    timeout=self._stream_timeout(),
                ) as source:
                    response = source.response
                    if response.status_code != 200:
                        body = await response.aread()
                        raise _Answered(
                            response.status_code, _failure_message(body, response.status_code)
                        )
                    await self._relay(request, source, follower)
                    return
            except _Answered as e:
                if e.status < 500:
                    raise self._fail(
                        f"BinderHub refused the build (HTTP {e.status}): {e.reason}"
                    ) from None
                retry_reason = f"BinderHub answered HTTP {e.status}: {e.reason}"
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                retry_reason = (
                    f"Could not connect to BinderHub at {self.url}: {e or type(e).__name__}"
                )
            except httpx.ReadTimeout:
                raise self._fail(
                    f"No news from BinderHub for {self.read_timeout:g} s; "
                    "stopped following the build"
                ) from None
            except SSEError:
                raise self._fail(
                    "BinderHub did not answer with an event stream; "
                    "is BinderHubBuilder.url the BinderHub's base URL?"
                ) from None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                raise self._fail(
                    f"The connection to BinderHub broke during the build: {e or type(e).__name__}"
                ) from None
            except httpx.HTTPError as e:
                raise self._fail(f"Talking to BinderHub failed: {type(e).__name__}: {e}") from None

            if attempt < self.retries:
                self.log.warning(
                    "BinderHub build %s: %s; retrying in %g s", request.uid, retry_reason, delay
                )
                follower.emit(BuildEvent(STATUS, f"{retry_reason}; retrying in {delay:g} s"))
                await asyncio.sleep(delay)
                delay *= 2
        raise self._fail(retry_reason)

    async def _relay(self, request, source, follower):
        """Turn BinderHub's events into ours until a final one."""
        last_phase = None
        first = True
        tail = collections.deque(maxlen=failure.TAIL_LINES)
        async for sse in source.aiter_sse():
            if not sse.data.strip():
                continue
            try:
                payload = json.loads(sse.data)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                raise self._fail(
                    f"BinderHub sent an event that is not a JSON object: {sse.data[:200]!r}"
                )
            phase = str(payload.get("phase") or "").lower()
            message = payload.get("message")
            message = message if isinstance(message, str) else ""

            status_code = payload.get("status_code")
            if (
                phase in _FAILED_PHASES
                and first
                and isinstance(status_code, int)
                and not isinstance(status_code, bool)
                and status_code != 200
            ):
                # BinderHub's own error (send_error): the answer is 200, the
                # status is in the event.
                raise _Answered(status_code, message.strip() or f"HTTP {status_code}")
            first = False
            if phase in _FAILED_PHASES:
                reason = failure.describe(
                    "The build failed on BinderHub", [*tail, *message.splitlines()]
                ) if (tail or message.strip()) else "BinderHub reported the build failed"
                self.log.info("BinderHub build %s failed: %s", request.uid, reason)
                raise self._fail(reason)
            if phase in _DONE_PHASES:
                image = payload.get("imageName")
                if not isinstance(image, str) or not image:
                    raise self._fail(f"BinderHub said {phase!r} without naming the image")
                tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
                self.log.info("BinderHub build %s done: %s", request.uid, image)
                raise _StreamEnded(
                    BuildEvent(
                        BUILT,
                        message.strip() or f"Image {image} is ready",
                        image_name=image,
                        # BinderHub reports no image id. Its tag (the resolved
                        # ref) names the content, and a set image_id is what
                        # makes the environment usable for servers.
                        image_id=tag or "latest",
                        commit=tag if _SHA1_RE.match(tag) else None,
                        # Not checked: the image lives in BinderHub's
                        # registry, not on an engine this service runs.
                        check={"status": "skipped", "message": BINDERHUB_CHECK_SKIPPED},
                    )
                )
            if phase not in _LOG_ONLY_PHASES and phase != last_phase:
                last_phase = phase
                follower.emit(BuildEvent(STATUS, f"BinderHub: {phase}"))
            # BinderHub relays a blank line after each of repo2docker's events.
            if message.strip():
                for line in message.rstrip("\n").split("\n"):
                    line = line.rstrip("\r")
                    tail.append(line)
                    follower.emit(BuildEvent(LOG, line))
        after = f" (last phase: {last_phase})" if last_phase else ""
        raise self._fail(f"BinderHub closed the event stream before the build finished{after}")

    # -- the rest of the interface -------------------------------------------

    def attach(self, uid, skip_lines, cursor=None):
        """Always None: BinderHub has no way to follow a build by our id.

        Asking again for the same ``/build/<provider>/<spec>`` does attach to a
        build BinderHub still runs (or finds the pushed image), but this
        interface only passes the uid. Instead, ``resubmit_on_recover`` tells
        the manager to queue the build again from the stored environment
        (BinderHub builds never carry credentials, so nothing is missing).
        BinderHub then sends the build's log again from its start, or, if
        the build ended meanwhile, not at all: the manager drops the lines
        it already stored and says in a status line what happened (see
        :func:`~.recovery.without_replay`).
        """
        return None

    async def running(self):
        return set(self._followers)

    async def cancel(self, uid):
        """Stop following the build; BinderHub has no endpoint to stop the build itself.

        Returns the note for the build's log saying so.
        """
        follower = self._followers.get(uid)
        if follower is not None:
            self.log.info("Stopped following BinderHub build %s", uid)
            await self._stop(follower)
            if not follower.finished:
                follower.emit(BuildEvent(CANCELLED, CANCEL_NOTE))
        return CANCEL_NOTE

    def unstartable(self, image_name):
        """A BinderHub without a registry leaves its images on its own Docker engine.

        BinderHub's health lists a "Docker registry" check exactly when it
        pushes to one (``BinderHub.use_registry``). Without one (its
        single-machine set-up) the image carries none of the labels
        Repo2DockerSpawner starts servers from, and no other spawner can pull
        it: say so before the hub is asked. Images in a registry (its
        Kubernetes set-up) are left to the spawner.
        """
        if image_name and self._registry is False:
            return (
                f"its image {image_name} was built by a BinderHub without a registry "
                "(BinderHub.use_registry is off) and exists only on that BinderHub's Docker "
                "engine, without the labels Repo2DockerSpawner starts servers from"
            )
        return None

    async def delete_image(self, image_name, image_id=None):
        """Nothing to do here: images stay in BinderHub's registry.

        BinderHub offers no API to delete images; remove them with the
        registry's own tools if space matters. Deleting the environment only
        removes it from our database.
        """
        self.log.info(
            "Environment image %s stays in BinderHub's registry (BinderHub cannot delete images)",
            image_name,
        )

    async def check(self):
        """GET ``{url}health``; raise BuildError unless BinderHub says it is healthy."""
        if not self.url:
            raise BuildError("No BinderHub URL is configured (BinderHubBuilder.url)")
        health_url = self.url + "health"
        try:
            response = await self.client.get(health_url, timeout=self.connect_timeout)
        except httpx.HTTPError as e:
            raise BuildError(
                f"BinderHub at {self.url} cannot be reached",
                f"GET {health_url} failed: {type(e).__name__}: {e}",
            ) from None
        try:
            health = response.json()
        except ValueError:
            health = None
        if isinstance(health, dict) and isinstance(health.get("checks"), list):
            self._registry = any(
                isinstance(c, dict) and c.get("service") == "Docker registry"
                for c in health["checks"]
            )
        if response.status_code != 200 or not isinstance(health, dict) or not health.get("ok"):
            failing = []
            if isinstance(health, dict):
                failing = [
                    str(c.get("service"))
                    for c in health.get("checks", [])
                    if isinstance(c, dict) and not c.get("ok")
                ]
            detail = f": {', '.join(failing)} not ok" if failing else ""
            raise BuildError(
                f"BinderHub at {self.url} is not healthy{detail}",
                f"GET {health_url} answered HTTP {response.status_code}{detail}",
            )
        return f"BinderHub at {self.url}"

    async def close(self):
        for follower in list(self._followers.values()):
            await self._stop(follower)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
