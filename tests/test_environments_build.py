"""Building environments through the service: the whole life of a build.

Everything is real: JupyterHub and its proxy, this service as a managed
service, the Docker engine, repo2docker in its container and a git server on
127.0.0.1. Each test makes its own repositories (Dockerfiles on the
single-user test image, never cached by BuildKit: see ``dockerfile``) and
environments with names unique to the run, since other test sessions may
share the Docker engine.

Builds that must be caught while running use ``RUN sleep``. A repository
with only ``requirements.txt`` cannot build on these offline machines
(repo2docker cannot download its conda packages), which makes it a real,
repeatable failure.
"""

import asyncio
import json
from datetime import datetime

import pytest

from tests.helpers.buildutils import (
    FINAL,
    build_containers,
    build_containers_gone,
    docker,
    dockerfile,
    image_info,
    images_of,
    log_text,
    read_events,
    token,
    wait_building,
    wait_for,
)
from tests.helpers.fixtures import add
from tests.helpers.gitserver import add_commit, head_commit, make_repo
from tests.helpers.utils import SECRET_PASSWORD, admin_api, assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def iso(value):
    assert isinstance(value, str) and value.endswith("Z"), value
    return datetime.fromisoformat(value)


# The fixtures repo and envs are in tests/helpers/fixtures.py.


# -- 1. status flow, fields and image labels ------------------------------------


async def test_build_status_flow_fields_and_labels(admin, envs, repo, git_root):
    name, url = repo({"Dockerfile": dockerfile("RUN echo status-flow && sleep 2")})
    display_name = f"Flow {token()}"
    env = await add(
        admin,
        envs,
        {
            "repo": url,
            "name": display_name,
            "memory": "512M",
            "cpu": "0.5",
            "node_selector": {"gpu": "yes"},
        },
    )
    uid = env["uid"]
    assert env["status"] == "queued"
    assert env["started"] is None and env["finished"] is None
    assert "/flow-" in env["image_name"] and env["image_name"].endswith(":HEAD")

    seen = ["queued"]
    while seen[-1] not in FINAL:
        status = (await admin.get_env(uid))["status"]
        if status != seen[-1]:
            seen.append(status)
        await asyncio.sleep(0.1)
    # queued may already be over at the first poll, but nothing else shows.
    assert seen in (["queued", "building", "built"], ["queued", "queued", "building", "built"]), seen

    env = await admin.get_env(uid)
    assert env["status"] == "built" and env["error"] is None
    assert iso(env["created"]) <= iso(env["started"]) <= iso(env["finished"])
    assert env["commit"] == head_commit(git_root, name)
    image = image_info(env["image_name"])
    assert image is not None
    assert env["size"] == image["Size"] > 0
    labels = image["Config"]["Labels"]
    assert labels["tljh_repo2docker.uid"] == uid
    assert labels["tljh_repo2docker.display_name"] == display_name
    assert labels["tljh_repo2docker.mem_limit"] == "512M"
    assert float(labels["tljh_repo2docker.cpu_limit"]) == 0.5
    assert json.loads(labels["tljh_repo2docker.node_selector"]) == {"gpu": "yes"}
    assert labels["tljh_repo2docker.owner"] == "admin"
    assert build_containers_gone(uid)

    # The stored log tells the same story.
    events = await read_events(admin, uid)
    phases = [data["phase"] for _, data in events]
    assert phases[0] == "status" and events[0][1]["message"].startswith("queued")
    assert events[1][1] == {"phase": "status", "message": "building"}
    assert phases[-1] == "built"
    assert "status-flow" in log_text(events)


# -- 2. logs over Server-Sent Events --------------------------------------------


