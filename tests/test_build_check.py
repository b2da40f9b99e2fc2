"""The check of a built image before it becomes current (issue 22), against real Docker.

Two levels, both real (Docker engine, repo2docker, git server):

- ``DockerBuilder`` alone: a good image passes and is named; one without
  ``jupyterhub-singleuser``, one with too old a JupyterHub, or one whose
  ``check_command`` fails, fails with a message naming the fix, is kept only
  under its version reference and never gets the environment's name; the
  owner's command runs without network and with the limits; no check
  container is left behind.
- Through the hub and the service: the versions API shows each version's
  check, a breaking push leaves the good version current (a server still
  starts from it), a first build that fails is a failed environment, and a
  rollback to a version that failed is refused.
"""

import uuid

import pytest

from tests.helpers.buildutils import FINAL, image_info, log_text, read_events
from tests.helpers.dockerbuilder import (
    collect,
    docker,
    dockerfile,
    explain,
    logs_of,
    make_builder,
    new_repo,
    new_request,
)
from tests.helpers.fixtures import add
from tests.helpers.gitserver import GitServer, add_commit
from tests.helpers.servers import wait_server
from tests.helpers.utils import admin_api, assert_json_error
from tljh_repo2docker.builds.base import BUILT, FAILED, BuildError
from tljh_repo2docker.builds.docker.check import CHECK_LABEL
from tljh_repo2docker.contract import version_reference

#: The test images' base: Python, no JupyterHub.
BASE_IMAGE = "tljh-repo2docker-test/base:trixie"


def no_jupyterhub():
    """A Dockerfile whose image has Python but no jupyterhub-singleuser."""
    return "\n".join([f"FROM {BASE_IMAGE}", f"ENV TEST_RUN={uuid.uuid4().hex}", ""])


def old_jupyterhub(version="1.5.0"):
    """A Dockerfile on the single-user image whose JupyterHub says it is ``version``."""
    numbers = ", ".join(version.split("."))
    return dockerfile(
        "USER root",
        "RUN sed -i 's/^version_info = .*/version_info = "
        f'({numbers}, "", "")/'
        "' $(python -c 'import jupyterhub._version as v; print(v.__file__)')",
        "USER jovyan",
    )


@pytest.fixture
async def builder():
    builder = make_builder()
    try:
        await builder.check()
    except BuildError as e:
        await builder.close()
        pytest.fail(f"no Docker engine: {e.message}")
    yield builder
    await builder.close()


@pytest.fixture
def made(builder):
    things = {"uids": [], "images": []}
    yield things
    for uid in things["uids"]:
        docker("rm", "-f", f"{builder.container_prefix}{uid}", check=False)
        ids = check_containers(uid)
        if ids:
            docker("rm", "-f", *ids, check=False)
    for image in things["images"]:
        for name in (image, version_reference(image, 1), version_reference(image, 2)):
            docker("rmi", "-f", name, check=False)


@pytest.fixture(scope="module")
def git_root(tmp_path_factory):
    return tmp_path_factory.mktemp("check-repos")


@pytest.fixture(scope="module")
def git_server(git_root):
    with GitServer(git_root) as server:
        yield server


def check_containers(uid):
    return docker("ps", "-aq", "--filter", f"label={CHECK_LABEL}={uid}").stdout.split()


def image_exists(name):
    return docker("image", "inspect", name, check=False).returncode == 0


# -- DockerBuilder -------------------------------------------------------------------


@pytest.mark.docker
async def test_a_good_image_passes_and_its_output_is_in_the_log(builder, made, git_root, git_server):
    repo = new_repo(git_root, {"Dockerfile": dockerfile()})
    request = new_request(made, git_server.url(repo), number=1, memory="512M", cpu=0.5)
    events = await collect(builder.build(request))
    final = events[-1]
    assert final.phase == BUILT, explain(events)
    assert final.check["status"] == "passed", final.check
    assert "JupyterHub" in final.check["message"]
    log = "\n".join(logs_of(events))
    # The server's own output, as it started in the check.
    assert "Jupyter Server" in log and "/user/check/api" in log, log[-3000:]
    assert any("checking the image" in e.message for e in events if e.phase == "status")
    assert final.builder_image == builder.repo2docker_image
    assert final.builder_image_id == image_info(builder.repo2docker_image)["Id"]
    assert image_info(request.image_name)["Id"] == final.image_id
    assert check_containers(request.uid) == []


