"""Versions and rollback end to end: every build a version, history, rollback.

Real JupyterHub with its proxy, the service, the Docker engine, repo2docker
and the git server (see tests/helpers/fixtures.py). One environment lives through
two builds, servers on each version, a rollback and a refused one; servers
are alice's (the environment is the admin's, shared with everyone).
"""

import re

import pytest

from tests.helpers.buildutils import FINAL, dockerfile, image_info, wait_building
from tests.helpers.fixtures import add
from tests.helpers.gitserver import add_commit, head_commit
from tests.helpers.servers import container, wait_server
from tests.helpers.utils import assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]


async def versions_of(user, uid):
    r = await user.api("GET", f"api/environments/{uid}/versions")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["versions"]


async def start(user, name, env):
    r = await user.api("POST", "api/servers", json={"name": name, "environment": env["name"]})
    assert r.status_code == 202, r.text
    return await wait_server(user, name)


async def remove(user, name):
    await user.api("DELETE", f"api/servers/{name}", params={"remove": "true"})
    await wait_server(user, name, "absent")


async def server_model(user, name):
    r = await user.api("GET", "api/servers")
    assert r.status_code == 200, r.text
    return next(s for s in r.json()["servers"] if s["name"] == name)


async def test_history_rollback_and_servers(hub, admin, alice, envs, repo, git_root, built_env):
    name, url = repo({"Dockerfile": dockerfile("RUN echo version-1 > /tmp/v")})
    env = await add(admin, envs, {"repo": url, "ref": "main"})
    uid = env["uid"]
    env = await admin.wait_env(uid, FINAL)
    assert env["status"] == "built", env
    first_commit = head_commit(git_root, name)

    [v1] = await versions_of(admin, uid)
    assert v1["number"] == 1 and v1["current"] is True and v1["servers"] == 0
    assert v1["commit"] == first_commit == env["commit"]
    assert v1["image_id"] == env["image_id"] == image_info(env["image_name"])["Id"]
    assert v1["built_by"] == "admin" and v1["reason"] == "request"
    assert v1["size"] == env["size"] and v1["duration"] > 0
    # Those who only use the environment see its history, not who built it.
    [seen] = await versions_of(alice, uid)
    assert seen["id"] == v1["id"] and seen["built_by"] is None

    servers = []
    try:
        servers.append("ver-a")
        await start(alice, "ver-a", env)
        assert container("alice", "ver-a")["Image"] == v1["image_id"]

        # A new commit, rebuilt: two versions, newest first.
        second_commit = add_commit(git_root, name, {"Dockerfile": dockerfile("RUN echo version-2")})
        r = await admin.api("POST", f"api/environments/{uid}/rebuild")
        assert r.status_code == 202, r.text
        env = await admin.wait_env(uid, FINAL)
        assert env["status"] == "built", env
        v2, old = await versions_of(admin, uid)
        assert old["id"] == v1["id"] and [v2["number"], old["number"]] == [2, 1]
        assert v2["commit"] == second_commit != first_commit
        assert v2["image_id"] != v1["image_id"]
        assert [v2["current"], old["current"]] == [True, False]
        assert env["image_id"] == v2["image_id"]
        # alice's server still runs version 1: its container counts there.
        assert [v2["servers"], old["servers"]] == [0, 1]
        model = await server_model(alice, "ver-a")
        assert model["outdated"] is True and model["version"] == 1
        assert model["newer_version"] is True

        servers.append("ver-c")
        await start(alice, "ver-c", env)
        assert container("alice", "ver-c")["Image"] == v2["image_id"]

        # Refused rollbacks, each naming what is wrong.
        rollback = f"api/environments/{uid}/rollback"
        for body in ({}, {"version": "1"}, {"version": True}, {"version": 1.5}, {"version": None}):
            r = await admin.api("POST", rollback, json=body)
            assert_json_error(r, 400, "version: ")
            assert r.json()["field"] == "version"
        assert_json_error(await admin.api("POST", rollback, json={"version": 10**9}), 404, "version: ")
        [other] = await versions_of(admin, built_env["uid"])
        r = await admin.api("POST", rollback, json={"version": other["id"]})
        assert_json_error(r, 404, "version: no version")
        assert_json_error(await alice.api("POST", rollback, json={"version": v1["id"]}), 403)
        assert_json_error(
            await admin.api("POST", "api/environments/no-such-env/rollback", json={"version": 1}),
            404,
        )
        # Those it is not shared with are told it does not exist.
        r = await admin.api(
            "PATCH", f"api/environments/{uid}", json={"sharing": {"everyone": False}}
        )
        assert r.status_code == 200, r.text
        assert_json_error(await alice.api("GET", f"api/environments/{uid}/versions"), 404)
        assert_json_error(await alice.api("POST", rollback, json={"version": v1["id"]}), 404)
        r = await admin.api("PATCH", f"api/environments/{uid}", json={"sharing": {"everyone": True}})
        assert r.status_code == 200, r.text
        assert (await admin.get_env(uid))["image_id"] == v2["image_id"]

        # Roll back to version 1.
        r = await admin.api("POST", rollback, json={"version": v1["id"]})
        assert r.status_code == 200, r.text
        rolled = r.json()
        assert rolled["status"] == "built" and rolled["version"] == v1["id"]
        assert rolled["image_id"] == v1["image_id"]
        assert rolled["commit"] == first_commit and rolled["size"] == v1["size"]
        assert rolled["image_name"] == env["image_name"]
        assert image_info(env["image_name"])["Id"] == v1["image_id"]
        v2_now, v1_now = await versions_of(admin, uid)
        assert [v2_now["current"], v1_now["current"]] == [False, True]

        # A new server starts from version 1; the one on version 2 keeps its image.
        servers.append("ver-b")
        await start(alice, "ver-b", await admin.get_env(uid))
        assert container("alice", "ver-b")["Image"] == v1["image_id"]
        assert container("alice", "ver-c")["Image"] == v2["image_id"]
        model = await server_model(alice, "ver-c")
        assert model["outdated"] is True and model["version"] == 2
        assert model["newer_version"] is False
        model = await server_model(alice, "ver-b")
        assert model["outdated"] is False and model["version"] == 1
        assert model["newer_version"] is True
        v2_now, v1_now = await versions_of(admin, uid)
        assert [v2_now["servers"], v1_now["servers"]] == [1, 2]

        # The Servers page carries the script that shows the hint.
        r = await alice.api("GET", "servers")
        assert r.status_code == 200 and "servers.js" in r.text

        # Version tags are never offered as environments by the spawner.
        r = await alice.client.get("hub/spawn/alice/verform")
        assert r.status_code == 200
        offered = re.findall(r'name="image"[^>]*value="([^"]+)"', r.text) or re.findall(
            r'value="([^"]+)"[^>]*name="image"', r.text
        )
        assert env["image_name"] in offered, offered
        assert not [o for o in offered if re.search(r"--v[0-9]+$", o)], offered
        repository = env["image_name"].rpartition(":")[0]
        assert f"{repository}:main--v1" in image_info(v1["image_id"])["RepoTags"]

        # A version can be made current again: roll forward to version 2.
        r = await admin.api("POST", rollback, json={"version": v2["id"]})
        assert r.status_code == 200, r.text
        assert r.json()["image_id"] == v2["image_id"]
        assert image_info(env["image_name"])["Id"] == v2["image_id"]

        # While a build is queued or running, a rollback is refused.
        add_commit(git_root, name, {"Dockerfile": dockerfile("RUN sleep 60")})
        r = await admin.api("POST", f"api/environments/{uid}/rebuild")
        assert r.status_code == 202, r.text
        await wait_building(admin, uid)
        assert_json_error(await admin.api("POST", rollback, json={"version": v1["id"]}), 409)
        r = await admin.api("POST", f"api/environments/{uid}/cancel")
        assert r.status_code == 200, r.text
        env = await admin.wait_env(uid, FINAL)
        assert env["image_id"] == v2["image_id"]
        assert len(await versions_of(admin, uid)) == 2
    finally:
        for server in servers:
            await remove(alice, server)


