"""The health check and the Prometheus metrics.

In-process (the service's real Tornado application, with a stand-in builder
and build manager): what ``health`` answers when the database or the build
backend fails, and that the gauges are read at scrape time. Through the real
hub and proxy: who may read ``metrics`` (admins, tokens with ``read:metrics``),
and that a real build is counted.
"""

import asyncio
import socket
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpserver import HTTPServer

from tljh_repo2docker import metrics
from tljh_repo2docker.app import TljhRepo2Docker
from tljh_repo2docker.builds.base import FAILED, LOG, Builder, BuildError, BuildEvent, BuildRequest
from tljh_repo2docker.builds.manager import BuildManager
from tljh_repo2docker.db import store
from tljh_repo2docker.db.session import make_engine, make_sessionmaker

from .helpers.utils import SERVICE, admin_api, assert_json_error, make_token

SECRET = "hunter2-do-not-show"


def sample(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def parse(text):
    """``{(name, frozenset(labels)): value}`` from the exposition format."""
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, frozenset(s.labels.items()))] = s.value
    return values


class StandInBuilder(Builder):
    """``check()`` does what the test says; builds fail at once."""

    def __init__(self, check=None, **kwargs):
        super().__init__(**kwargs)
        self._check = check

    async def check(self):
        if self._check is None:
            return "StandIn 1.0"
        return await self._check()

    async def build(self, request):
        yield BuildEvent(LOG, "cloning")
        await asyncio.sleep(0.05)
        yield BuildEvent(FAILED, "no such repository")

    async def cancel(self, uid):
        pass


@pytest.fixture
def sessions(sqlite_sessions):
    return sqlite_sessions


@pytest.fixture
async def broken_sessions(tmp_path):
    """A database that cannot be opened (its directory does not exist)."""
    engine = make_engine(f"sqlite:///{tmp_path / f'no-such-dir-{SECRET}' / 'x.sqlite'}")
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def serve():
    """``serve(sessions, builder, **traits)``: the service's web app on a free port; gives its URL."""
    servers = []

    async def start(sessions, builder, build_manager=None, **traits):
        app = TljhRepo2Docker(**traits)
        app.sessions = sessions
        app.builder = builder
        app.build_manager = build_manager or SimpleNamespace(
            queued_count=0, running_count=0, subscriber_count=0
        )
        app.hub_client = None
        app.cookie_secret = b"x" * 32
        app.init_webapp()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        server = HTTPServer(app.webapp)
        server.add_sockets([sock])
        servers.append(server)
        return f"http://127.0.0.1:{sock.getsockname()[1]}{app.base_url}"

    yield start
    for server in servers:
        server.stop()


async def get(url):
    async with httpx.AsyncClient() as client:
        return await client.get(url)


# -- health, in-process -------------------------------------------------------


async def test_health_ok(serve, sessions):
    url = await serve(sessions, StandInBuilder())
    r = await get(url + "health")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"status": "ok", "database": "ok", "builder": "StandIn 1.0"}


async def test_health_database_down(serve, broken_sessions):
    url = await serve(broken_sessions, StandInBuilder())
    r = await get(url + "health")
    body = assert_json_error(r, 503, "database")
    assert body["database"].startswith("failed: ") and body["builder"] == "StandIn 1.0"
    assert SECRET not in r.text and "no-such-dir" not in r.text and "Traceback" not in r.text


async def test_health_builder_down_says_why(serve, sessions):
    async def refuse():
        raise BuildError("Cannot reach the Docker engine at unix:///nowhere.sock: refused")

    url = await serve(sessions, StandInBuilder(check=refuse))
    body = assert_json_error(await get(url + "health"), 503, "builder")
    assert body["database"] == "ok"
    assert body["builder"] == "failed: Cannot reach the Docker engine at unix:///nowhere.sock: refused"


