"""Rebuild only what changed, end to end: a real hub, real builds of tiny
Dockerfile repositories on the test git server, commits pushed to it.

A user's rebuild of the commit and builder already current makes no version
(200 and a message) unless forced; ``{"version": id}`` rebuilds that
version's commit; with ``rebuild_on: "environment"`` the poller and the
webhook skip pushes that change none of the files repo2docker reads.
"""

import asyncio
import hashlib
import hmac
import json

import httpx
import pytest

from tests.helpers.buildutils import dockerfile, token, wait_for
from tests.helpers.fixtures import running_hub
from tests.helpers.gitserver import add_commit, head_commit, make_repo
from tests.helpers.utils import SERVICE, HubUser, assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]

POLL = 1


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images):
    """This module's hub (it shadows the session's: it polls every second)."""
    args = [f"--ref_poll_interval={POLL}"]
    with running_hub(tmp_path_factory.mktemp("rebuild-unchanged-hub"), extra_service_args=args) as info:
        yield info


@pytest.fixture(scope="module")
async def admin(hub):
    user = await HubUser.login(hub, "admin")
    yield user
    await user.close()


def new_repo(git_root, git_server):
    name = f"unchanged-{token()}"
    make_repo(git_root, name, {"Dockerfile": dockerfile(), "README.md": "hello\n"})
    return name, git_server.url(name)


async def built(user, body):
    env = await user.create_env(body)
    env = await user.wait_env(env["uid"], {"built", "failed"})
    assert env["status"] == "built", env
    return env


async def wait_build(user, uid, number, timeout=300):
    async def done():
        env = await user.get_env(uid)
        return env["build_number"] >= number and env["status"] not in ("queued", "building")

    await wait_for(done, timeout=timeout, interval=0.5, what=f"build {number} of {uid}")
    return await user.get_env(uid)


async def versions_of(user, uid):
    r = await user.api("GET", f"api/environments/{uid}/versions")
    assert r.status_code == 200, r.text
    return r.json()["versions"]


async def test_an_unchanged_rebuild_makes_no_version(admin, git_server, git_root):
    name, url = new_repo(git_root, git_server)
    env = await built(admin, {"repo": url, "name": name, "ref": "main"})
    uid = env["uid"]
    rebuild = f"api/environments/{uid}/rebuild"

    r = await admin.api("POST", rebuild)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert "already built" in answer["message"].lower() and env["commit"][:12] in answer["message"]
    assert answer["build_number"] == 1 and answer["status"] == "built"
    assert len(await versions_of(admin, uid)) == 1

    # Bad bodies: a 400 naming the field, nothing queued.
    for body, field in (
        ({"force": "yes"}, "force"), ({"version": "1"}, "version"), ({"version": True}, "version"),
        ({"bogus": 1}, "bogus"),
    ):
        assert assert_json_error(await admin.api("POST", rebuild, json=body), 400)["field"] == field
    assert assert_json_error(await admin.api("POST", rebuild, json={"version": 10**12}), 404)["field"] == "version"
    assert (await admin.get_env(uid))["build_number"] == 1

    # Forced: built again, a second version at the same commit.
    r = await admin.api("POST", rebuild, json={"force": True})
    assert r.status_code == 202, r.text
    env = await wait_build(admin, uid, 2)
    assert env["status"] == "built", env
    second, first = await versions_of(admin, uid)
    assert second["commit"] == first["commit"] == env["commit"]

    # A new commit is built without force; then version 1's commit again.
    new_commit = add_commit(git_root, name, {"Dockerfile": dockerfile("RUN echo two")})
    r = await admin.api("POST", rebuild)
    assert r.status_code == 202, r.text
    env = await wait_build(admin, uid, 3)
    assert env["status"] == "built" and env["commit"] == new_commit, env
    r = await admin.api("POST", rebuild, json={"version": first["id"]})
    assert r.status_code == 202, r.text
    env = await wait_build(admin, uid, 4)
    assert env["status"] == "built", env
    newest = (await versions_of(admin, uid))[0]
    assert newest["number"] == 4 and newest["commit"] == first["commit"] != new_commit
    assert newest["current"] is True
    # The ref is at the new commit: a plain rebuild builds it.
    r = await admin.api("POST", rebuild)
    assert r.status_code == 202, r.text
    env = await wait_build(admin, uid, 5)
    assert env["commit"] == new_commit


