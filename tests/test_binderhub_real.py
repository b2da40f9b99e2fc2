"""The service with ``--binderhub_url`` against the real BinderHub, end to end.

BinderHub (from its source, see ``./dev setup_vendor``) runs without
Kubernetes, the way its own single-machine set-up does: a JupyterHub managed
service ``binder`` next to ours, ``LocalRepo2dockerBuild`` (repo2docker as a
host process on this machine's Docker engine, with ``docker buildx`` from
Debian 13), API-only mode, no registry, authentication through the hub. Its
repositories come from a ``git daemon`` (BinderHub's git provider takes
``git://`` URLs) and build from the local single-user image, offline.

What only the real one shows is tested here: its own errors come as HTTP 200
with ``status_code`` in the event, a failed build's reason is in the log
rather than in the final event, cancel does not stop it (and its late image
changes nothing), and its images are refused for servers up front. Faults
that only a stand-in can make (cut, slow, malformed streams) stay in
``tests/test_binderhub_service.py``.
"""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid

import httpx
import pytest

from tests.helpers import utils
from tests.helpers.buildutils import FINAL, log_text, read_events, token, wait_for
from tests.helpers.fixtures import ROOT, SINGLEUSER_IMAGE, _free_port, need, running_hub
from tests.helpers.gitserver import make_repo
from tljh_repo2docker.builds.base import FAILED, BuildRequest
from tljh_repo2docker.builds.binderhub import CANCEL_NOTE, BinderHubBuilder

pytestmark = [pytest.mark.hub, pytest.mark.docker]

VENV = ROOT / ".venv-binderhub"
PYTHON = VENV / "bin" / "python"
#: BinderHub's own docker CLI config, holding the docker-buildx plugin.
DOCKER_CONFIG = VENV / "docker"
#: Images BinderHub builds here start with this (its image_prefix), one per run.
IMAGE_PREFIX = f"tljh-r2d-bhreal-{os.getpid()}-"

REPOS = {
    "ok": f"FROM {SINGLEUSER_IMAGE}\nRUN echo built by BinderHub > /tmp/built\n",
    "fail": f"FROM {SINGLEUSER_IMAGE}\nRUN echo about to fail && exit 3\n",
    # long enough to cancel while repo2docker is quiet in it; new in every
    # run (ENV), or BuildKit would take the step from an earlier run's cache
    "slow": f"FROM {SINGLEUSER_IMAGE}\nENV TEST_RUN={uuid.uuid4().hex}\n"
    "RUN echo slow step && sleep 12 && echo slept\n",
}


def _port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def binderhub_venv():
    if not PYTHON.exists():
        need(f"the real BinderHub is not installed in {VENV} (run ./dev setup)")
    if not (DOCKER_CONFIG / "cli-plugins" / "docker-buildx").exists():
        need(f"docker-buildx is missing from {DOCKER_CONFIG}/cli-plugins (run ./dev setup)")
    return PYTHON


@pytest.fixture(scope="module")
def git_daemon(tmp_path_factory, test_images):
    root = tmp_path_factory.mktemp("git-daemon")
    for name, dockerfile in REPOS.items():
        make_repo(root, name, {"Dockerfile": dockerfile})
    port = _free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
         "--listen=127.0.0.1", f"--port={port}", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _port_open(port):
        assert proc.poll() is None and time.monotonic() < deadline, "git daemon did not start"
        time.sleep(0.1)
    yield f"git://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(10)


def binderhub_images():
    out = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{IMAGE_PREFIX}*"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


