"""The service with ``--binderhub_url``: builds go to a BinderHub, end to end.

A real JupyterHub, configurable-http-proxy and this service (as a managed
service) talk to the stand-in BinderHub of ``tests/helpers/binderhub_standin.py``,
which runs on 127.0.0.1 in a thread of its own, under a URL with a path
(``/services/binder/``) and a token it requires. What a build does is chosen
by a keyword in the repository name (``fail-phase``, ``cut-stream``, ...).

Fixtures here (module scope; ``hub`` and ``admin`` replace the session ones of
``conftest.py``, so that the hub's log is printed when a test fails):

* ``binder``: the stand-in, with its recorded requests;
* ``hub``: the hub, with the service started with ``--binderhub_url``,
  ``--repo_providers gh git`` and ``--BinderHubBuilder.token``;
* ``admin``: the hub admin, logged in.

The service restart test comes last: it kills the service.
"""

import asyncio
import os
import signal
import threading
import time
from urllib.parse import unquote

import httpx
import pytest

from tests.helpers import utils
from tests.helpers.binderhub_standin import (
    IMAGE,
    BinderHubStandin,
    Endless,
    Scenario,
    building_steps,
    success,
)
from tests.helpers.buildutils import FINAL, log_text, read_events, token, wait_for
from tests.helpers.fixtures import running_hub
from tests.helpers.processes import service_pids

pytestmark = [pytest.mark.hub, pytest.mark.docker]

BINDER_TOKEN = "binder-token-3c9e1f5a7d"
RESTART_KEYWORD = "restart-me"


class StandinThread:
    """The stand-in BinderHub on its own event loop, so that blocking test code
    (subprocess, the hub's start-up) never stalls its event streams."""

    def __init__(self, **kwargs):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            standin = BinderHubStandin(**kwargs)
            # A build that runs until the client goes away; the restart test
            # swaps it for a finishing one while the service is down.
            standin.scenarios[RESTART_KEYWORD] = Scenario(
                steps=[*building_steps()[:3], Endless(0.5)]
            )
            return await standin.start()

        self.standin = self.run(start())

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.run(self.standin.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def binder():
    runner = StandinThread(prefix="/services/binder/", token=BINDER_TOKEN)
    yield runner.standin
    runner.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, binder, docker_engine):
    assert binder.url.endswith("/services/binder/")
    args = [
        f"--binderhub_url={binder.url}",
        "--repo_providers=gh",
        "--repo_providers=git",
        f"--BinderHubBuilder.token={BINDER_TOKEN}",
    ]
    with running_hub(tmp_path_factory.mktemp("binderhub-hub"), args) as hub_info:
        yield hub_info


@pytest.fixture(scope="module")
async def admin(hub):
    user = await utils.HubUser.login(hub, "admin")
    yield user
    await user.close()


def requests_for(binder, keyword):
    """The build requests the stand-in got whose (unescaped) spec holds ``keyword``."""
    return [r for r in binder.build_requests if keyword in _unquote(r.spec)]


def _unquote(spec):
    return unquote(spec or "")


async def names(admin):
    r = await admin.api("GET", "api/environments")
    assert r.status_code == 200, r.text
    return {env["name"]: env for env in r.json()["environments"]}


async def assert_nothing_building(admin):
    stuck = [e for e in (await names(admin)).values() if e["status"] in {"building", "queued"}]
    assert stuck == [], stuck


async def wait_logged(admin, uid, text, timeout=30):
    """Wait until the stored log of the running build ``uid`` holds ``text``."""

    async def logged():
        env = await admin.get_env(uid)
        assert env["status"] not in FINAL, env
        events = await read_events(admin, uid, timeout=5, follow=False)
        return any(text in data["message"] for _, data in events)

    await wait_for(logged, timeout=timeout, interval=0.3, what=f"{text!r} in the log of {uid}")


async def test_successful_build_streams_binderhub_events(admin, binder):
    name = f"bh-ok-{token()}"
    env = await admin.create_env({"repo": f"https://github.com/owner/{name}", "ref": "main"})
    assert env["provider"] == "gh"  # the first of --repo_providers
    live = await read_events(admin, env["uid"], timeout=60)
    env = await admin.get_env(env["uid"])
    assert env["status"] == "built", env
    assert env["image_name"] == IMAGE
    assert env["commit"] == IMAGE.rpartition(":")[2]
    assert env["error"] is None

    phases = [(data["phase"], data["message"]) for _, data in live]
    assert phases[0] == ("status", "queued (position 1)")
    statuses = [m for p, m in phases if p == "status"]
    assert statuses[1:] == [
        "building",
        "BinderHub: waiting",
        "BinderHub: fetching",
        "BinderHub: building",
        "BinderHub: pushing",
    ]
    logs = [m for p, m in phases if p == "log"]
    assert logs == [
        "Waiting for build to start...",
        "Picked Git content provider.",
        "Cloning into '/tmp/repo2docker'...",
        "Step 1/3 : FROM buildpack-deps:jammy",
        "Step 2/3 : RUN pip install -r requirements.txt",
        "Pushing image",
    ]
    assert phases[-1] == ("built", "Done! Image built")
    ids = [event_id for event_id, _ in live]
    assert ids == list(range(ids[0], ids[0] + len(ids)))

    # The finished build's log is replayed from the database, the same.
    assert await read_events(admin, env["uid"], timeout=30) == live

    # What BinderHub was asked: build only, with its token, as an event stream.
    (request,) = requests_for(binder, name)
    assert request.path == f"/services/binder/build/gh/owner/{name}/main"
    assert request.query == {"build_only": ["true"]}
    assert request.headers["authorization"] == f"token {BINDER_TOKEN}"
    assert "text/event-stream" in request.headers["accept"]