async def test_rollback_to_a_version_whose_image_is_gone(admin, envs, repo, git_root):
    name, url = repo({"Dockerfile": dockerfile()})
    env = await add(admin, envs, {"repo": url, "ref": "main"})
    env = await admin.wait_env(env["uid"], FINAL)
    assert env["status"] == "built", env
    add_commit(git_root, name, {"Dockerfile": dockerfile("RUN echo two")})
    r = await admin.api("POST", f"api/environments/{env['uid']}/rebuild")
    assert r.status_code == 202, r.text
    env = await admin.wait_env(env["uid"], FINAL)
    assert env["status"] == "built", env
    current, old = await versions_of(admin, env["uid"])
    # Someone removes version 1's image behind the service's back.
    from tests.helpers.buildutils import docker

    docker("image", "rm", old["image_name"])
    assert image_info(old["image_id"]) is None
    r = await admin.api(
        "POST", f"api/environments/{env['uid']}/rollback", json={"version": old["id"]}
    )
    assert_json_error(r, 409, "is gone")
    assert r.json()["field"] == "version"
    # Taken out of the history; the environment is unchanged.
    assert [v["id"] for v in await versions_of(admin, env["uid"])] == [current["id"]]
    assert (await admin.get_env(env["uid"]))["image_id"] == current["image_id"]