@pytest.mark.docker
async def test_an_image_without_jupyterhub_fails_names_the_fix_and_is_never_named(
    builder, made, git_root, git_server
):
    repo = new_repo(git_root, {"Dockerfile": no_jupyterhub()})
    request = new_request(made, git_server.url(repo), number=1)
    events = await collect(builder.build(request))
    final = events[-1]
    assert final.phase == FAILED, explain(events)
    assert final.check == {"status": "failed", "message": final.message}
    assert "no jupyterhub-singleuser" in final.message
    assert "add `jupyterhub` to requirements.txt" in final.message
    # Kept under its version's own reference (what it holds can be read),
    # never under the environment's name; nothing else left.
    assert final.image_id and not image_exists(request.image_name)
    assert image_info(version_reference(request.image_name, 1))["Id"] == final.image_id
    assert final.inside["python"] and final.inside["build_pack"] == "DockerBuildPack"
    assert check_containers(request.uid) == []


@pytest.mark.docker
async def test_too_old_a_jupyterhub_fails_the_check(builder, made, git_root, git_server):
    repo = new_repo(git_root, {"Dockerfile": old_jupyterhub("1.5.0")})
    request = new_request(made, git_server.url(repo), number=1)
    events = await collect(builder.build(request))
    final = events[-1]
    assert final.phase == FAILED, explain(events)
    assert "JupyterHub 1.5.0 in the image" in final.message, final.message
    assert "the hub runs" in final.message and "jupyterhub>=2.0" in final.message
    assert not image_exists(request.image_name)

    # Not looking at the version (an empty minimum): the same image passes.
    lenient = make_builder(check_jupyterhub_min_version="")
    try:
        again = new_request(made, git_server.url(repo), number=1)
        events = await collect(lenient.build(again))
    finally:
        await lenient.close()
    assert events[-1].phase == BUILT, explain(events)


@pytest.mark.docker
async def test_the_check_command_runs_without_network_with_limits(builder, made, git_root, git_server):
    repo = new_repo(git_root, {"Dockerfile": dockerfile()})
    command = (
        "echo interfaces: $(ls /sys/class/net); "
        "echo memory: $(cat /sys/fs/cgroup/memory.max 2>/dev/null "
        "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
        "python -c 'import jupyterlab; print(\"lab ok\")'"
    )
    request = new_request(
        made, git_server.url(repo), number=1, check_command=command, memory="512M", cpu=0.5
    )
    events = await collect(builder.build(request))
    assert events[-1].phase == BUILT, explain(events)
    log = logs_of(events)
    assert "interfaces: lo" in log, log[-20:]
    assert f"memory: {512 * 1024**2}" in log
    assert "lab ok" in log
    assert "check command passed" in events[-1].check["message"]


@pytest.mark.docker
async def test_a_failing_check_command_fails_the_version(builder, made, git_root, git_server):
    repo = new_repo(git_root, {"Dockerfile": dockerfile()})
    command = "echo 'the model file is missing' >&2; exit 3"
    request = new_request(made, git_server.url(repo), number=1, check_command=command)
    events = await collect(builder.build(request))
    final = events[-1]
    assert final.phase == FAILED, explain(events)
    assert "exited with code 3" in final.message and "the model file is missing" in final.message
    assert "the model file is missing" in logs_of(events)
    assert final.check["status"] == "failed"
    assert not image_exists(request.image_name)
    assert check_containers(request.uid) == []


@pytest.mark.docker
async def test_a_check_command_that_hangs_is_stopped(made, git_root, git_server):
    quick = make_builder(check_command_timeout=2)
    try:
        repo = new_repo(git_root, {"Dockerfile": dockerfile()})
        request = new_request(made, git_server.url(repo), number=1, check_command="sleep 600")
        events = await collect(quick.build(request))
    finally:
        await quick.close()
    assert events[-1].phase == FAILED, explain(events)
    assert "did not finish within 2 s" in events[-1].message
    assert check_containers(request.uid) == []