async def test_health_never_shows_unexpected_errors(serve, sessions):
    async def crash():
        raise RuntimeError(f"connect to https://user:{SECRET}@binder.example.org failed")

    url = await serve(sessions, StandInBuilder(check=crash))
    r = await get(url + "health")
    body = assert_json_error(r, 503)
    assert body["builder"] == "failed: RuntimeError"
    assert SECRET not in r.text and "Traceback" not in r.text


async def test_health_times_out(serve, sessions):
    async def hang():
        await asyncio.sleep(60)

    url = await serve(sessions, StandInBuilder(check=hang), health_check_timeout=0.3)
    started = asyncio.get_running_loop().time()
    body = assert_json_error(await get(url + "health"), 503)
    assert asyncio.get_running_loop().time() - started < 5
    assert body["builder"].startswith("failed: timed out")


# -- metrics, in-process ------------------------------------------------------


async def test_metrics_open_without_authenticate_prometheus(serve, sessions):
    for number in range(3):
        await store.create_environment(
            sessions,
            uid=f"uid{number}",
            name=f"env{number}",
            image_name=f"x/env{number}:main",
            repo="https://git.example.invalid/r.git",
            ref="main",
            node_selector={},
            build_args={},
        )
    manager = SimpleNamespace(queued_count=4, running_count=2, subscriber_count=5)
    url = await serve(sessions, StandInBuilder(), manager, authenticate_prometheus=False)
    await get(url + "health")
    r = await get(url + "metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    values = parse(r.text)
    assert values[("tljh_repo2docker_environments", frozenset())] == 3
    assert values[("tljh_repo2docker_builds_queued", frozenset())] == 4
    assert values[("tljh_repo2docker_builds_running", frozenset())] == 2
    assert values[("tljh_repo2docker_log_stream_clients", frozenset())] == 5
    for phase in ("built", "failed", "cancelled"):
        assert ("tljh_repo2docker_builds_finished_total", frozenset({("phase", phase)})) in values
    health_requests = {
        ("method", "GET"),
        ("handler", "HealthHandler"),
        ("status", "200"),
    }
    assert values[("tljh_repo2docker_request_duration_seconds_count", frozenset(health_requests))] >= 1


async def test_metrics_need_authentication_by_default(serve, sessions):
    url = await serve(sessions, StandInBuilder())
    assert_json_error(await get(url + "metrics"), 403, "read:metrics")


async def test_made_up_methods_share_one_label(serve, sessions):
    url = await serve(sessions, StandInBuilder())
    before = sample("tljh_repo2docker_request_duration_seconds_count",
                    method="other", handler="HealthHandler", status="405")
    async with httpx.AsyncClient() as client:
        for number in range(3):
            await client.request(f"X{number}", url + "health")
    after = sample("tljh_repo2docker_request_duration_seconds_count",
                   method="other", handler="HealthHandler", status="405")
    assert after - before == 3
    series = [s for s in metrics.REGISTRY.collect() if s.name == "tljh_repo2docker_request_duration_seconds"]
    methods = {s.labels["method"] for family in series for s in family.samples}
    assert not any(m.startswith("X") for m in methods)


async def test_build_manager_hooks_count_builds(sessions):
    builder = StandInBuilder()
    started_before = sample("tljh_repo2docker_builds_started_total")
    failed_before = sample("tljh_repo2docker_builds_finished_total", phase="failed")
    duration_before = sample("tljh_repo2docker_build_duration_seconds_count", phase="failed")
    manager = BuildManager(
        builder=builder,
        sessions=sessions,
        on_started=metrics.build_started,
        on_finished=metrics.build_finished,
        flush_interval=0.05,
    )
    env = await store.create_environment(
        sessions,
        uid="hooked",
        name="hooked",
        image_name="x/hooked:main",
        repo="https://git.example.invalid/r.git",
        ref="main",
        node_selector={},
        build_args={},
    )
    await manager.submit(
        env, BuildRequest(uid=env.uid, repo=env.repo, ref=env.ref, image_name=env.image_name)
    )
    events = [e async for e in manager.subscribe(env.uid)]
    assert events[-1][1] == FAILED
    for _ in range(50):  # the hook runs just after the final event is out
        if manager.running_count == 0:
            break
        await asyncio.sleep(0.02)
    await manager.close()
    assert sample("tljh_repo2docker_builds_started_total") - started_before == 1
    assert sample("tljh_repo2docker_builds_finished_total", phase="failed") - failed_before == 1
    assert sample("tljh_repo2docker_build_duration_seconds_count", phase="failed") - duration_before == 1


# -- through the real hub ------------------------------------------------------

@pytest.mark.hub
@pytest.mark.docker
async def test_health_through_the_proxy_needs_no_login(hub):
    r = await get(f"{hub.service_url}health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["builder"].startswith("Docker ")


@pytest.mark.hub
@pytest.mark.docker
async def test_who_may_read_metrics(hub, admin, alice, bob):
    assert_json_error(await get(f"{hub.service_url}metrics"), 403)
    assert_json_error(await alice.api("GET", "metrics"), 403, "read:metrics")
    alice_token = make_token(hub, "alice", [f"access:services!service={SERVICE}"])
    r = await get_with_token(hub, alice_token)
    assert_json_error(r, 403)
    for user in (admin, bob):
        r = await user.api("GET", "metrics")
        assert r.status_code == 200, (user.name, r.text)
        assert "tljh_repo2docker_environments" in r.text


async def get_with_token(hub, token):
    async with httpx.AsyncClient() as client:
        return await client.get(
            f"{hub.service_url}metrics", headers={"Authorization": f"Bearer {token}"}
        )


@pytest.mark.hub
@pytest.mark.docker
async def test_a_failed_build_is_counted(hub, admin):
    before = parse((await admin.api("GET", "metrics")).text)
    env = await admin.create_env(
        {"repo": "http://127.0.0.1:9/nothing-listens-here.git", "name": f"metrics-{id(before)}"}
    )
    try:
        await admin.wait_env(env["uid"], {"failed"}, timeout=120)
        after = parse((await admin.api("GET", "metrics")).text)
    finally:
        assert (await admin.delete_env(env["uid"])).status_code == 204

    def delta(name, **labels):
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("tljh_repo2docker_builds_started_total") >= 1
    assert delta("tljh_repo2docker_builds_finished_total", phase="failed") >= 1
    assert delta("tljh_repo2docker_build_duration_seconds_count", phase="failed") >= 1
    listed = (await admin.api("GET", "api/environments")).json()["environments"]
    # scraped while this environment was still there
    assert after[("tljh_repo2docker_environments", frozenset())] == len(listed) + 1


READ_METRICS_ROLE = f"""
c.JupyterHub.load_roles.append({{
    "name": "metrics-reader",
    "scopes": ["read:metrics", "access:services!service={SERVICE}"],
    "users": ["carol"],
}})
"""


@pytest.fixture(scope="module")
def metrics_hub(tmp_path_factory, test_images):
    """A second hub whose user carol may read metrics (and is no admin)."""
    from tests.helpers.fixtures import running_hub

    with running_hub(tmp_path_factory.mktemp("metrics-hub"), extra_config=READ_METRICS_ROLE) as info:
        with admin_api(info) as api:
            r = api.post("users/carol")
            assert r.status_code in (201, 409), r.text
        yield info


@pytest.mark.hub
@pytest.mark.docker
async def test_read_metrics_scope_is_enough(metrics_hub):
    token = make_token(metrics_hub, "carol", ["read:metrics", f"access:services!service={SERVICE}"])
    r = await get_with_token(metrics_hub, token)
    assert r.status_code == 200, r.text
    assert "tljh_repo2docker_builds_queued" in r.text
    without = make_token(metrics_hub, "carol", [f"access:services!service={SERVICE}"])
    assert_json_error(await get_with_token(metrics_hub, without), 403, "read:metrics")
