"""A stand-in BinderHub for tests: its build event stream, health and versions.

It answers like BinderHub's build handler does, so that the BinderHub builder is
tested over real HTTP on loopback:

* ``GET {prefix}build/<provider>/<spec>`` needs ``Accept: text/event-stream``
  (400 otherwise) and, when a token is configured, ``Authorization: token
  <token>`` (403 otherwise). These errors of BinderHub's own are answered
  the way its ``send_error`` does: HTTP 200 and one ``failed`` event whose
  ``status_code`` says the status. Only a scenario's ``status`` (what a proxy
  in front of BinderHub may answer) sets the HTTP status.
* ``build_only=true`` is accepted when ``api_only`` is on (BinderHub's
  ``enable_api_only_mode``) and refused with 400 otherwise.
* The answer is ``Content-Type: text/event-stream`` with ``data: {json}``
  messages carrying ``phase`` and ``message`` (repo2docker's log lines as
  BinderHub relays them: some without ``phase``, each followed by a blank
  line of its own), ``:keepalive`` comment lines,
  and a final ``ready`` (build only) or ``built`` event with ``imageName``.
* ``GET {prefix}health`` answers ``{"ok": ..., "checks": [...]}`` (503 when
  unhealthy) and ``GET {prefix}versions`` a small version document.

What each build does is a :class:`Scenario`, chosen by a keyword found in the
(unescaped) spec, e.g. a repository named ``owner/fail-phase``; see
:data:`DEFAULT_SCENARIOS`. Every request is recorded in ``standin.requests``
with its raw path, query and headers, so tests can check the spec encoding,
``build_only=true`` and the token.

In process::

    async with BinderHubStandin(prefix="/services/binder/", token="t") as binder:
        ... binder.url ...

As a process (for manual or UI tests)::

    python tests/helpers/binderhub_standin.py --port 8585 --prefix /services/binder/
"""

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

# -- what a build does ---------------------------------------------------------


@dataclass
class Event:
    """One ``data: {json}`` message."""

    data: dict


@dataclass
class KeepAlive:
    """A ``:keepalive`` comment, as BinderHub sends while nothing happens."""


@dataclass
class Sleep:
    seconds: float


@dataclass
class Raw:
    """Text written as is (for malformed streams)."""

    text: str


@dataclass
class Cut:
    """Drop the connection without ending the response."""


@dataclass
class Done:
    """The end of a successful build: ``ready`` (build only) or ``built`` with ``imageName``."""

    #: The image was already in the registry ("Found built image").
    cached: bool = False


@dataclass
class Endless:
    """Log a line every ``interval`` seconds until the client goes away."""

    interval: float = 0.05


@dataclass
class Scenario:
    steps: list = field(default_factory=list)
    #: HTTP status of the answer (a proxy's error, as plain text); 200 plays ``steps``.
    status: int = 200
    #: Answer the first ``failures`` requests of this scenario the way BinderHub
    #: says 503 (HTTP 200, a failed event with ``status_code`` 503).
    failures: int = 0
    #: Content type of the answer (BinderHub always sends text/event-stream).
    content_type: str = "text/event-stream"


#: BinderHub's answer to build_only=true without enable_api_only_mode.
BUILD_ONLY_REFUSED = (
    "Building but not launching is not permitted when the API only mode was not enabled."
)

IMAGE = "registry.example.org/binder/r2d-standin:4fa9b0c8e3c2a1d5b6e7f8091a2b3c4d5e6f7081"


def building_steps():
    """The events of a normal build before its end, as BinderHub sends them."""
    return [
        Event({"phase": "waiting", "message": "Waiting for build to start...\n"}),
        Event({"phase": "fetching", "message": "Picked Git content provider.\n"}),
        Event({"phase": "fetching", "message": "Cloning into '/tmp/repo2docker'...\n"}),
        Event({"phase": "building", "message": "Step 1/3 : FROM buildpack-deps:jammy\n"}),
        # What repo2docker logs reaches the stream as it is: no phase, and a
        # blank line after each event.
        Event({"message": "Step 2/3 : RUN pip install -r requirements.txt\n"}),
        Event({"message": "\n"}),
        Event(
            {
                "phase": "pushing",
                "message": "Pushing image\n",
                "progress": {"layer1": {"current": 10, "total": 20}},
            }
        ),
    ]


def success():
    """A build that ends with the stand-in's ``image``."""
    return Scenario(steps=[*building_steps(), Done()])


def cached():
    """The image already exists: BinderHub answers at once."""
    return Scenario(steps=[Done(cached=True)])


def failed_phase(message="Error during build: The command '/bin/sh -c pip install' returned 1\n"):
    return Scenario(
        steps=[
            *building_steps()[:4],
            Event({"phase": "failure", "message": message}),
            Event({"phase": "failed", "message": message}),
        ]
    )