@pytest.mark.docker
async def test_no_check_when_checks_are_off(made, git_root, git_server):
    unchecked = make_builder(check_images=False)
    try:
        repo = new_repo(git_root, {"Dockerfile": no_jupyterhub()})
        request = new_request(made, git_server.url(repo), number=1, check_command="exit 1")
        events = await collect(unchecked.build(request))
    finally:
        await unchecked.close()
    assert events[-1].phase == BUILT, explain(events)
    assert events[-1].check is None
    assert events[-1].inside["python"]  # still described


@pytest.mark.docker
async def test_a_build_cancelled_during_its_check_leaves_nothing(builder, made, git_root, git_server):
    import asyncio

    repo = new_repo(git_root, {"Dockerfile": dockerfile()})
    request = new_request(made, git_server.url(repo), number=1, check_command="sleep 600")
    seen = asyncio.Event()

    async def run():
        events = []
        async for event in builder.build(request):
            events.append(event)
            if "check command" in event.message:
                seen.set()
        return events

    task = asyncio.ensure_future(run())
    await asyncio.wait_for(seen.wait(), 120)
    await asyncio.sleep(1)
    await builder.cancel(request.uid)
    events = await asyncio.wait_for(task, 60)
    assert events[-1].phase == "cancelled", explain(events)
    assert check_containers(request.uid) == []
    assert not image_exists(request.image_name)
    assert not image_exists(version_reference(request.image_name, 1))


# -- through the hub and the service --------------------------------------------------


async def versions_of(user, uid):
    r = await user.api("GET", f"api/environments/{uid}/versions")
    assert r.status_code == 200, r.text
    return r.json()["versions"]


@pytest.mark.hub
@pytest.mark.docker
async def test_a_breaking_push_keeps_the_good_version_current(hub, admin, envs, repo, git_root):
    name, url = repo({"Dockerfile": dockerfile("RUN echo good > /tmp/v")})
    env = await add(admin, envs, {"repo": url, "ref": "main"})
    uid = env["uid"]
    env = await admin.wait_env(uid, FINAL)
    assert env["status"] == "built", env
    [v1] = await versions_of(admin, uid)
    assert v1["check"]["status"] == "passed" and v1["current"] is True
    assert v1["inside"]["build_pack"] == "DockerBuildPack" and v1["inside"]["python"]
    assert v1["builder"]["image"] and v1["builder"]["image_id"].startswith("sha256:")

    # A push that drops JupyterHub: the rebuild fails its check.
    add_commit(git_root, name, {"Dockerfile": no_jupyterhub()})
    r = await admin.api("POST", f"api/environments/{uid}/rebuild")
    assert r.status_code == 202, r.text
    after = await admin.wait_env(uid, FINAL)
    assert after["status"] == "failed", after
    assert "add `jupyterhub` to requirements.txt" in after["error"]
    assert "previous image is kept" in after["error"]
    assert after["image_id"] == env["image_id"] and after["image_name"] == env["image_name"]
    assert image_info(env["image_name"])["Id"] == env["image_id"]
    log = log_text(await read_events(admin, uid))
    assert "no jupyterhub-singleuser" in log

    v2, v1 = await versions_of(admin, uid)
    assert v2["number"] == 2 and v2["check"]["status"] == "failed" and v2["current"] is False
    assert "jupyterhub" in v2["check"]["message"]
    assert v1["current"] is True
    assert image_info(v2["image_name"])["Id"] == v2["image_id"] != v1["image_id"]

    # No rollback to it, and no server from it, even asked of the hub directly.
    r = await admin.api("POST", f"api/environments/{uid}/rollback", json={"version": v2["id"]})
    assert_json_error(r, 400, "version")
    refused = f"chk-{uuid.uuid4().hex[:6]}"
    with admin_api(hub) as api:
        r = api.post(f"users/admin/servers/{refused}", json={"image": v2["image_name"]})
        assert r.status_code == 400, r.text
        assert "failed its check" in r.text, r.text
        api.request("DELETE", f"users/admin/servers/{refused}", json={"remove": True})
    # A server still starts from the good version.
    server = f"chk-{uuid.uuid4().hex[:6]}"
    r = await admin.api("POST", "api/servers", json={"name": server, "environment": env["name"]})
    assert r.status_code == 202, r.text
    try:
        await wait_server(admin, server)
    finally:
        await admin.api("DELETE", f"api/servers/{server}", params={"remove": "true"})
        await wait_server(admin, server, "absent")


