"""The ref poller on an environment registered from an image: with
``auto_rebuild`` on, a reference that points at another image makes the next
version (reason "poll"); an unchanged one makes none. A real hub polling
every second, images made by the test on the engine."""

import subprocess

import pytest

from tests.helpers.buildutils import docker, image_info, token, wait_for
from tests.helpers.fixtures import SINGLEUSER_IMAGE, running_hub
from tests.helpers.utils import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker]


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images):
    """This module's hub (it shadows the session's: it polls every second)."""
    with running_hub(
        tmp_path_factory.mktemp("image-poll-hub"), extra_service_args=["--ref_poll_interval=1"]
    ) as info:
        yield info


@pytest.fixture(scope="module")
async def admin(hub):
    user = await HubUser.login(hub, "admin")
    yield user
    await user.close()


async def test_the_poller_pulls_again_and_makes_a_version_when_the_image_moved(admin):
    reference = f"tljh-r2d-imgtest-{token()}:poll"
    docker("tag", SINGLEUSER_IMAGE, reference)
    uid = None
    try:
        env = await admin.create_env(
            {"image": reference, "name": f"poll-{token()}", "auto_rebuild": True}
        )
        uid = env["uid"]
        env = await admin.wait_env(uid, {"built", "failed", "cancelled"})
        assert env["status"] == "built", env

        # Unchanged: seen by the poller, nothing built.
        async def seen():
            env = await admin.get_env(uid)
            return env if env["remote_commit"] == env["commit"] else None

        env = await wait_for(seen, timeout=60, interval=0.5, what="the poller's look")
        assert env["build_number"] == 1 and env["remote_error"] is None

        subprocess.run(
            ["docker", "build", "-q", "--label", f"test.label={token()}", "-t", reference, "-"],
            input=f"FROM {SINGLEUSER_IMAGE}\n", text=True, capture_output=True, check=True,
            timeout=120,
        )
        moved = image_info(reference)["Id"]

        async def rebuilt():
            env = await admin.get_env(uid)
            done = env["build_number"] == 2 and env["status"] in ("built", "failed")
            return env if done else None

        env = await wait_for(rebuilt, timeout=180, interval=0.5, what="the poll's re-pull")
        assert env["status"] == "built" and env["commit"] == moved, env
        r = await admin.api("GET", f"api/environments/{uid}/versions")
        newest = r.json()["versions"][0]
        assert newest["number"] == 2 and newest["reason"] == "poll", newest
    finally:
        if uid is not None:
            await admin.api("POST", f"api/environments/{uid}/cancel")
            await admin.delete_env(uid)
        docker("rmi", "--no-prune", reference, check=False)