def cut_mid_stream():
    return Scenario(steps=[*building_steps()[:3], Cut()])


def slow(keepalives=4, interval=0.2):
    """Quiet periods filled with keep-alives, then success."""
    steps = building_steps()[:2]
    for _ in range(keepalives):
        steps += [Sleep(interval), KeepAlive()]
    return Scenario(steps=[*steps, *building_steps()[2:], Done()])


def silent(seconds=1.0):
    """A stream that stops talking (no keep-alives) and then ends normally."""
    return Scenario(steps=[*building_steps()[:2], Sleep(seconds), *building_steps()[2:], Done()])


def endless(interval=0.05):
    """A build that keeps logging until the client goes away."""
    return Scenario(steps=[*building_steps()[:2], Endless(interval)])


def malformed():
    return Scenario(steps=[*building_steps()[:2], Raw("data: {this is not json\n\n")])


def closes_early():
    """The stream ends normally but without a final event."""
    return Scenario(steps=building_steps()[:3])


def ready_without_image():
    return Scenario(steps=[*building_steps()[:2], Event({"phase": "ready", "message": "Done!\n"})])


def http_error(status=500):
    return Scenario(status=status)


def flaky(failures=2):
    """HTTP 503 for the first ``failures`` requests, then a successful build."""
    return Scenario(steps=[*building_steps(), Done()], failures=failures)


def not_an_event_stream():
    """What a misconfigured URL may give: an HTML page."""
    return Scenario(steps=[Raw("<html><body>JupyterHub</body></html>")], content_type="text/html")


def default_scenarios():
    """Keyword in the spec -> scenario (a new dict for each stand-in)."""
    return {
        "fail-phase": failed_phase(),
        "cut-stream": cut_mid_stream(),
        "slow-stream": slow(),
        "silent-stream": silent(),
        "endless-stream": endless(),
        "malformed-event": malformed(),
        "closes-early": closes_early(),
        "no-image": ready_without_image(),
        "http-500": http_error(500),
        "http-404": http_error(404),
        "flaky": flaky(),
        "html-page": not_an_event_stream(),
        "cached": cached(),
    }


DEFAULT_SCENARIOS = default_scenarios()


# -- what was asked --------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    #: Raw path as sent (percent-escapes kept), e.g. /build/gl/group%2Fproject/HEAD
    path: str
    query: dict
    #: Header names in lower case -> value.
    headers: dict
    provider: str | None = None
    #: The raw spec (escapes kept), as BinderHub reads it.
    spec: str | None = None
    #: Whether the client went away before the answer ended.
    client_closed: bool = False
    scenario: str | None = None


# -- the server ------------------------------------------------------------------


class _BaseHandler(RequestHandler):
    def initialize(self, standin):
        self.standin = standin
        self.record = None

    def prepare(self):
        self.record = RecordedRequest(
            method=self.request.method,
            path=self.request.path,
            query=parse_qs(self.request.query),
            headers={k.lower(): v for k, v in self.request.headers.items()},
        )
        self.standin.requests.append(self.record)

    def on_connection_close(self):
        if self.record is not None:
            self.record.client_closed = True