async def test_failed_build_records_the_reason(admin):
    name = f"bh-fail-phase-{token()}"
    env = await admin.create_env({"repo": f"https://github.com/owner/{name}"})
    events = await read_events(admin, env["uid"], timeout=60)
    env = await admin.get_env(env["uid"])
    assert env["status"] == "failed", env
    reason = "The command '/bin/sh -c pip install' returned 1"
    assert reason in env["error"]
    assert events[-1][1]["phase"] == "failed"
    assert reason in events[-1][1]["message"]
    assert "Step 1/3 : FROM buildpack-deps:jammy" in log_text(events)
    # Nothing usable was built: a plain user could not start it.
    r = await admin.api("POST", "api/servers", json={"name": "never", "environment": name})
    utils.assert_json_error(r, 409, "not built yet")


async def test_cut_stream_fails_with_the_reason(admin):
    name = f"bh-cut-stream-{token()}"
    env = await admin.create_env({"repo": f"https://github.com/owner/{name}"})
    events = await read_events(admin, env["uid"], timeout=60)
    env = await admin.get_env(env["uid"])
    assert env["status"] == "failed", env
    assert "connection to BinderHub broke" in env["error"], env["error"]
    assert events[-1][1] == {"phase": "failed", "message": env["error"]}
    assert "Picked Git content provider." in log_text(events)
    await assert_nothing_building(admin)


async def test_slow_stream_with_keepalives_succeeds(admin):
    name = f"bh-slow-stream-{token()}"
    env = await admin.create_env({"repo": f"https://github.com/owner/{name}"})
    events = await read_events(admin, env["uid"], timeout=60)
    env = await admin.get_env(env["uid"])
    assert env["status"] == "built", env
    assert env["image_name"] == IMAGE
    assert events[-1][1]["phase"] == "built"
    # keep-alive comments are not log lines
    assert "keepalive" not in log_text(events)


async def test_cancel_mid_build_hangs_up_on_binderhub(admin, binder):
    name = f"bh-endless-stream-{token()}"
    env = await admin.create_env({"repo": f"https://github.com/owner/{name}"})
    uid = env["uid"]
    await wait_logged(admin, uid, "Step 2: building")
    (request,) = requests_for(binder, name)
    assert not request.client_closed

    r = await admin.api("POST", f"api/environments/{uid}/cancel")
    assert r.status_code == 200, r.text
    env = await admin.wait_env(uid, FINAL, timeout=30)
    assert env["status"] == "cancelled", env
    events = await read_events(admin, uid, timeout=30)
    assert events[-1][1]["phase"] == "cancelled"
    await wait_for(lambda: request.client_closed, timeout=10, what="the stand-in saw the hang-up")
    await assert_nothing_building(admin)
    # Cancelling again: nothing to cancel.
    r = await admin.api("POST", f"api/environments/{uid}/cancel")
    utils.assert_json_error(r, 409, "nothing to cancel")