async def test_fields(admin, git_server, git_root):
    _, url = new_repo(git_root, git_server)
    for body, field in (
        ({"rebuild_on": "pushes"}, "rebuild_on"),
        ({"rebuild_on": 1}, "rebuild_on"),
        ({"check_command": "true\nrm -rf /"}, "check_command"),
        ({"check_command": "x" * 1001}, "check_command"),
        ({"check_command": ["python"]}, "check_command"),
        ({"builder_image": "evil/repo2docker:latest"}, "builder_image"),
        ({"builder_image": 3}, "builder_image"),
    ):
        r = await admin.api("POST", "api/environments", json={"repo": url, **body})
        assert assert_json_error(r, 400)["field"] == field, body
    env = await built(admin, {
        "repo": url, "name": f"fields-{token()}", "rebuild_on": "environment",
        "check_command": 'python -c "import sys"',
    })
    assert env["rebuild_on"] == "environment" and env["check_command"] == 'python -c "import sys"'
    assert env["builder_image"] is None
    path = f"api/environments/{env['uid']}"
    r = await admin.api("PATCH", path, json={"check_command": "", "rebuild_on": "any"})
    assert r.status_code == 200, r.text
    assert r.json()["check_command"] is None and r.json()["rebuild_on"] == "any"
    r = await admin.api("PATCH", path, json={"rebuild_on": "sometimes"})
    assert assert_json_error(r, 400)["field"] == "rebuild_on"
    r = await admin.api("PATCH", path, json={"builder_image": "not/allowed:1"})
    assert assert_json_error(r, 400)["field"] == "builder_image"
    assert (await admin.get_env(env["uid"]))["rebuild_on"] == "any"


async def test_rebuild_on_environment_with_the_poller(admin, git_server, git_root):
    name, url = new_repo(git_root, git_server)
    env = await built(admin, {
        "repo": url, "name": name, "auto_rebuild": True, "rebuild_on": "environment",
    })
    uid = env["uid"]
    notebook = add_commit(git_root, name, {"analysis.ipynb": "{}\n"})

    async def skipped():
        env = await admin.get_env(uid)
        return env["remote_commit"] == notebook and (env["remote_error"] or "").startswith("skipped:")

    await wait_for(skipped, timeout=60, what="the notebook push skipped")
    await asyncio.sleep(4 * POLL)
    env = await admin.get_env(uid)
    assert env["build_number"] == 1 and env["status"] == "built", env
    assert "repo2docker reads" in env["remote_error"]

    requirements = add_commit(git_root, name, {"requirements.txt": "\n"})
    env = await wait_build(admin, uid, 2)
    assert env["status"] == "built" and env["commit"] == requirements, env
    assert env["remote_error"] is None


def github(secret, commit):
    payload = {"ref": "refs/heads/main", "after": commit, "repository": {"default_branch": "main"}}
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "X-GitHub-Event": "push", "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }


async def test_rebuild_on_environment_with_the_webhook(admin, hub, git_server, git_root):
    name, url = new_repo(git_root, git_server)
    env = await built(admin, {"repo": url, "name": name, "rebuild_on": "environment"})
    uid = env["uid"]
    r = await admin.api("PUT", f"api/environments/{uid}/webhook")
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]

    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as anonymous:
        async def call(commit):
            return await anonymous.post(
                f"services/{SERVICE}/api/environments/{uid}/webhook", content=github(secret, commit)[0],
                headers=github(secret, commit)[1],
            )

        # The commit already built: nothing to do.
        r = await call(env["commit"])
        assert r.status_code == 200 and r.json()["queued"] is False, r.text
        assert "already built" in r.json()["reason"]
        notebook = add_commit(git_root, name, {"notes/analysis.ipynb": "{}\n"})
        r = await call(notebook)
        assert r.status_code == 200 and r.json()["queued"] is False, r.text
        assert "repo2docker reads" in r.json()["reason"]
        env = await admin.get_env(uid)
        assert env["build_number"] == 1 and env["remote_error"].startswith("skipped:")
        assert env["remote_commit"] == notebook

        dockerfile_commit = add_commit(git_root, name, {"Dockerfile": dockerfile("RUN echo changed")})
        r = await call(dockerfile_commit)
        assert r.status_code == 202 and r.json() == {"queued": True}, r.text
        env = await wait_build(admin, uid, 2)
        assert env["status"] == "built" and env["commit"] == dockerfile_commit, env
    assert head_commit(git_root, name) == dockerfile_commit
    log = (hub.workdir / "jupyterhub.log").read_text()
    assert secret not in log