@pytest.fixture(scope="module")
def hub(tmp_path_factory, binderhub_venv, git_daemon, docker_engine):
    workdir = tmp_path_factory.mktemp("binderhub-real-hub")
    binder_port = _free_port()
    r2d_config = workdir / "repo2docker_config.py"
    # Offline: only the providers that need no internet.
    r2d_config.write_text(
        "from repo2docker.contentproviders import Git, Local\n"
        "c.Repo2Docker.content_providers = [Local, Git]\n"
    )
    binder_config = workdir / "binderhub_config.py"
    binder_config.write_text(
        f"""
import os
# The hub as the hub tells its services (BinderHub checks hub/api/health there).
c.BinderHub.hub_url = os.environ["JUPYTERHUB_API_URL"].rpartition("hub/api")[0]
c.BinderHub.build_class = "binderhub.build_local.LocalRepo2dockerBuild"
c.BinderHub.use_registry = False
c.BinderHub.builder_required = False
c.BinderHub.launch_quota_class = "binderhub.quota.LaunchQuota"
c.BinderHub.enable_api_only_mode = True
c.BinderHub.auth_enabled = True
c.BinderHub.image_prefix = {IMAGE_PREFIX!r}
c.BinderHub.base_url = "/services/binder/"
c.BinderHub.port = {binder_port}
c.LocalRepo2dockerBuild.repo2docker_extra_args = ["--config", {str(r2d_config)!r}]
"""
    )
    extra_config = f"""
import os
c.JupyterHub.services.append({{
    "name": "binder",
    "url": "http://127.0.0.1:{binder_port}",
    "command": [{str(PYTHON)!r}, "-m", "binderhub", "-f", {str(binder_config)!r}],
    "cwd": {str(workdir)!r},
    "oauth_no_confirm": True,
    "environment": {{
        "PATH": {str(VENV / "bin")!r} + ":" + os.environ["PATH"],
        "DOCKER_CONFIG": {str(DOCKER_CONFIG)!r},
    }},
}})
# our service reaches BinderHub with its own token (hub_config.roles(binderhub=True))
c.JupyterHub.load_roles[0]["scopes"].append("access:services!service=binder")
"""
    args = [
        f"--binderhub_url=http://127.0.0.1:{binder_port}/services/binder/",
        "--repo_providers=git",
        # BinderHub starts after our service, which looks again every second.
        "--retry_interval=1",
    ]
    with running_hub(workdir, args, extra_config=extra_config) as hub_info:
        hub_info.binder_url = f"http://127.0.0.1:{binder_port}/services/binder/"
        utils.wait_for_http(hub_info.binder_url + "health", timeout=60, ok=(200,))
        utils.wait_for_http(f"{hub_info.url}services/tljh_repo2docker/health", timeout=60, ok=(200,))
        yield hub_info
    for image in binderhub_images():
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


@pytest.fixture(scope="module")
async def admin(hub):
    user = await utils.HubUser.login(hub, "admin")
    yield user
    await user.close()


def binder_log(hub):
    return (hub.workdir / "jupyterhub.log").read_text()


async def test_binderhub_errors_come_as_events(hub, admin):
    """BinderHub answers its own errors with HTTP 200 and status_code in the event."""
    url = hub.binder_url + "build/git/" + "x/HEAD"
    async with httpx.AsyncClient() as client:
        r = await client.get(url, params={"build_only": "true"},
                             headers={"Accept": "text/event-stream"})
    assert r.status_code == 200
    event = json.loads(r.text.strip().removeprefix("data:"))
    assert event["phase"] == "failed" and event["status_code"] == 403, event

    # The builder reads the event's status: a refusal, never retried as an outage.
    builder = BinderHubBuilder(url=hub.binder_url, token="not-a-token", retries=2, retry_delay=0)
    try:
        events = [e async for e in builder.build(BuildRequest(
            uid=f"bhr-{token()}", repo="git://127.0.0.1:9/x.git", ref="", image_name="x:y",
        ))]
    finally:
        await builder.close()
    assert [(e.phase, e.message) for e in events] == [
        (FAILED, "BinderHub refused the build (HTTP 403): Forbidden")
    ]


async def test_unresolvable_ref_fails_with_binderhubs_reason(hub, admin):
    name = f"bhr-noref-{token()}"
    env = await admin.create_env({"repo": f"git://127.0.0.1:9/{name}.git", "name": name})
    env = await admin.wait_env(env["uid"], FINAL, timeout=60)
    assert env["status"] == "failed", env
    assert "Error resolving ref" in env["error"], env["error"]
    events = await read_events(admin, env["uid"], timeout=10)
    assert not any("retrying" in data["message"] for _, data in events)