@pytest.mark.parametrize(
    "provider, repo, ref, spec",
    [
        ("gh", "https://github.com/Owner/{name}.git", "feature/x", "Owner/{name}/feature/x"),
        ("gh", "https://github.com/owner/{name}", None, "owner/{name}/HEAD"),
        (
            "git",
            "https://git.example.org/group/{name}.git",
            "v1.0",
            "https%3A%2F%2Fgit.example.org%2Fgroup%2F{name}.git/v1.0",
        ),
    ],
)
async def test_provider_spec_as_binderhub_sees_it(admin, binder, provider, repo, ref, spec):
    name = f"bh-spec-{provider}-{token()}"
    body = {"repo": repo.format(name=name), "provider": provider, "name": name}
    if ref:
        body["ref"] = ref
    env = await admin.create_env(body)
    env = await admin.wait_env(env["uid"], FINAL, timeout=60)
    assert env["status"] == "built", env
    assert env["provider"] == provider
    (request,) = requests_for(binder, name)
    assert request.provider == provider
    assert request.spec == spec.format(name=name)
    assert request.path == f"/services/binder/build/{provider}/{spec.format(name=name)}"


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"username": "someone", "password": utils.SECRET_PASSWORD}, "username"),
        ({"password": utils.SECRET_PASSWORD}, "username"),
        ({"buildargs": "KEY=value"}, "buildargs"),
        ({"build_args": {"KEY": "value"}}, "buildargs"),
    ],
)
async def test_credentials_and_build_args_are_refused(admin, binder, extra, field):
    name = f"bh-refused-{token()}"
    before = len(binder.build_requests)
    r = await admin.api(
        "POST", "api/environments", json={"repo": f"https://github.com/owner/{name}", **extra}
    )
    body = utils.assert_json_error(r, 400, f"{field}:")
    assert "BinderHub" in body["message"]
    assert utils.SECRET_PASSWORD not in r.text
    assert name not in await names(admin)
    assert len(binder.build_requests) == before


async def test_provider_is_validated_and_listed(admin, binder):
    name = f"bh-provider-{token()}"
    for provider in ("gl", "bitbucket", 5):
        body = {"repo": f"https://gitlab.com/group/{name}", "provider": provider}
        r = await admin.api("POST", "api/environments", json=body)
        utils.assert_json_error(r, 400, "provider:")
    assert name not in await names(admin)

    env = await admin.create_env(
        {"repo": f"https://git.example.org/{name}.git", "provider": "git", "name": name}
    )
    await admin.wait_env(env["uid"], FINAL, timeout=60)
    listed = (await names(admin))[name]
    assert listed["provider"] == "git"
    assert listed["status"] == "built"
    assert all("provider" in e for e in (await names(admin)).values())

    # The add form offers the configured providers, the first one chosen.
    r = await admin.client.get(admin.service_path("environments"))
    assert r.status_code == 200
    assert '<option value="gh" selected>' in r.text
    assert '<option value="git">' in r.text
    assert '<option value="gl"' not in r.text


async def test_limits_and_node_selector_reach_user_options(admin, hub):
    name = f"bh-opts-{token()}"
    env = await admin.create_env(
        {
            "repo": f"https://github.com/owner/{name}",
            "name": name,
            "memory": "512M",
            "cpu": "0.5",
            "node_selector": {"gpu": "yes"},
        }
    )
    env = await admin.wait_env(env["uid"], FINAL, timeout=60)
    assert env["status"] == "built", env
    server = f"bhsrv-{token()}"
    try:
        r = await admin.api("POST", "api/servers", json={"name": server, "environment": name})
        # BinderHub's image is not on this Docker engine, so the spawn itself
        # may fail (Repo2DockerSpawner refuses it at once; a KubeSpawner
        # would pull it); what the hub was asked is what this test is about.
        if r.status_code != 202:
            utils.assert_json_error(r, r.status_code, f"JupyterHub could not start {server!r}")

        with utils.admin_api(hub) as api:
            model = api.get("users/admin", params={"include_stopped_servers": "1"}).json()
        options = model["servers"][server]["user_options"]
        assert options == {
            "image": IMAGE,
            "environment": env["uid"],
            "metadata": {
                "node_selector": {"gpu": "yes"},
                "memory": env["memory"],
                "cpu": 0.5,
                "display_name": name,
            },
        }
        assert env["memory"]
    finally:
        await remove_server(hub, "admin", server)


async def remove_server(hub, user, server, timeout=150):
    """Stop and forget a named server once no spawn or stop is pending."""
    deadline = time.monotonic() + timeout
    with utils.admin_api(hub) as api:
        while time.monotonic() < deadline:
            model = api.get(f"users/{user}", params={"include_stopped_servers": "1"}).json()
            state = (model.get("servers") or {}).get(server)
            if state is None:
                return
            if not state.get("pending"):
                r = api.request("DELETE", f"users/{user}/servers/{server}", json={"remove": True})
                if r.status_code in (202, 204, 404):
                    if r.status_code != 202:
                        return
            await asyncio.sleep(1)
    raise TimeoutError(f"server {user}/{server} could not be removed")


