"""Environments registered from an existing image, end to end: a real hub, the
Docker engine, images made by the test on the engine (offline: a reference
without a registry host is one of the engine's own images, never pulled).

An image is taken, labelled as this hub's, checked like a build (a
single-user server must come up in it) and becomes version 1 with
``source: "image"``; one without ``jupyterhub-singleuser`` is refused by the
check and nothing goes live; a registry that is not allowed is a 400 naming
``image`` with nothing stored; a re-pull of an unchanged image answers 200
with a message, and one after the reference moved makes version 2.
"""

import subprocess

import pytest

from tests.helpers.buildutils import (
    docker,
    image_info,
    images_of,
    log_text,
    read_events,
    token,
    wait_for,
)
from tests.helpers.fixtures import SINGLEUSER_IMAGE, add
from tests.helpers.servers import container, wait_server
from tests.helpers.utils import assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]

BASE_IMAGE = "tljh-repo2docker-test/base:trixie"
UID_LABEL = "tljh_repo2docker.uid"


@pytest.fixture
def local_image():
    """``local_image(from_image, label=None) -> reference``: a new local name
    (no registry host) for ``from_image``, or for an image made ``FROM`` it
    with a label (another id); removed after the test."""
    made = []

    def make(from_image, label=None, reference=None):
        reference = reference or f"tljh-r2d-imgtest-{token()}:v1"
        if label is None:
            docker("tag", from_image, reference)
        else:
            subprocess.run(
                ["docker", "build", "-q", "--label", f"test.label={label}", "-t", reference, "-"],
                input=f"FROM {from_image}\n", text=True, capture_output=True, check=True,
                timeout=120,
            )
        made.append(reference)
        return reference

    yield make
    for reference in made:
        docker("rmi", "--no-prune", reference, check=False)


async def versions_of(user, uid):
    r = await user.api("GET", f"api/environments/{uid}/versions")
    assert r.status_code == 200, r.text
    return r.json()["versions"]


async def test_an_image_is_registered_started_and_pulled_again(admin, envs, local_image):
    reference = local_image(SINGLEUSER_IMAGE)
    source_id = image_info(reference)["Id"]
    env = await add(admin, envs, {"image": reference, "memory": "512M"})
    uid = env["uid"]
    assert env["source"] == "image" and env["image"] == reference
    env = await admin.wait_env(uid, {"built", "failed", "cancelled"})
    assert env["status"] == "built", env
    assert env["build_number"] == 1 and env["source"] == "image"
    assert env["commit"] == source_id
    [v1] = await versions_of(admin, uid)
    assert v1["number"] == 1 and v1["commit"] == source_id and v1["current"] is True

    # The image servers start from is this hub's: our labels over the image's own.
    built = image_info(env["image_name"])
    labels = built["Config"]["Labels"]
    assert labels[UID_LABEL] == uid
    assert labels["tljh_repo2docker.repo"] == reference
    assert labels["tljh_repo2docker.source_image_id"] == source_id
    assert built["Id"] == env["image_id"] != source_id

    log = log_text(await read_events(admin, uid))
    assert f"taking the existing image {reference}" in log
    assert "check: jupyterhub-singleuser" in log and "started and answered" in log
    # No staging name is left: only the environment's name and version 1's.
    tags = {t for i in images_of(uid) for t in image_info(i)["RepoTags"]}
    assert not any(t.startswith("tljh-repo2docker-build-") for t in tags), tags

    # A server starts from it.
    server_name = f"img{token()[:6]}"
    r = await admin.api(
        "POST", "api/servers", json={"name": server_name, "environment": env["name"]}
    )
    assert r.status_code == 202, r.text
    try:
        server = await wait_server(admin, server_name)
        assert server["environment_uid"] == uid
        info = container("admin", server_name)
        assert info is not None and info["Image"] == env["image_id"]
    finally:
        await admin.api("DELETE", f"api/servers/{server_name}")
        await wait_server(admin, server_name, "stopped")
        await admin.api("DELETE", f"api/servers/{server_name}", params={"remove": "true"})

    # Pulled again, unchanged: nothing to do (unless forced).
    rebuild = f"api/environments/{uid}/rebuild"
    r = await admin.api("POST", rebuild)
    assert r.status_code == 200, r.text
    assert "unchanged" in r.json()["message"] and r.json()["build_number"] == 1

    # The reference moved to another image: version 2.
    local_image(SINGLEUSER_IMAGE, label=token(), reference=reference)
    moved_id = image_info(reference)["Id"]
    assert moved_id != source_id
    r = await admin.api("POST", rebuild)
    assert r.status_code == 202, r.text

    async def second_done():
        env = await admin.get_env(uid)
        return env["build_number"] == 2 and env["status"] in ("built", "failed", "cancelled")

    await wait_for(second_done, timeout=300, interval=0.5, what="the re-pull")
    env = await admin.get_env(uid)
    assert env["status"] == "built" and env["build_number"] == 2, env
    assert env["commit"] == moved_id
    v2, old = await versions_of(admin, uid)
    assert v2["number"] == 2 and v2["commit"] == moved_id and v2["current"] is True
    assert old["commit"] == source_id and old["current"] is False

    # A version's image again: {"version": id} takes the image it was made from.
    r = await admin.api("POST", rebuild, json={"version": old["id"]})
    assert r.status_code == 202, r.text

    async def third_done():
        env = await admin.get_env(uid)
        return env["build_number"] == 3 and env["status"] in ("built", "failed", "cancelled")

    await wait_for(third_done, timeout=300, interval=0.5, what="the version's re-import")
    env = await admin.get_env(uid)
    assert env["status"] == "built" and env["commit"] == source_id, env


