"""What the servers list says beyond the hub: the build a server runs, and why a start failed.

Real Docker, real JupyterHub with its proxy, the service as a managed service,
environments built by repo2docker. The users (``hs-dora``, ``hs-erin``) are
this module's own, so that their containers (``tljh-r2d-test-hs-…``) never
meet another test's.
"""

import asyncio
import subprocess
import time

import pytest

from tests.helpers.gitserver import add_commit, make_repo

from .helpers.fixtures import SINGLEUSER_IMAGE
from .helpers.fixtures import running_hub
from .helpers.utils import HubUser, admin_api, assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]

BROKEN_OUTPUT = "hs-broken: this environment has no notebook server"

# The environments here exit as they start, on purpose: the service's check
# of built images (DockerBuilder.check_images) would refuse them, so this
# module's hubs build without it.
UNCHECKED = ["--DockerBuilder.check_images=False"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images):
    """This module's own hub (see UNCHECKED), in place of the session's."""
    with running_hub(tmp_path_factory.mktemp("hub-unchecked"), extra_service_args=UNCHECKED) as info:
        yield info


@pytest.fixture(scope="module")
async def admin(hub):
    user = await HubUser.login(hub, "admin")
    yield user
    await user.close()


@pytest.fixture(scope="module")
async def dora(hub):
    user = await HubUser.login(hub, "hs-dora")
    yield user
    await user.close()


@pytest.fixture(scope="module")
async def erin(hub):
    user = await HubUser.login(hub, "hs-erin")
    yield user
    await user.close()


def broken_dockerfile(delay):
    """An image that writes a line on stderr and exits with status 3 after ``delay`` seconds."""
    return (
        f"FROM {SINGLEUSER_IMAGE}\n"
        f"ENTRYPOINT [\"sh\", \"-c\", \"sleep {delay}; echo '{BROKEN_OUTPUT}' >&2; exit 3\"]\n"
    )


async def built(admin, git_server, git_root, name, dockerfile):
    make_repo(git_root, name, {"Dockerfile": dockerfile})
    env = await admin.create_env({"repo": git_server.url(name), "name": name})
    return await admin.wait_env(env["uid"], {"built"})


@pytest.fixture(scope="module")
async def exits_at_once(admin, git_server, git_root, test_images):
    """An environment whose container exits before DockerSpawner learns its address."""
    env = await built(admin, git_server, git_root, "hs-exits-at-once", broken_dockerfile(0))
    yield env
    await admin.delete_env(env["uid"])


@pytest.fixture(scope="module")
async def exits_soon(admin, git_server, git_root, test_images):
    """An environment whose container starts, then exits while the hub waits for it."""
    env = await built(admin, git_server, git_root, "hs-exits-soon", broken_dockerfile(3))
    yield env
    await admin.delete_env(env["uid"])


async def servers(user):
    r = await user.api("GET", "api/servers")
    assert r.status_code == 200, r.text
    return {s["name"]: s for s in r.json()["servers"]}


async def wait_for(user, name, check, timeout=120):
    deadline = time.monotonic() + timeout
    server = None
    while time.monotonic() < deadline:
        server = (await servers(user)).get(name)
        if check(server):
            return server
        await asyncio.sleep(1)
    raise TimeoutError(f"{user.name}'s server {name}: {server}")


def remove_servers(hub, user):
    with admin_api(hub) as api:
        for name in api.get(f"users/{user}").json().get("servers", {}):
            api.request("DELETE", f"users/{user}/servers/{name}", json={"remove": True})


async def start_and_wait_for_error(user, name, environment):
    """Start a server that fails; its error, as soon as the service knows it."""
    started = time.monotonic()
    r = await user.api("POST", "api/servers", json={"name": name, "environment": environment})
    if r.status_code == 202:  # the hub answered before its slow_spawn_timeout (10 s)
        server = await wait_for(user, name, lambda s: s and s["error"], timeout=60)
        reason = server["error"]
    else:
        reason = assert_json_error(r, 502, f"JupyterHub could not start {name!r}: ")["message"]
    # the hub itself would wait for its http_timeout (60 s) before it gives up
    assert time.monotonic() - started < 40
    return reason


def explains(reason):
    """Whether ``reason`` says why the container of a broken environment stopped."""
    return "exited with status 3" in reason


async def test_start_that_fails_at_once_says_why(hub, dora, exits_at_once):
    """The hub answers a generic "Internal Server Error" (or "error"), or 202
    and the server stops: either way the service tells why, from the hub's
    progress stream or from the engine. (On an engine shared with other
    tests, the hub may even take another container's answer at the freed
    address for this server's and call it running: the service still says
    its container exited.)"""
    try:
        reason = await start_and_wait_for_error(dora, "at-once", "hs-exits-at-once")
        assert explains(reason), reason
        assert not reason.endswith(("Internal Server Error", ": error"))

        server = await wait_for(dora, "at-once", lambda s: s["status"] != "spawn", timeout=90)
        assert server["environment"] == "hs-exits-at-once"
        assert explains(server["error"]), server
        if server["status"] == "stopped":
            assert server["outdated"] is False  # a start takes the newest build

        # a direct link says why on its page, or its page follows the start
        # and the API gives the page the reason
        r = await dora.api("GET", "servers?name=at-once-link&environment=hs-exits-at-once")
        assert r.headers["content-type"].startswith("text/html")
        assert "Traceback" not in r.text
        if r.status_code == 200:
            assert 'id="launching"' in r.text
            server = await wait_for(dora, "at-once-link", lambda s: s["error"], timeout=60)
            assert explains(server["error"])
        else:
            assert r.status_code == 502
            assert "could not start" in r.text and (
                "exited with status 3" in r.text
            )
    finally:
        remove_servers(hub, "hs-dora")


