"""Faults of the machine around the service, with a real hub of this module's own.

1. A full disk during a build: the environment fails with a reason that says
   the disk is full, and nothing of the build is left.
2. JupyterHub restarted (SIGTERM, then started again on the same
   configuration in the same directory) while a build runs.
3. ``dockerd`` restarted while a build runs (last: it disturbs everything
   on the engine).

After each, the database and Docker agree: no environment left queued or
building, no build container, no image the database does not record, and
every recorded image present (:func:`tests.helpers.buildutils.assert_db_and_docker_agree`).

The hub's service runs with ``--DockerBuilder.build_tmpfs_size`` (see test 1),
so the builds of tests 2 and 3 also show that ordinary repositories build
with it.
"""

import asyncio
import os
import re
import subprocess
import time

import httpx
import pytest

from tests.helpers import utils
from tests.helpers.utils import figure
from tests.helpers.buildutils import (
    FINAL,
    assert_db_and_docker_agree,
    build_containers,
    docker,
    dockerd_restarted_on_exit,
    dockerfile,
    image_info,
    images_of,
    log_text,
    read_events,
    start_dockerd,
    stop_dockerd,
    stored_environments,
    token,
    wait_building,
    wait_for,
)
from tests.helpers.fixtures import SINGLEUSER_IMAGE, running_hub, start_hub, stop_hub
from tests.helpers.gitserver import make_repo
from tljh_repo2docker.builds.docker import BUILD_TMPFS_PATH

pytestmark = [pytest.mark.hub, pytest.mark.docker]

#: The tmpfs each build container gets for its checkout (test 1 overfills it).
TMPFS_SIZE = "4m"
#: Incompressible, so that git's pack is as large: four times the tmpfs.
BIG_FILE_BYTES = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images):
    with running_hub(
        tmp_path_factory.mktemp("faults-hub"),
        [f"--DockerBuilder.build_tmpfs_size={TMPFS_SIZE}"],
    ) as info:
        yield info
        # What the tests' own clean-up missed (a failed test): this hub's images only.
        names = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        for name in names:
            if name.startswith(info.image_prefix):
                docker("rmi", "-f", name, check=False)


@pytest.fixture(scope="module")
async def admin(hub):
    user = await utils.HubUser.login(hub, "admin")
    yield user
    try:
        r = await user.api("GET", "api/environments")
        if r.status_code == 200:
            for env in r.json()["environments"]:
                if env["status"] not in FINAL:
                    await user.api("POST", f"api/environments/{env['uid']}/cancel")
                await user.delete_env(env["uid"])
                for container in build_containers(env["uid"]):
                    docker("rm", "-f", container, check=False)
    finally:
        await user.close()


def service_pids(hub):
    result = subprocess.run(
        ["pgrep", "-f", f"tljh_repo2docker --port={hub.service_port}"],
        capture_output=True,
        text=True,
    )
    return sorted(int(pid) for pid in result.stdout.split())


def running(container_id):
    result = docker("inspect", "-f", "{{.State.Running}}", container_id, check=False)
    return result.stdout.strip() == "true"


async def test_full_disk_fails_the_build_clearly(hub, admin, git_root, git_server):
    """A build that runs out of disk space fails and says so.

    How the full disk is made: the service's ``DockerBuilder.build_tmpfs_size``
    gives every build container a tmpfs of 4 MiB as its ``TMPDIR``, where
    repo2docker clones the repository and writes the build context. The
    repository holds 16 MiB of random bytes, so ``git clone`` hits a real
    ENOSPC from the kernel ("No space left on device"), as it would on a full
    disk. This is the real failure path (the kernel's error, through git and
    repo2docker, to the service) without filling a disk of the shared machine
    or of the shared Docker engine, which the other tests and sessions use.
    A full Docker data root (image layers) fails the same way inside BuildKit
    ("no space left on device" in its error line), and the service's message
    is made from that phrase whichever tool prints it.
    """
    name = f"fulldisk-{token()}"
    make_repo(
        git_root,
        name,
        {
            "Dockerfile": dockerfile("RUN echo never-built"),
            "big.bin": os.urandom(BIG_FILE_BYTES),
        },
    )
    env = await admin.create_env({"repo": git_server.url(name), "name": name})
    uid = env["uid"]
    env = await admin.wait_env(uid, FINAL, timeout=180)

    assert env["status"] == "failed", env
    error = env["error"]
    assert "ran out of disk space" in error, error
    assert "No space left on device" in error, error
    # What failed is named, briefly: one line of git's, not a traceback.
    assert "Traceback" not in error and len(error) < 700, error

    events = await read_events(admin, uid, timeout=30)
    text = log_text(events)
    # The checkout went into the size-limited tmpfs, and that is what filled up.
    assert f"Cloning into '{BUILD_TMPFS_PATH}/" in text, text[-3000:]
    assert "No space left on device" in text, text[-3000:]
    assert events[-1][1] == {"phase": "failed", "message": error}, events[-3:]

    # No half image, no container; the database says the same.
    await wait_for(lambda: not build_containers(uid), timeout=30, what="build container gone")
    assert image_info(env["image_name"]) is None
    assert images_of(uid) == []
    row = stored_environments(hub.db_path)[uid]
    assert row["status"] == "failed" and row["image_id"] is None and row["error"] == error, row
    assert_db_and_docker_agree(hub)