async def test_build_ok_and_servers_refused_up_front(hub, admin, git_daemon):
    name = f"bhr-ok-{token()}"
    env = await admin.create_env({"repo": git_daemon + "ok.git", "name": name})
    live = await read_events(admin, env["uid"], timeout=240)
    env = await admin.get_env(env["uid"])
    assert env["status"] == "built", (env, log_text(live))
    assert env["image_name"].startswith(IMAGE_PREFIX), env
    assert env["image_name"] in binderhub_images()
    assert len(env["commit"]) == 40
    # its version is the image BinderHub named for the commit
    r = await admin.api("GET", f"api/environments/{env['uid']}/versions")
    assert r.status_code == 200, r.text
    (version,) = r.json()["versions"]
    assert (version["image_name"], version["commit"]) == (env["image_name"], env["commit"])
    assert version["current"] is True and version["number"] == 1
    text = log_text(live)
    assert "built by BinderHub" in text  # repo2docker's build output reached the log
    assert "\n\n" not in text  # BinderHub's blank line after each event is dropped

    # Repo2DockerSpawner cannot start an image without our labels: refused at
    # once. BinderHub says it has no registry by listing no check of one.
    health = httpx.get(hub.binder_url + "health", timeout=10).json()
    assert "Docker registry" not in {c["service"] for c in health["checks"]}, health
    r = await admin.api("POST", "api/servers", json={"name": f"bhr-{token()}", "environment": name})
    body = utils.assert_json_error(r, 409, "environment:")
    assert "without a registry" in body["message"], body


async def test_failed_build_stores_the_line_that_says_why(hub, admin, git_daemon):
    name = f"bhr-fail-{token()}"
    env = await admin.create_env({"repo": git_daemon + "fail.git", "name": name})
    events = await read_events(admin, env["uid"], timeout=240)
    env = await admin.get_env(env["uid"])
    assert env["status"] == "failed", env
    assert "exit code: 3" in env["error"], env["error"]
    assert "buildx build" not in env["error"], env["error"]
    assert events[-1][1] == {"phase": "failed", "message": env["error"]}
    assert "about to fail" in log_text(events)


async def test_cancel_leaves_binderhub_building_and_its_image_unused(hub, admin, git_daemon):
    name = f"bhr-slow-{token()}"
    before = binderhub_images()
    env = await admin.create_env({"repo": git_daemon + "slow.git", "name": name})
    uid = env["uid"]

    async def sleeping():
        events = await read_events(admin, uid, timeout=5, follow=False)
        # the step's own output ("#5 0.12 slow step"), not its title
        return re.search(r"^#\d+ [\d.]+ slow step$", log_text(events), re.M) is not None

    await wait_for(sleeping, timeout=180, interval=0.5, what="the slow step running")
    r = await admin.api("POST", f"api/environments/{uid}/cancel")
    assert r.status_code == 200, r.text
    env = await admin.wait_env(uid, FINAL, timeout=30)
    assert env["status"] == "cancelled", env
    events = await read_events(admin, uid, timeout=10)
    assert CANCEL_NOTE in [data["message"] for _, data in events]

    # BinderHub goes on and makes the image after all...
    def late_image():
        return binderhub_images() - before

    await wait_for(late_image, timeout=120, interval=1, what="BinderHub's late image")
    # ...which changes nothing for the cancelled environment,
    env = await admin.get_env(uid)
    assert env["status"] == "cancelled", env
    assert not env["image_name"].startswith(IMAGE_PREFIX), env  # still the planned name
    r = await admin.api("POST", "api/servers", json={"name": f"bhr-{token()}", "environment": name})
    utils.assert_json_error(r, 409, "not built yet")
    # ...nor once it is deleted and the service restarted (recovery, adoption).
    r = await admin.api("DELETE", f"api/environments/{uid}")
    assert r.status_code in (200, 204), r.text
    await restart_service(hub, admin)
    r = await admin.api("GET", "api/environments")
    assert name not in {e["name"] for e in r.json()["environments"]}


async def restart_service(hub, admin):
    pids = subprocess.run(
        ["pgrep", "-f", f"tljh_repo2docker --port={hub.service_port}"],
        capture_output=True, text=True,
    ).stdout.split()
    (pid,) = pids
    os.kill(int(pid), signal.SIGKILL)

    async def back():
        try:
            r = await admin.api("GET", "api/environments")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    # JupyterHub polls its managed services every 30 s and starts a dead one again.
    await asyncio.sleep(1)
    await wait_for(back, timeout=90, interval=0.5, what="the service back")
