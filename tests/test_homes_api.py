"""Users' homes for admins: ``GET api/homes`` and ``DELETE api/homes/{name}``.

Real Docker and a real hub with the service. The volumes are made here with
``docker volume create --label …``, as the spawner labels users' homes: this
hub's, another hub's (another ``home.prefix``: never shown nor removable), and
look-alikes without the labels. One is mounted by a stopped container of the
test single-user image, so that removing it is refused (409).
"""

import os
import subprocess
import time

import pytest

from .helpers.fixtures import SINGLEUSER_IMAGE, running_hub
from .helpers.utils import assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]

RUN = f"hh-{os.getpid()}"
USER = f"{RUN}-gina"  # the homes' user (no such hub user is needed)


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def volume_exists(name):
    return docker("volume", "inspect", name, check=False).returncode == 0


def make_volume(name, **labels):
    args = []
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    docker("volume", "create", *args, name)
    return name


def home_labels(prefix, user=USER, server="", environment=""):
    return {
        "tljh_repo2docker.home": "1",
        "tljh_repo2docker.home.user": user,
        "tljh_repo2docker.home.server": server,
        "tljh_repo2docker.home.environment": environment,
        "tljh_repo2docker.home.prefix": prefix,
    }


@pytest.fixture(scope="module")
def volumes(hub, built_env):
    """This module's volumes and the stopped container using one of them."""
    ours = home_labels(hub.image_prefix)
    specs = {
        "default": ours,
        "lab": home_labels(hub.image_prefix, server="lab", environment=built_env["uid"]),
        "in_use": home_labels(hub.image_prefix, server="busy"),
        "other_hub": home_labels("another-hub/"),
        "no_home_label": {k: v for k, v in ours.items() if k != "tljh_repo2docker.home"},
        "plain": {},
    }
    made = {}
    container = f"{RUN}-user"
    try:
        for key, labels in specs.items():
            made[key] = make_volume(f"{RUN}-{key.replace('_', '-')}", **labels)
        # 100 kB of data in the "default" home, for its size
        docker(
            "run", "--rm", "--user", "root", "-v", f"{made['default']}:/data",
            "--entrypoint", "sh", SINGLEUSER_IMAGE, "-c", "head -c 100000 /dev/zero > /data/file",
        )
        docker("create", "--name", container, "-v", f"{made['in_use']}:/home/jovyan", SINGLEUSER_IMAGE)
        yield {**made, "container": container}
    finally:
        docker("rm", "-f", container, check=False)
        for name in made.values():
            docker("volume", "rm", "-f", name, check=False)


async def list_homes(user):
    r = await user.api("GET", "api/homes")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    return body, {h["name"]: h for h in body["homes"]}


async def test_admins_see_this_hubs_homes_only(admin, bob, volumes, built_env):
    for user in (admin, bob):  # hub admin; user with the service's admin scope
        body, homes = await list_homes(user)
        assert {volumes["default"], volumes["lab"], volumes["in_use"]} <= set(homes)
        for other in ("other_hub", "no_home_label", "plain"):
            assert volumes[other] not in homes

    lab = homes[volumes["lab"]]
    assert lab["user"] == USER
    assert lab["server"] == "lab"
    assert lab["environment"] == built_env["uid"]
    assert lab["environment_name"] == built_env["name"]
    assert lab["in_use_by"] == []
    assert lab["created"].endswith("+00:00")
    assert homes[volumes["default"]]["server"] == ""
    assert homes[volumes["in_use"]]["in_use_by"] == [volumes["container"]]


async def test_sizes_come_from_the_engine_or_say_why_not(admin, volumes):
    deadline = time.monotonic() + 90
    while True:
        body, homes = await list_homes(admin)
        size = homes[volumes["default"]]["size"]
        if size is not None:
            break
        # unknown sizes are said, never shown as 0
        assert isinstance(body["sizes_note"], str) and body["sizes_note"]
        assert time.monotonic() < deadline, body
        time.sleep(3)
    assert size >= 100_000


async def test_plain_users_may_not_see_nor_delete(alice, volumes):
    assert_json_error(await alice.api("GET", "api/homes"), 403, "admin")
    r = await alice.api("DELETE", f"api/homes/{volumes['default']}")
    assert_json_error(r, 403, "admin")
    assert volume_exists(volumes["default"])
    r = await alice.api("GET", "homes")
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("text/html")


async def test_delete_refuses_homes_in_use_and_names_the_container(admin, volumes):
    r = await admin.api("DELETE", f"api/homes/{volumes['in_use']}")
    body = assert_json_error(r, 409, volumes["container"])
    assert body["field"] == "name"
    assert volume_exists(volumes["in_use"])
    docker("rm", "-f", volumes["container"])
    r = await admin.api("DELETE", f"api/homes/{volumes['in_use']}")
    assert r.status_code == 204, r.text
    assert not volume_exists(volumes["in_use"])


async def test_delete_removes_the_home(admin, volumes):
    r = await admin.api("DELETE", f"api/homes/{volumes['lab']}")
    assert r.status_code == 204, r.text
    assert not volume_exists(volumes["lab"])
    _, homes = await list_homes(admin)
    assert volumes["lab"] not in homes
    # again: it is gone
    body = assert_json_error(await admin.api("DELETE", f"api/homes/{volumes['lab']}"), 404)
    assert body["field"] == "name"


@pytest.mark.parametrize("which", ["other_hub", "no_home_label", "plain", None])
async def test_delete_of_volumes_that_are_not_this_hubs_homes_is_404(admin, volumes, which):
    name = volumes[which] if which else f"{RUN}-never-made"
    r = await admin.api("DELETE", f"api/homes/{name}")
    assert_json_error(r, 404, "no home named")
    if which:
        assert volume_exists(name)


@pytest.mark.parametrize("name", ["-starts-with-dash", ".hidden", "a%20b", "x" * 256, "%C3%A9t%C3%A9"])
async def test_impossible_names_are_400(admin, name):
    body = assert_json_error(await admin.api("DELETE", f"api/homes/{name}"), 400)
    assert body["field"] == "name"
    assert "volume name" in body["message"]


async def test_page_is_for_admins(admin):
    r = await admin.api("GET", "homes")
    assert r.status_code == 200
    assert 'id="homes"' in r.text
    assert 'href="/services/tljh_repo2docker/homes"' in r.text  # the navbar link


async def test_without_a_docker_engine_the_answer_says_so(tmp_path):
    """With BinderHub (Kubernetes), homes are no Docker volumes of this service: 501."""
    from .helpers.utils import HubUser

    with running_hub(tmp_path, extra_service_args=["--binderhub_url=http://127.0.0.1:9/"]) as info:
        admin = await HubUser.login(info, "admin")
        try:
            body = assert_json_error(await admin.api("GET", "api/homes"), 501, "BinderHubBuilder")
            assert "kubectl" in body["message"]
            assert_json_error(await admin.api("DELETE", "api/homes/some-volume"), 501)
            r = await admin.api("GET", "homes")
            assert r.status_code == 200 and 'id="homes-unavailable"' in r.text
        finally:
            await admin.close()