async def test_an_image_without_a_single_user_server_is_refused(admin, envs, local_image):
    reference = local_image(BASE_IMAGE)
    env = await add(admin, envs, {"image": reference})
    env = await admin.wait_env(env["uid"], {"built", "failed", "cancelled"})
    assert env["status"] == "failed", env
    assert "The check failed: the image has no jupyterhub-singleuser" in env["error"], env
    assert env["image_id"] is None and env["commit"] is None
    r = docker("image", "inspect", env["image_name"], check=False)
    assert r.returncode != 0, "a refused image must not get the environment's name"


async def test_a_registry_not_allowed_is_refused_and_nothing_stored(admin):
    name = f"img-refused-{token()}"
    before = await admin.api("GET", "api/environments")
    r = await admin.api(
        "POST", "api/environments", json={"image": "ghcr.io/org/tools:1", "name": name}
    )
    error = assert_json_error(r, 400)
    assert error["field"] == "image"
    assert "ghcr.io" in error["message"] and "allowed_image_registries" in error["message"]
    after = await admin.api("GET", "api/environments")
    assert name not in after.text and len(after.json()["environments"]) == len(
        before.json()["environments"]
    )
    # And what cannot apply to an image names its field.
    for extra, field in (({"ref": "main"}, "ref"), ({"buildargs": {"A": "1"}}, "buildargs")):
        r = await admin.api("POST", "api/environments", json={"image": "x:1", "name": name, **extra})
        assert assert_json_error(r, 400)["field"] == field


def check_containers(uid):
    result = docker("ps", "-aq", "--filter", f"label=tljh_repo2docker.check={uid}")
    return result.stdout.split()


async def test_an_import_is_cancelled_like_a_build(admin, envs, local_image):
    reference = local_image(SINGLEUSER_IMAGE)
    env = await add(admin, envs, {"image": reference, "check_command": "sleep 300"})
    uid = env["uid"]

    async def in_the_owners_check():
        found = docker(
            "ps", "-q", "--filter", f"label=tljh_repo2docker.check={uid}",
            "--filter", "label=tljh_repo2docker.check_role=command",
        ).stdout.split()
        return found or None

    await wait_for(in_the_owners_check, timeout=120, interval=0.3, what="the check command")
    r = await admin.api("POST", f"api/environments/{uid}/cancel")
    assert r.status_code in (200, 202, 204), r.text
    env = await admin.wait_env(uid, {"built", "failed", "cancelled"}, timeout=60)
    assert env["status"] == "cancelled", env
    assert env["image_id"] is None
    await wait_for(lambda: not check_containers(uid), timeout=30, what="check containers gone")
    await wait_for(lambda: not images_of(uid), timeout=30, what="the labelled image gone")
    assert image_info(env["image_name"]) is None