@pytest.mark.hub
@pytest.mark.docker
async def test_a_first_build_that_fails_its_check_is_a_failed_environment(hub, admin, envs, repo):
    _, url = repo({"Dockerfile": no_jupyterhub()})
    env = await add(admin, envs, {"repo": url, "ref": "main"})
    env = await admin.wait_env(env["uid"], FINAL)
    assert env["status"] == "failed", env
    assert "add `jupyterhub` to requirements.txt" in env["error"]
    assert not env.get("image_id")
    [v1] = await versions_of(admin, env["uid"])
    assert v1["check"]["status"] == "failed" and v1["current"] is False


@pytest.mark.hub
@pytest.mark.docker
async def test_the_owners_check_command_through_the_api(hub, admin, envs, repo):
    _, url = repo({"Dockerfile": dockerfile()})
    r = await admin.api(
        "POST",
        "api/environments",
        json={
            "repo": url,
            "ref": "main",
            "name": f"env-{uuid.uuid4().hex[:10]}",
            "check_command": "echo owner-check-ran; exit 4",
        },
    )
    if r.status_code == 400 and "check_command" in r.text:
        pytest.fail(f"the service does not take check_command yet: {r.text}")
    assert r.status_code == 202, r.text
    uid = r.json()["uid"]
    envs.append(uid)
    env = await admin.wait_env(uid, FINAL)
    assert env["status"] == "failed", env
    assert "exited with code 4" in env["error"]
    log = log_text(await read_events(admin, uid))
    assert "owner-check-ran" in log
    [v1] = await versions_of(admin, uid)
    assert v1["check"]["status"] == "failed"


def test_settings_are_validated():
    from tljh_repo2docker.builds.docker import DockerBuilder

    with pytest.raises(Exception, match="check_timeout"):
        DockerBuilder(check_timeout=0)
    with pytest.raises(Exception, match="check_command_timeout"):
        DockerBuilder(check_command_timeout=-1)
    with pytest.raises(Exception, match="check_jupyterhub_min_version"):
        DockerBuilder(check_jupyterhub_min_version="latest")
    assert DockerBuilder(check_jupyterhub_min_version=" 5.0 ").check_jupyterhub_min_version == "5.0"
    assert DockerBuilder().check_images is True


@pytest.mark.docker
async def test_a_check_server_left_by_a_killed_service_is_taken_over(builder, made, git_root, git_server):
    """A service killed during a check leaves its server running; the build,
    followed again, takes it over instead of starting another (so a service
    restarted often still gets to the end of the check). Other leftovers go."""
    from tljh_repo2docker.builds.docker.check import CheckSpec, server_config

    repo = new_repo(git_root, {"Dockerfile": dockerfile()})
    request = new_request(made, git_server.url(repo), number=1)
    events = await collect(builder.build(request))
    assert events[-1].phase == BUILT, explain(events)
    image_id = events[-1].image_id
    uid = request.uid
    spec = CheckSpec()
    config = server_config("5.0.0")
    left = await builder._start_check_container(uid, image_id, spec, config, "server")
    await builder._start_check_container(uid, image_id, spec, {"Cmd": ["sleep", "60"]}, "inside")

    server = await builder._take_over_checks(uid, image_id)
    assert server is not None and server.id == left.id
    assert check_containers(uid) == [left.id[:12]]
    outcome = {}
    checked = [e async for e in builder._check_image(uid, image_id, spec, [], outcome, server)]
    assert "since before the restart" in checked[0].message
    assert outcome["check"]["status"] == "passed", explain(checked)
    assert check_containers(uid) == []