class _BuildHandler(_BaseHandler):
    def set_default_headers(self):
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")

    def _authorized(self):
        if not self.standin.token:
            return True
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in {"token", "bearer"} and token == self.standin.token

    def _error(self, status, message):
        # BinderHub's send_error: the answer stays 200, the status is in the event.
        event = {"phase": "failed", "status_code": status, "message": message + "\n"}
        self.finish(f"data: {json.dumps(event)}\n\n")

    def _http_error(self, status, message):
        self.set_status(status)
        self.set_header("Content-Type", "text/plain")
        self.finish(message + "\n")

    async def _write(self, text):
        self.write(text)
        await self.flush()

    async def _emit(self, data):
        await self._write(f"data: {json.dumps(data)}\n\n")

    async def get(self):
        base = self.standin.prefix + "build/"
        provider, _, spec = self.request.path[len(base) :].partition("/")
        spec = spec.rstrip("/")
        self.record.provider, self.record.spec = provider, spec

        accept = {a.strip().lower() for a in self.request.headers.get("Accept", "").split(",")}
        if "text/event-stream" not in accept:
            return self._error(400, "Missing Accept header: text/event-stream")
        if not self._authorized():
            return self._error(403, "Forbidden")
        build_only = self.get_query_argument("build_only", "").lower() == "true"
        if build_only and not self.standin.api_only:
            return self._error(400, BUILD_ONLY_REFUSED)

        name, scenario = self.standin.scenario_for(unquote(spec))
        self.record.scenario = name
        if scenario.failures:
            served = self.standin.failures_served.get(name, 0)
            if served < scenario.failures:
                self.standin.failures_served[name] = served + 1
                return self._error(503, "Service Unavailable")
        if scenario.status != 200:
            return self._http_error(scenario.status, f"Stand-in error {scenario.status}")
        self.set_header("Content-Type", scenario.content_type)

        self.standin._active += 1
        try:
            await self._play(scenario, build_only)
        except StreamClosedError:
            return
        finally:
            self.standin._active -= 1
        if not self._finished:
            self.finish()

    async def _pause(self, seconds):
        """Sleep, but give up (as if the client left) when the stand-in stops."""
        try:
            await asyncio.wait_for(self.standin._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise StreamClosedError()

    async def _play(self, scenario, build_only):
        for step in scenario.steps:
            if isinstance(step, Event):
                await self._emit(step.data)
            elif isinstance(step, KeepAlive):
                await self._write(":keepalive\n\n")
            elif isinstance(step, Sleep):
                await self._pause(step.seconds)
            elif isinstance(step, Raw):
                await self._write(step.text)
            elif isinstance(step, Cut):
                self.detach().close()
                return
            elif isinstance(step, Done):
                await self._finish_build(cached=step.cached, build_only=build_only)
            elif isinstance(step, Endless):
                n = 0
                while True:
                    n += 1
                    await self._emit({"phase": "building", "message": f"Step {n}: building\n"})
                    await self._pause(step.interval)

    async def _finish_build(self, cached, build_only):
        image = self.standin.image
        if build_only:
            message = "Done! Found built image\n" if cached else "Done! Image built\n"
            await self._emit({"phase": "ready", "imageName": image, "message": message})
            return
        # Without build_only BinderHub goes on to launch a server; the stand-in cannot.
        message = "Found built image, launching...\n" if cached else "Built image, launching...\n"
        await self._emit({"phase": "built", "imageName": image, "message": message})
        await self._emit({"phase": "launching", "message": "Launching server...\n"})
        await self._emit({"phase": "failed", "message": "The stand-in cannot launch servers\n"})


class _HealthHandler(_BaseHandler):
    def get(self):
        checks = [
            *([{"service": "Docker registry", "ok": self.standin.healthy}] if self.standin.registry else []),
            {
                "service": "Pod quota",
                "ok": True,
                "total_pods": 0,
                "build_pods": 0,
                "user_pods": 0,
                "quota": None,
            },
        ]
        if not self.standin.healthy:
            self.set_status(503)
        self.write({"ok": self.standin.healthy, "checks": checks})


class _VersionsHandler(_BaseHandler):
    def get(self):
        self.write({"binderhub": "stand-in", "builder_info": {"build_image": "stand-in"}})


class BinderHubStandin:
    """The stand-in server; see the module docstring."""

    def __init__(self, prefix="/", token=None, api_only=True, image=IMAGE, scenarios=None):
        self.prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        self.token = token
        self.api_only = api_only
        self.image = image
        self.healthy = True
        #: Whether health lists a "Docker registry" check (BinderHub.use_registry).
        self.registry = True
        self.scenarios = default_scenarios() if scenarios is None else scenarios
        self.default_scenario = success()
        self.requests = []
        self.failures_served = {}
        self.port = None
        self._server = None
        self._stopping = asyncio.Event()
        self._active = 0

    def scenario_for(self, spec):
        for keyword, scenario in self.scenarios.items():
            if keyword in spec:
                return keyword, scenario
        return "success", self.default_scenario

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def build_requests(self):
        return [r for r in self.requests if r.provider is not None]

    def make_app(self):
        prefix = self.prefix
        kwargs = {"standin": self}
        return Application(
            [
                (prefix + r"build/[^/]+/.+", _BuildHandler, kwargs),
                (prefix + r"health", _HealthHandler, kwargs),
                (prefix + r"versions", _VersionsHandler, kwargs),
            ],
            log_function=lambda handler: None,
        )

    async def start(self, port=0):
        sockets = bind_sockets(port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(self.make_app())
        self._server.add_sockets(sockets)
        return self

    async def stop(self):
        """Stop listening, end the streams still being played, close connections."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.stop()
        for _ in range(500):
            if not self._active:
                break
            await asyncio.sleep(0.01)
        await self._server.close_all_connections()
        self._server = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()


async def _serve(port, prefix, token):
    standin = await BinderHubStandin(prefix=prefix, token=token).start(port)
    print(f"BinderHub stand-in at {standin.url}", flush=True)
    await asyncio.Event().wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefix", default="/")
    parser.add_argument("--token", default=None, help="require this token")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.prefix, args.token))


if __name__ == "__main__":
    main()