async def test_hub_restart_keeps_the_service_and_the_build(hub, admin, git_root, git_server):
    """JupyterHub stopped with SIGTERM and started again while a build runs.

    What JupyterHub 6.1.1 does with its managed service (checked below, not
    assumed): on SIGTERM its clean-up stops the service (SIGINT, then SIGTERM)
    together with the proxy, and its start-up starts a new service process.
    The service leaves its build container running when it stops, and the new
    process re-attaches to it: the build finishes and is recorded as built.
    """
    ready_name = f"hubrestart-ready-{token()}"
    make_repo(git_root, ready_name, {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo {ready_name}\n"})
    ready = await admin.create_env({"repo": git_server.url(ready_name), "name": ready_name})
    ready = await admin.wait_env(ready["uid"], {"built"}, timeout=180)

    name = f"hubrestart-{token()}"
    make_repo(
        git_root,
        name,
        {"Dockerfile": dockerfile(f"RUN echo start-{name} && sleep 40 && echo end-{name}")},
    )
    env = await admin.create_env({"repo": git_server.url(name), "name": name})
    uid = env["uid"]
    await wait_building(admin, uid, contains=f"start-{name}", timeout=180)
    (container,) = build_containers(uid)

    r = await admin.api("GET", "api/environments")
    assert r.status_code == 200
    before = {e["uid"]: e for e in r.json()["environments"]}
    stored_before = stored_environments(hub.db_path)
    assert before[uid]["status"] == "building"
    old_service = service_pids(hub)
    assert len(old_service) == 1, old_service
    old_hub = hub.proc.pid

    # Stop JupyterHub as an init system would.
    await asyncio.to_thread(stop_hub, hub)
    assert hub.proc.returncode is not None
    # JupyterHub 6.1.1 stopped its managed service with it ...
    await wait_for(lambda: not service_pids(hub), timeout=30, what="service stopped with the hub")
    # ... and the service left the build running, to re-attach to it.
    assert running(container), "the build container must outlive the service"

    # Started again: same configuration, same directory (same databases).
    await asyncio.to_thread(start_hub, hub)
    assert hub.proc.pid != old_hub
    new_service = service_pids(hub)
    assert new_service and new_service != old_service, (old_service, new_service)
    restarted_at = time.monotonic()

    # The service answers through the (new) proxy: to the same browser session
    # (the hub's and the service's cookie secrets live in the directory) and to a token.
    r = await admin.api("GET", "api/environments")
    assert r.status_code == 200, (r.status_code, r.text[:300])
    after = {e["uid"]: e for e in r.json()["environments"]}
    api_token = utils.make_token(hub, "admin", [f"access:services!service={utils.SERVICE}"])
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(
            f"{hub.service_url}api/environments", headers={"Authorization": f"token {api_token}"}
        )
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert {e["uid"] for e in r.json()["environments"]} == set(before)

    # The list of environments is unchanged.
    keys = ("name", "repo", "ref", "image_name", "memory", "cpu")
    assert set(after) == set(before)
    for key_uid, old in before.items():
        assert {k: after[key_uid][k] for k in keys} == {k: old[k] for k in keys}, key_uid
    assert after[ready["uid"]]["status"] == "built"
    stored = stored_environments(hub.db_path)
    assert stored[ready["uid"]] == stored_before[ready["uid"]]

    # The build started before the restart finishes, and is recorded as built.
    env = await admin.wait_env(uid, FINAL, timeout=180)
    assert env["status"] == "built", env
    assert time.monotonic() - restarted_at > 1  # it was still running after the restart
    events = await read_events(admin, uid, timeout=30)
    messages = [data["message"] for _, data in events]
    assert "re-attached after a service restart" in messages, messages[-20:]
    for line in (f"start-{name}", f"end-{name}"):
        printed = [m for m in messages if re.fullmatch(rf"#\d+ [\d.]+ {line}", m)]
        assert len(printed) == 1, (line, messages[-30:])
    ids = [event_id for event_id, _ in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    assert image_info(env["image_name"])["Id"] == stored_environments(hub.db_path)[uid]["image_id"]
    assert_db_and_docker_agree(hub)


async def test_dockerd_restart_mid_build(hub, admin, git_root, git_server):
    """``dockerd`` restarted (SIGTERM, then started again) while a build runs.

    Without ``live-restore`` (the engine here, and Docker's default), stopping
    the engine stops the build container, so the build cannot finish: it must
    end ``failed``, saying that the Docker engine restarted, with the log
    written before the restart kept. The service waits for the engine to
    answer again (``DockerBuilder.engine_wait_timeout``) and then removes the
    stopped build container, so nothing is left behind. With ``live-restore``
    the container keeps running, and the service must follow it to ``built``.
    The engine is started again exactly as ``./dev setup`` starts it
    (:func:`tests.helpers.buildutils.start_dockerd`), and answers before the test ends.
    """
    name = f"dockerd-{token()}"
    make_repo(
        git_root,
        name,
        {"Dockerfile": dockerfile(f"RUN echo start-{name} && sleep 90 && echo end-{name}")},
    )
    env = await admin.create_env({"repo": git_server.url(name), "name": name})
    uid = env["uid"]
    await wait_building(admin, uid, contains=f"start-{name}", timeout=180)
    # Let the service store the log it has (it writes every 0.25 s).
    await asyncio.sleep(1)
    seen = await read_events(admin, uid, follow=False)
    assert any(f"start-{name}" in data["message"] for _, data in seen), log_text(seen)
    live_restore = docker("info", "-f", "{{.LiveRestoreEnabled}}").stdout.strip() == "true"

    with dockerd_restarted_on_exit():
        argv, environ = await asyncio.to_thread(stop_dockerd)
        stopped_at = time.monotonic()
        await asyncio.to_thread(start_dockerd, argv, environ)
        figure(f"\ndockerd: down for {time.monotonic() - stopped_at:.1f} s ({' '.join(argv)})")

    env = await admin.wait_env(uid, FINAL, timeout=300)
    events = await read_events(admin, uid, timeout=30)
    messages = [data["message"] for _, data in events]
    figure(f"dockerd: the build ended {env['status']}: {env['error']}")
    print("\n".join(messages[-8:]))
    # The log written before the restart is kept, as it was.
    assert events[: len(seen)] == seen, (seen[-3:], events[: len(seen)][-3:])
    assert any(m.startswith("lost contact with the Docker engine") for m in messages), messages[-10:]
    if live_restore:
        assert env["status"] == "built", env
        assert any(f"end-{name}" in m for m in messages), messages[-10:]
    else:
        assert env["status"] == "failed", env
        assert "Docker engine restarted" in env["error"], env["error"]
        assert events[-1][1] == {"phase": "failed", "message": env["error"]}
        assert image_info(env["image_name"]) is None
    await wait_for(lambda: not build_containers(uid), timeout=30, what="build container removed")

    # The service works on: health, and a new build.
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(f"{hub.service_url}health")
    assert r.status_code == 200, r.text
    again = f"dockerd-after-{token()}"
    make_repo(git_root, again, {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo {again}\n"})
    new = await admin.create_env({"repo": git_server.url(again), "name": again})
    new = await admin.wait_env(new["uid"], FINAL, timeout=180)
    assert new["status"] == "built", new
    assert image_info(new["image_name"])["Config"]["Labels"]["tljh_repo2docker.uid"] == new["uid"]
    assert_db_and_docker_agree(hub)
