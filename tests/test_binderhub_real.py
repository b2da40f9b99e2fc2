"""The service with ``--binderhub_url`` against the real BinderHub, end to end.

BinderHub (from its source, see ``./dev setup_vendor``) runs without
Kubernetes, the way its own single-machine set-up does
(``tests/helpers/binderhub_real.py``): a JupyterHub managed service ``binder``
next to ours, ``LocalRepo2dockerBuild`` (repo2docker as a host process on this
machine's Docker engine, with ``docker buildx`` from Debian 13), API-only
mode, no registry, authentication through the hub. Its repositories come from
a ``git daemon`` (BinderHub's git provider takes ``git://`` URLs) and build
from the local single-user image, offline.

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
import subprocess
import uuid

import httpx
import pytest

from tests.helpers import utils
from tests.helpers.binderhub_real import binderhub_hub, hub_user, local_images, need_binderhub, serve_git
from tests.helpers.buildutils import FINAL, log_text, read_events, token, wait_for
from tests.helpers.fixtures import SINGLEUSER_IMAGE
from tests.helpers.processes import service_pids
from tljh_repo2docker.builds.base import FAILED, BuildRequest
from tljh_repo2docker.builds.binderhub import CANCEL_NOTE, BinderHubBuilder

pytestmark = [pytest.mark.hub, pytest.mark.docker]

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


@pytest.fixture(scope="module")
def binderhub_venv():
    return need_binderhub()


@pytest.fixture(scope="module")
def git_daemon(tmp_path_factory, test_images):
    with serve_git(tmp_path_factory.mktemp("git-daemon"), REPOS) as url:
        yield url


def binderhub_images():
    return local_images(IMAGE_PREFIX)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, binderhub_venv, git_daemon, docker_engine):
    with binderhub_hub(tmp_path_factory.mktemp("binderhub-real-hub"), IMAGE_PREFIX) as hub_info:
        yield hub_info
    for image in binderhub_images():
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


admin = hub_user("admin")


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
    (pid,) = service_pids(hub)
    os.kill(pid, signal.SIGKILL)

    async def back():
        try:
            r = await admin.api("GET", "api/environments")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    # JupyterHub polls its managed services every 30 s and starts a dead one again.
    await asyncio.sleep(1)
    await wait_for(back, timeout=90, interval=0.5, what="the service back")