async def test_versions_and_rollback_with_images_named_per_commit(admin, binder, hub):
    """BinderHub names each image by its commit: that name is the version's,
    and a rollback makes it the environment's again."""
    name = f"bh-ver-{token()}"
    first, second = (
        f"registry.example.org/binder/r2d-{name}:{c * 40}" for c in ("a", "b")
    )
    try:
        binder.image = first
        env = await admin.create_env({"repo": f"https://github.com/owner/{name}", "name": name})
        uid = env["uid"]
        env = await admin.wait_env(uid, FINAL, timeout=60)
        assert env["status"] == "built" and env["image_name"] == first, env
        binder.image = second
        r = await admin.api("POST", f"api/environments/{uid}/rebuild")
        assert r.status_code == 202, r.text
        env = await admin.wait_env(uid, FINAL, timeout=60)
        assert env["status"] == "built" and env["image_name"] == second, env
    finally:
        binder.image = IMAGE
    r = await admin.api("GET", f"api/environments/{uid}/versions")
    assert r.status_code == 200, r.text
    v2, v1 = r.json()["versions"]
    assert [v2["image_name"], v1["image_name"]] == [second, first]
    assert [v2["commit"], v1["commit"]] == ["b" * 40, "a" * 40]
    assert [v2["current"], v1["current"]] == [True, False]
    # no Docker engine to ask: the hub's servers are counted (none run)
    assert [v2["servers"], v1["servers"]] == [0, 0]

    r = await admin.api("POST", f"api/environments/{uid}/rollback", json={"version": v1["id"]})
    assert r.status_code == 200, r.text
    env = r.json()
    assert (env["image_name"], env["commit"], env["version"]) == (first, "a" * 40, v1["id"])
    r = await admin.api("GET", f"api/environments/{uid}/versions")
    assert [v["current"] for v in r.json()["versions"]] == [False, True]
    # New servers are asked for the version's image.
    server = f"bhver-{token()}"
    try:
        r = await admin.api("POST", "api/servers", json={"name": server, "environment": name})
        if r.status_code != 202:  # the image is not on this engine (see above)
            utils.assert_json_error(r, r.status_code, f"JupyterHub could not start {server!r}")
        with utils.admin_api(hub) as api:
            model = api.get("users/admin", params={"include_stopped_servers": "1"}).json()
        assert model["servers"][server]["user_options"]["image"] == first
    finally:
        await remove_server(hub, "admin", server)
    r = await admin.delete_env(uid)
    assert r.status_code == 204, r.text


# -- keep last: kills the service ------------------------------------------------


async def test_restart_mid_build_resubmits_to_binderhub(admin, binder, hub):
    name = f"bh-{RESTART_KEYWORD}-{token()}"
    env = await admin.create_env({"repo": f"https://github.com/owner/{name}"})
    uid = env["uid"]
    await wait_logged(admin, uid, "Step 2: building")
    await asyncio.sleep(1)  # the service stores the log every 0.25 s
    before = await read_events(admin, uid, timeout=5, follow=False)
    (first,) = requests_for(binder, name)

    (pid,) = service_pids(hub)
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: first.client_closed, timeout=10, what="the stand-in saw the hang-up")
    # Meanwhile BinderHub's build goes on; asked again, BinderHub follows it
    # to the end (here: plays a successful build).
    binder.scenarios[RESTART_KEYWORD] = success()

    async def back():
        pids = service_pids(hub)
        if not pids or pids == [pid]:
            return None
        try:
            r = await admin.api("GET", f"api/environments/{uid}")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    # JupyterHub polls its managed services every 30 s and starts a dead one again.
    await wait_for(back, timeout=90, interval=0.5, what="the service back")
    env = await admin.wait_env(uid, FINAL, timeout=60)
    assert env["status"] == "built", env
    assert env["image_name"] == IMAGE
    assert env["error"] is None
    assert len(requests_for(binder, name)) == 2

    events = await read_events(admin, uid, timeout=30)
    assert events[: len(before)] == before
    after = [data for _, data in events[len(before) :]]
    assert {"phase": "status", "message": "re-submitted after a service restart"} in after
    assert after[-1] == {"phase": "built", "message": "Done! Image built"}
    ids = [event_id for event_id, _ in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    await assert_nothing_building(admin)


async def test_disk_report_without_an_engine(admin):
    """GET api/disk with BinderHub: the versions from the database, the engine's figures null;
    prune removes nothing (which servers use a registry image is unknown); builds are never
    refused for min_free_disk (the free space is unknown)."""
    name = f"bh-disk-{token()}"
    env = await admin.create_env({"repo": f"https://github.com/owner/{name}", "ref": "main"})
    env = await admin.wait_env(env["uid"], FINAL, timeout=60)
    assert env["status"] == "built", env
    r = await admin.api("GET", "api/disk")
    assert r.status_code == 200, r.text
    report = r.json()
    [listed] = [e for e in report["environments"] if e["uid"] == env["uid"]]
    [version] = listed["versions"]
    assert version["image_name"] == IMAGE and version["current"] is True
    assert version["servers"] is None and version["removable"] is False
    assert report["disk"] == {"path": None, "total": None, "used": None, "free": None}
    assert report["build_cache"]["size"] is None and report["dangling"]["count"] is None
    assert report["notes"]
    r = await admin.api("POST", "api/disk/prune", json={"dry_run": True})
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["versions"] == [] and r.json()["freed"] == 0