@pytest.fixture(scope="module")
async def keeping_hub(tmp_path_factory, test_images):
    """A hub whose containers stay when they stop (DockerSpawner's remove=False,
    as the TLJH plugin configures), with a user of its own and an environment
    that exits while it starts."""
    with running_hub(
        tmp_path_factory.mktemp("hub-keep"),
        extra_service_args=UNCHECKED,
        # a short http_timeout: the hub gives up on a server that exited sooner
        extra_config="c.DockerSpawner.remove = False\nc.Spawner.http_timeout = 20",
    ) as info:
        yield info


def container_state(name):
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Status}}", name], capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else None


async def test_container_exit_while_starting_shows_its_output(keeping_hub, git_server, git_root):
    """The container runs, then exits with status 3 while the hub waits for it
    to answer: the service says so at once (not after the hub's http_timeout),
    with the container's output, and still after the hub gave up. When the
    container was removed before the service saw it, the engine's events still
    give its exit status."""
    admin = await HubUser.login(keeping_hub, "admin")
    fay = await HubUser.login(keeping_hub, "hs-fay")
    try:
        make_repo(git_root, "hs-exits-soon", {"Dockerfile": broken_dockerfile(3)})
        env = await admin.create_env({"repo": git_server.url("hs-exits-soon"), "name": "soon"})
        await admin.wait_env(env["uid"], {"built"})

        reason = await start_and_wait_for_error(fay, "kept", "soon")
        assert "exited with status 3" in reason
        assert BROKEN_OUTPUT in reason
        server = (await servers(fay))["kept"]
        assert BROKEN_OUTPUT in server["error"]
        # the server's token never shows, nor do its environment's secrets
        assert "JUPYTERHUB_API_TOKEN" not in server["error"]
        # the hub gives up after its http_timeout; the reason stays
        server = await wait_for(fay, "kept", lambda s: s["status"] == "stopped", timeout=90)
        assert BROKEN_OUTPUT in server["error"]

        # a container removed before the service looked: its exit status, from
        # the engine's events (what DockerSpawner's remove=True leads to)
        r = await fay.api("POST", "api/servers", json={"name": "gone", "environment": "soon"})
        container = "tljh-r2d-test-hs-2dfay-gone"
        for _ in range(60):
            if container_state(container) == "exited":
                break
            await asyncio.sleep(0.5)
        assert container_state(container) == "exited"
        subprocess.run(["docker", "rm", "-f", container], check=True, capture_output=True)
        server = (await servers(fay))["gone"]
        assert server["status"] == "spawn"  # the hub waits for its http_timeout
        assert "exited with status 3" in server["error"]
        assert "removed" in server["error"]
    finally:
        remove_servers(keeping_hub, "hs-fay")
        await admin.close()
        await fay.close()
        # this hub keeps stopped containers: remove them
        for name in ("kept", "gone"):
            subprocess.run(["docker", "rm", "-f", f"tljh-r2d-test-hs-2dfay-{name}"], capture_output=True)


async def test_server_says_when_its_environment_has_a_newer_build(hub, admin, dora, git_server, git_root):
    make_repo(git_root, "hs-outdated", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nLABEL hs.version=1\n"})
    env = await admin.create_env({"repo": git_server.url("hs-outdated"), "name": "hs-outdated"})
    env = await admin.wait_env(env["uid"], {"built"})
    try:
        r = await dora.api("POST", "api/servers", json={"name": "out", "environment": "hs-outdated"})
        assert r.status_code == 202, r.text
        server = await wait_for(dora, "out", lambda s: s and s["status"] == "running")
        assert server["environment"] == "hs-outdated"
        assert server["outdated"] is False
        assert server["error"] is None

        add_commit(git_root, "hs-outdated", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nLABEL hs.version=2\n"})
        r = await admin.api("POST", f"api/environments/{env['uid']}/rebuild")
        assert r.status_code == 202, r.text
        rebuilt = await admin.wait_env(env["uid"], {"built", "failed"})
        assert rebuilt["status"] == "built" and rebuilt["commit"] != env["commit"]

        server = (await servers(dora))["out"]
        assert server["status"] == "running"
        assert server["outdated"] is True

        # stopped, it is not outdated: a start takes the newest build
        r = await dora.api("DELETE", "api/servers/out")
        assert r.status_code == 202
        server = await wait_for(dora, "out", lambda s: s["status"] == "stopped", timeout=60)
        assert server["outdated"] is False
        r = await dora.api("GET", "servers?name=out")
        assert r.status_code == 200 and 'id="launching"' in r.text
        server = await wait_for(dora, "out", lambda s: s["status"] == "running")
        assert server["outdated"] is False
    finally:
        remove_servers(hub, "hs-dora")
        await admin.delete_env(env["uid"])