async def test_logs_resume_replay_fan_out_and_need_admin(admin, alice, bob, envs, repo):
    lines = "; ".join(f"echo sse-line-{i}; sleep 0.3" for i in range(12))
    _, url = repo({"Dockerfile": dockerfile(f"RUN {lines}")})
    env = await add(admin, envs, {"repo": url})
    uid = env["uid"]

    # Two clients follow the whole build; a third leaves after 3 events
    # and comes back with Last-Event-ID.
    whole_a = asyncio.ensure_future(read_events(admin, uid))
    whole_b = asyncio.ensure_future(read_events(bob, uid))
    first_part = await read_events(admin, uid, stop_after=3)
    assert len(first_part) == 3
    await wait_building(admin, uid, contains="sse-line-2")
    second_part = await read_events(admin, uid, last_event_id=first_part[-1][0])
    whole_a, whole_b = await whole_a, await whole_b

    assert whole_a[-1][1]["phase"] == "built", log_text(whole_a)[-2000:]
    ids = [event_id for event_id, _ in whole_a]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(set(ids)), "ids must strictly increase"
    # Resuming loses nothing and repeats nothing.
    assert first_part + second_part == whole_a
    # Two clients of one build see the same events.
    assert whole_b == whole_a
    text = log_text(whole_a)
    for i in range(12):
        assert f"sse-line-{i}" in text

    # A finished build replays its stored log, from the start or from an id.
    assert await read_events(admin, uid) == whole_a
    middle = ids[len(ids) // 2]
    assert await read_events(admin, uid, last_event_id=middle) == [
        e for e in whole_a if e[0] > middle
    ]
    assert await read_events(admin, uid, last_event_id=ids[-1], timeout=10) == []

    # Plain users may not read build logs.
    r = await alice.api("GET", f"api/environments/{uid}/logs")
    assert_json_error(r, 403)
    r = await admin.api("GET", f"api/environments/{uid}/logs", headers={"Last-Event-ID": "x"})
    assert_json_error(r, 400, "Last-Event-ID")


# -- 7. a build that fails ------------------------------------------------------


async def test_failed_build_leaves_nothing_behind(admin, envs, repo):
    _, url = repo({"requirements.txt": "numpy\n"})
    env = await add(admin, envs, {"repo": url})
    uid = env["uid"]
    env = await admin.wait_env(uid, FINAL, timeout=240)
    assert env["status"] == "failed", env
    assert env["error"] and "repo2docker exited with code" in env["error"], env["error"]
    assert env["finished"] and env["size"] is None
    events = await read_events(admin, uid)
    assert events[-1][1]["phase"] == "failed"
    assert events[-1][1]["message"] == env["error"]
    # The log holds what went wrong, not just the verdict.
    assert len([e for e in events if e[1]["phase"] == "log"]) > 3
    assert image_info(env["image_name"]) is None
    assert images_of(uid) == []
    assert build_containers_gone(uid)

    # Plain users do not see environments that have no image.
    r = await admin.api("GET", "api/environments")
    assert uid in {e["uid"] for e in r.json()["environments"]}


async def test_failing_dockerfile_step(admin, alice, envs, repo):
    _, url = repo({"Dockerfile": dockerfile("RUN echo about-to-fail && exit 3")})
    env = await add(admin, envs, {"repo": url})
    env = await admin.wait_env(env["uid"], FINAL)
    assert env["status"] == "failed"
    assert "exited with code" in env["error"]
    events = await read_events(admin, env["uid"])
    assert "about-to-fail" in log_text(events)
    assert "exit code: 3" in log_text(events) or "exit 3" in log_text(events)
    assert image_info(env["image_name"]) is None
    assert images_of(env["uid"]) == []
    assert build_containers_gone(env["uid"])
    r = await alice.api("GET", "api/environments")
    assert env["uid"] not in {e["uid"] for e in r.json()["environments"]}
    assert_json_error(await alice.api("GET", f"api/environments/{env['uid']}"), 404)


# -- 3 and 4. the queue, and cancelling -----------------------------------------


async def test_queue_position_and_cancel(admin, envs, repo, built_env):
    # The hub runs the service with max_concurrent_builds=2: two slow builds
    # run, the third waits.
    slow = [repo({"Dockerfile": dockerfile("RUN echo slow-start && sleep 60")})[1] for _ in range(3)]
    first = await add(admin, envs, {"repo": slow[0]})
    second = await add(admin, envs, {"repo": slow[1]})
    third = await add(admin, envs, {"repo": slow[2]})
    await wait_building(admin, first["uid"], contains="sleep 60")
    await wait_building(admin, second["uid"])
    queued = await admin.get_env(third["uid"])
    assert queued["status"] == "queued" and queued["position"] == 1, queued
    listed = {e["uid"]: e for e in (await admin.api("GET", "api/environments")).json()["environments"]}
    assert listed[third["uid"]]["position"] == 1
    assert listed[first["uid"]]["position"] is None

    # Cancel the queued one: it never starts.
    r = await admin.api("POST", f"api/environments/{third['uid']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["position"] is None
    assert build_containers_gone(third["uid"])

    # Cancel a running one mid-build.
    uid = first["uid"]
    assert build_containers(uid)
    r = await admin.api("POST", f"api/environments/{uid}/cancel")
    assert r.status_code == 200, r.text
    env = r.json()
    assert env["status"] == "cancelled", env
    assert env["finished"]
    assert build_containers_gone(uid)
    assert image_info(env["image_name"]) is None
    assert images_of(uid) == []
    events = await read_events(admin, uid)
    assert events[-1][1]["phase"] == "cancelled"

    # The freed slot is not given to the cancelled queued build.
    assert (await admin.get_env(third["uid"]))["status"] == "cancelled"

    # Nothing left to cancel: 409.
    for target in (uid, third["uid"], built_env["uid"]):
        r = await admin.api("POST", f"api/environments/{target}/cancel")
        assert_json_error(r, 409, "nothing to cancel")

    r = await admin.api("POST", f"api/environments/{second['uid']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert build_containers_gone(second["uid"])
    assert image_info(second["image_name"]) is None


# -- 5. rebuilding --------------------------------------------------------------


async def test_rebuild_replaces_the_image_only_when_it_succeeds(admin, envs, repo, git_root):
    name, url = repo({"Dockerfile": dockerfile("RUN echo version-1")})
    env = await add(admin, envs, {"repo": url, "ref": "main"})
    uid = env["uid"]
    env = await admin.wait_env(uid, FINAL)
    assert env["status"] == "built", env
    first_commit = env["commit"]
    assert first_commit == head_commit(git_root, name)
    first_image = image_info(env["image_name"])["Id"]

    second_commit = add_commit(
        git_root, name, {"Dockerfile": dockerfile("RUN echo version-2 && sleep 4")}
    )
    r = await admin.api("POST", f"api/environments/{uid}/rebuild")
    assert r.status_code == 202, r.text
    assert r.json()["uid"] == uid and r.json()["status"] == "queued"
    assert r.json()["build_number"] == 2
    # A second rebuild while this one runs is refused.
    assert_json_error(await admin.api("POST", f"api/environments/{uid}/rebuild"), 409)

    await wait_building(admin, uid, contains="version-2")
    # Until the new image exists, the previous one is there and in use.
    assert image_info(env["image_name"])["Id"] == first_image
    assert_json_error(await admin.api("POST", f"api/environments/{uid}/rebuild"), 409)

    env = await admin.wait_env(uid, FINAL)
    assert env["status"] == "built", env
    assert env["uid"] == uid
    assert env["commit"] == second_commit != first_commit
    second_image = image_info(env["image_name"])["Id"]
    assert second_image != first_image
    # The previous image stays, as version 1 under its own tag.
    repository = env["image_name"].rpartition(":")[0]
    assert image_info(first_image)["RepoTags"] == [f"{repository}:main--v1"]
    assert sorted(images_of(uid)) == sorted([first_image, second_image])
    assert env["size"] == image_info(second_image)["Size"]
    events = await read_events(admin, uid)
    assert "version-2" in log_text(events) and "version-1" not in log_text(events)

    # A failing rebuild keeps the last good image.
    add_commit(git_root, name, {"Dockerfile": dockerfile("RUN exit 3")})
    r = await admin.api("POST", f"api/environments/{uid}/rebuild")
    assert r.status_code == 202, r.text
    env = await admin.wait_env(uid, FINAL)
    assert env["status"] == "failed", env
    assert "previous image is kept" in env["error"], env["error"]
    assert env["commit"] == second_commit
    assert image_info(env["image_name"])["Id"] == second_image
    assert sorted(images_of(uid)) == sorted([first_image, second_image])
    run = docker("run", "--rm", env["image_name"], "python3", "-c", "print('usable')")
    assert run.stdout.strip() == "usable"
    assert build_containers_gone(uid)


# -- 6. deleting ------------------------------------------------------------------


async def test_delete_is_refused_while_a_server_uses_the_image(hub, admin, envs, repo):
    _, url = repo({"Dockerfile": dockerfile()})
    env = await add(admin, envs, {"repo": url})
    uid = env["uid"]
    env = await admin.wait_env(uid, FINAL)
    assert env["status"] == "built", env
    image_id = image_info(env["image_name"])["Id"]
    server = f"srv-{token()}"

    with admin_api(hub) as api:
        path = f"users/admin/servers/{server}"
        r = api.post(path, json={"image": env["image_name"], "environment": uid})
        assert r.status_code in (201, 202), r.text

        def ready():
            model = api.get("users/admin").json()["servers"].get(server) or {}
            assert model.get("pending") in ("spawn", None), model
            return model.get("ready")

        try:
            await wait_for(ready, timeout=120, interval=0.5, what="server ready")
            r = await admin.delete_env(uid)
            assert_json_error(r, 409, f"admin/{server}")
            # Nothing changed, in the database or on the engine.
            assert (await admin.get_env(uid))["status"] == "built"
            assert image_info(env["image_name"])["Id"] == image_id
        finally:
            api.request("DELETE", path, json={"remove": True})
            await wait_for(
                lambda: server not in api.get("users/admin").json()["servers"],
                timeout=60,
                what="server removed",
            )

    r = await admin.delete_env(uid)
    assert r.status_code == 204, r.text
    assert image_info(image_id) is None
    assert_json_error(await admin.api("GET", f"api/environments/{uid}"), 404)
    assert_json_error(await admin.delete_env(uid), 404)


# -- errors keep one shape --------------------------------------------------------


async def test_every_api_error_has_the_same_shape(admin, alice, built_env):
    uid = built_env["uid"]
    cases = [
        (alice, "POST", "api/environments", {"repo": "https://example.org/r.git"}, 403),
        (alice, "POST", f"api/environments/{uid}/rebuild", None, 403),
        (alice, "POST", f"api/environments/{uid}/cancel", None, 403),
        (alice, "DELETE", f"api/environments/{uid}", None, 403),
        (alice, "GET", f"api/environments/{uid}/logs", None, 403),
        (admin, "POST", f"api/environments/{uid}/cancel", None, 409),
        (admin, "POST", "api/environments", {"repo": "https://example.org/r.git", "name": built_env["name"]}, 409),
        (admin, "GET", "api/environments/nope", None, 404),
        (admin, "GET", "api/environments/nope/logs", None, 404),
        (admin, "POST", "api/environments/nope/rebuild", None, 404),
        (admin, "GET", "api/nothing-here", None, 404),
        (admin, "POST", "api/environments", {"repo": 1}, 400),
    ]
    for user, method, path, body, status in cases:
        r = await user.api(method, path, json=body)
        assert_json_error(r, status)


# -- 8. private repositories: the password goes nowhere ---------------------------


async def test_private_repository_builds_and_the_password_leaks_nowhere(
    hub, admin, envs, private_git_root, private_git_server
):
    name = f"p-{token()}"
    # The build runs long enough for the test to see it and inspect its container
    # even on a loaded machine (4 s was not, once, in CI).
    make_repo(
        private_git_root,
        name,
        {"Dockerfile": dockerfile("RUN echo private-build && sleep 12 && echo private-done")},
    )
    url = private_git_server.url(name)
    seen = []  # everything the service said, and what Docker shows

    async def call(method, path, **kwargs):
        r = await admin.api(method, path, **kwargs)
        seen.append(r.text)
        return r

    # Without credentials the clone is refused, and the build fails.
    r = await call("POST", "api/environments", json={"repo": url, "name": f"anon-{token()}"})
    assert r.status_code == 202, r.text
    anonymous = r.json()
    envs.append(anonymous["uid"])
    anonymous = await admin.wait_env(anonymous["uid"], FINAL)
    seen.append(json.dumps(anonymous))
    assert anonymous["status"] == "failed"
    assert anonymous["error"]
    assert image_info(anonymous["image_name"]) is None

    # With them it builds.
    private_git_server.clear()
    body = {"repo": url, "name": f"priv-{token()}", "username": "builder", "password": SECRET_PASSWORD}
    r = await call("POST", "api/environments", json=body)
    assert r.status_code == 202, r.text
    uid = r.json()["uid"]
    envs.append(uid)
    raw_stream = []
    stream = asyncio.ensure_future(read_events(admin, uid, raw=raw_stream))
    await wait_building(admin, uid, contains="private-build")
    (container,) = build_containers(uid)
    inspected = docker("inspect", container).stdout
    config = json.loads(inspected)[0]["Config"]
    seen += [inspected, json.dumps(config["Cmd"]), json.dumps(config["Env"]), json.dumps(config["Labels"])]
    events = await stream
    assert events[-1][1]["phase"] == "built", log_text(events)[-2000:]
    assert "private-done" in log_text(events)
    env = await admin.get_env(uid)
    seen.append(json.dumps(env))
    assert env["status"] == "built"
    assert env["commit"] == head_commit(private_git_root, name)
    assert any(
        record.username == "builder" and record.status == 200
        for record in private_git_server.requests_for(name)
    )
    seen += raw_stream
    seen.append(json.dumps(await read_events(admin, uid)))
    seen.append((await call("GET", "api/environments")).text)
    seen.append((await call("GET", f"api/environments/{uid}")).text)

    # Rebuilding needs the credentials again: they were not kept.
    r = await call("POST", f"api/environments/{uid}/rebuild")
    assert_json_error(r, 400, "password")

    # The image: labels and history.
    seen.append(docker("image", "inspect", env["image_name"]).stdout)
    seen.append(docker("history", "--no-trunc", env["image_name"]).stdout)
    assert build_containers_gone(uid)

    texts = {"API, SSE and Docker": "\n".join(seen)}
    texts["hub and service log"] = (hub.workdir / "jupyterhub.log").read_text(errors="replace")
    for path in sorted(hub.workdir.glob(hub.db_path.name + "*")):
        texts[path.name] = path.read_bytes().decode("latin-1")
    assert hub.db_path.name in texts
    for where, text in texts.items():
        assert SECRET_PASSWORD not in text, f"the password is in the {where}"
    # Sanity: the checks above look at the right things.
    assert "private-build" in texts["API, SSE and Docker"]
    assert uid in texts["hub and service log"]
