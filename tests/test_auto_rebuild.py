"""Rebuilds when the repository changes: the ref poller and the push webhook, end to end.

One hub for the module (the README's configuration with ``ref_poll_interval``
of 1 s and a small ``webhook_rate_limit``), real builds with repo2docker of
tiny Dockerfile repositories on the test git server, commits pushed to it.
Webhook calls go through the proxy with no login, as GitHub's and GitLab's do.
"""

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import sqlite3
import uuid

import httpx
import pytest

from tests.helpers.buildutils import dockerfile, token, wait_for
from tests.helpers.fixtures import running_hub
from tests.helpers.gitserver import add_commit, head_commit, make_repo
from tests.helpers.utils import SECRET_PASSWORD, SERVICE, HubUser, assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]

POLL = 1
RATE = 20
REFUSED = {"status": 403, "message": "Forbidden"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images):
    """This module's hub (it shadows the session's: it polls every second)."""
    args = [f"--ref_poll_interval={POLL}", f"--webhook_rate_limit={RATE}"]
    with running_hub(tmp_path_factory.mktemp("auto-rebuild-hub"), extra_service_args=args) as info:
        yield info


@pytest.fixture(scope="module")
async def admin(hub):
    user = await HubUser.login(hub, "admin")
    yield user
    await user.close()


@pytest.fixture(scope="module")
async def alice(hub):
    user = await HubUser.login(hub, "alice")
    yield user
    await user.close()


@pytest.fixture(scope="module")
async def anonymous(hub):
    """A client with no login at all: what a git host is."""
    async with httpx.AsyncClient(base_url=hub.url, timeout=60, follow_redirects=False) as client:
        yield client


def db_rows(hub, uid):
    with contextlib.closing(sqlite3.connect(f"file:{hub.db_path}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM environments WHERE uid = ?", (uid,)).fetchone())


def repo_with(git_root, git_server, *lines):
    name = f"auto-{token()}"
    make_repo(git_root, name, {"Dockerfile": dockerfile(*lines)})
    return name, git_server.url(name)


async def built(user, body):
    env = await user.create_env(body)
    env = await user.wait_env(env["uid"], {"built", "failed"})
    assert env["status"] == "built", env
    return env


async def wait_build(user, uid, number, timeout=300):
    """The environment once build ``number`` of it has ended."""

    async def done():
        env = await user.get_env(uid)
        return env["build_number"] >= number and env["status"] not in ("queued", "building")

    await wait_for(done, timeout=timeout, interval=0.5, what=f"build {number} of {uid}")
    return await user.get_env(uid)


# -- auto_rebuild, the field --------------------------------------------------


async def test_auto_rebuild_field(admin, alice, git_server, git_root, hub):
    _, url = repo_with(git_root, git_server)
    r = await admin.api("POST", "api/environments", json={"repo": url, "auto_rebuild": "yes"})
    body = assert_json_error(r, 400)
    assert body["field"] == "auto_rebuild"
    env = await built(admin, {"repo": url, "name": f"field-{token()}"})
    assert env["auto_rebuild"] is False and env["webhook"] is False
    for bad in ("true", 1, None, [], {}):
        r = await admin.api("PATCH", f"api/environments/{env['uid']}", json={"auto_rebuild": bad})
        if bad is None:
            assert r.status_code == 200  # null: off
            continue
        assert assert_json_error(r, 400)["field"] == "auto_rebuild", bad
    r = await admin.api("PATCH", f"api/environments/{env['uid']}", json={"auto_rebuild": True})
    assert r.status_code == 200, r.text
    assert r.json()["auto_rebuild"] is True
    # a user it is shared with sees auto_rebuild, not what the poller saw
    seen = await alice.get_env(env["uid"])
    assert seen["auto_rebuild"] is True
    for private in ("remote_commit", "remote_checked", "remote_error", "webhook"):
        assert private not in seen
    # and may not change it, nor enable the webhook
    r = await alice.api("PATCH", f"api/environments/{env['uid']}", json={"auto_rebuild": False})
    assert_json_error(r, 403)
    r = await alice.api("PUT", f"api/environments/{env['uid']}/webhook")
    assert_json_error(r, 403)
    r = await admin.api("PATCH", f"api/environments/{env['uid']}", json={"auto_rebuild": False})
    assert r.status_code == 200 and r.json()["auto_rebuild"] is False


async def test_private_repositories_cannot_be_rebuilt_alone(
    admin, hub, private_git_server, private_git_root
):
    name = f"auto-private-{token()}"
    make_repo(private_git_root, name, {"Dockerfile": dockerfile()})
    credentials = {"username": "builder", "password": SECRET_PASSWORD}
    body = {"repo": private_git_server.url(name), "name": name, **credentials}
    before = sqlite_count(hub)
    r = await admin.api("POST", "api/environments", json={**body, "auto_rebuild": True})
    assert "private" in assert_json_error(r, 400)["message"]
    assert sqlite_count(hub) == before  # nothing half-stored
    env = await admin.create_env(body)
    r = await admin.api("PUT", f"api/environments/{env['uid']}/webhook")
    assert "private" in assert_json_error(r, 409)["message"]
    r = await admin.api("PATCH", f"api/environments/{env['uid']}", json={"auto_rebuild": True})
    assert assert_json_error(r, 400)["field"] == "auto_rebuild"
    await admin.wait_env(env["uid"], {"built", "failed"})
    assert db_rows(hub, env["uid"])["webhook_secret_hash"] is None


def sqlite_count(hub):
    with contextlib.closing(sqlite3.connect(f"file:{hub.db_path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT count(*) FROM environments").fetchone()[0]


# -- the poller -----------------------------------------------------------------


async def test_a_push_alone_rebuilds(admin, git_server, git_root):
    name, url = repo_with(git_root, git_server)
    env = await built(admin, {"repo": url, "name": name, "auto_rebuild": True})
    first = env["commit"]
    assert first == head_commit(git_root, name)

    # The ref does not move: checked every second, never rebuilt.
    async def checked_twice():
        env = await admin.get_env(env_uid)
        return env["remote_checked"] is not None and env["remote_commit"] == first

    env_uid = env["uid"]
    await wait_for(checked_twice, timeout=30, what="a first check")
    checked = (await admin.get_env(env_uid))["remote_checked"]
    await asyncio.sleep(5 * POLL)
    env = await admin.get_env(env_uid)
    assert env["build_number"] == 1 and env["status"] == "built"
    assert env["remote_checked"] > checked and env["remote_error"] is None

    second = add_commit(git_root, name, {"README": "a change"})
    env = await wait_build(admin, env_uid, 2)
    assert env["status"] == "built", env
    assert env["commit"] == second != first
    assert env["remote_commit"] == second
    # The poll's build is a version of its own, recorded as the poll's.
    r = await admin.api("GET", f"api/environments/{env_uid}/versions")
    versions = r.json()["versions"]
    assert [(v["commit"], v["reason"], v["current"]) for v in versions] == [
        (second, "poll", True), (first, "request", False)
    ], versions
    assert versions[0]["built_by"] is None
    await asyncio.sleep(4 * POLL)
    assert (await admin.get_env(env_uid))["build_number"] == 2  # built: nothing more to do


async def test_a_failed_rebuild_is_not_retried_for_the_same_commit(admin, git_server, git_root):
    name, url = repo_with(git_root, git_server)
    env = await built(admin, {"repo": url, "name": name, "auto_rebuild": True})
    bad = add_commit(git_root, name, {"Dockerfile": dockerfile("RUN false")})
    env = await wait_build(admin, env["uid"], 2)
    assert env["status"] == "failed" and env["remote_commit"] == bad, env
    await asyncio.sleep(6 * POLL)
    env = await admin.get_env(env["uid"])
    assert env["build_number"] == 2 and env["status"] == "failed", env
    good = add_commit(git_root, name, {"Dockerfile": dockerfile()})
    env = await wait_build(admin, env["uid"], 3)
    assert env["status"] == "built" and env["commit"] == good, env


# -- the webhook --------------------------------------------------------------------


def github(secret, payload, event="push"):
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": event,
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
    }
    return body, headers


def gitlab(secret, payload, event="Push Hook"):
    headers = {"X-Gitlab-Event": event, "X-Gitlab-Token": secret, "Content-Type": "application/json"}
    return json.dumps(payload).encode(), headers


def push(ref, after, default_branch="main"):
    return {"ref": ref, "after": after, "repository": {"default_branch": default_branch},
            "project": {"default_branch": default_branch}}


async def call(anonymous, uid, body, headers):
    r = await anonymous.post(
        f"services/{SERVICE}/api/environments/{uid}/webhook", content=body, headers=headers
    )
    assert "set-cookie" not in r.headers, r.headers
    assert r.status_code not in (301, 302, 303, 307), r.headers  # never to a login page
    return r


def assert_refused(r):
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == REFUSED


async def test_webhook(admin, alice, anonymous, hub, git_server, git_root):
    name, url = repo_with(git_root, git_server)
    env = await built(admin, {"repo": url, "name": name})  # ref HEAD: the default branch
    uid = env["uid"]
    path = f"api/environments/{uid}/webhook"

    r = await admin.api("PUT", path)
    assert r.status_code == 201, r.text
    secret, hook_url = r.json()["secret"], r.json()["url"]
    assert hook_url.startswith(hub.url.rstrip("/")) and hook_url.endswith(f"/{path}")
    r = await admin.api("PUT", path)  # a new secret replaces the old
    assert r.status_code == 201
    old, secret = secret, r.json()["secret"]
    assert old != secret
    assert (await admin.get_env(uid))["webhook"] is True

    # Stored: the salt and a hash only.
    stored = db_rows(hub, uid)
    assert re.fullmatch(r"[0-9a-f]{32}\$[0-9a-f]{64}", stored["webhook_secret_hash"])
    assert secret not in json.dumps(stored, default=str)

    commit = head_commit(git_root, name)
    # Refused alike: the old secret, a bad or missing signature, a wrong token,
    # an unknown uid, a malformed body with a good signature.
    body, headers = github(secret, push("refs/heads/main", commit))
    answers = [
        await call(anonymous, uid, *github(old, push("refs/heads/main", commit))),
        await call(anonymous, uid, body, {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}),
        await call(anonymous, uid, body, {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}),
        await call(anonymous, uid, *gitlab(secret + "x", push("refs/heads/main", commit))),
        await call(anonymous, uuid.uuid4().hex, body, headers),
        await call(anonymous, uid, b"{not json", {
            **headers,
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), b"{not json", hashlib.sha256).hexdigest(),
        }),
    ]
    for r in answers:
        assert_refused(r)
    assert len({r.content for r in answers}) == 1

    # A ping and a push of another ref: accepted, nothing built.
    r = await call(anonymous, uid, *github(secret, {"zen": "hi", "hook_id": 1}, event="ping"))
    assert r.status_code == 200 and r.json() == {"queued": False}, r.text
    r = await call(anonymous, uid, *github(secret, push("refs/heads/other", commit)))
    assert r.status_code == 200 and r.json() == {"queued": False}, r.text
    r = await call(anonymous, uid, *gitlab(secret, push("refs/tags/v1", commit), "Tag Push Hook"))
    assert r.status_code == 200 and r.json() == {"queued": False}, r.text
    await asyncio.sleep(2)
    assert (await admin.get_env(uid))["build_number"] == 1

    # GitHub: a push of the default branch rebuilds.
    second = add_commit(git_root, name, {"README": "second"})
    r = await call(anonymous, uid, *github(secret, push("refs/heads/main", second)))
    assert r.status_code == 202 and r.json() == {"queued": True}, r.text
    r = await call(anonymous, uid, *github(secret, push("refs/heads/main", second)))
    assert r.status_code == 202 and r.json()["queued"] is False, r.text  # one at a time
    env = await wait_build(admin, uid, 2)
    assert env["status"] == "built" and env["commit"] == second, env

    # GitLab's token rebuilds too.
    third = add_commit(git_root, name, {"README": "third"})
    r = await call(anonymous, uid, *gitlab(secret, push("refs/heads/main", third)))
    assert r.status_code == 202 and r.json() == {"queued": True}, r.text
    env = await wait_build(admin, uid, 3)
    assert env["status"] == "built" and env["commit"] == third, env
    r = await admin.api("GET", f"api/environments/{uid}/versions")
    assert [(v["commit"], v["reason"]) for v in r.json()["versions"][:2]] == [
        (third, "webhook"), (second, "webhook")
    ], r.text

    # The secret is never shown again, nor logged.
    for r in (await admin.api("GET", f"api/environments/{uid}"), await admin.api("GET", "api/environments")):
        assert secret not in r.text and old not in r.text
    log = (hub.workdir / "jupyterhub.log").read_text()
    assert secret not in log and old not in log

    # Disabled: refused like anything else.
    r = await alice.api("DELETE", path)
    assert_json_error(r, 403)
    r = await admin.api("DELETE", path)
    assert r.status_code == 204
    assert db_rows(hub, uid)["webhook_secret_hash"] is None
    assert (await admin.get_env(uid))["webhook"] is False
    assert_refused(await call(anonymous, uid, *github(secret, push("refs/heads/main", third))))
    await asyncio.sleep(1)
    assert (await admin.get_env(uid))["build_number"] == 3


async def test_webhook_needs_no_login_but_other_methods_do(anonymous, admin, hub):
    env_path = f"services/{SERVICE}/api/environments/{uuid.uuid4().hex}/webhook"
    for method in ("PUT", "DELETE"):
        r = await anonymous.request(method, env_path)
        assert_json_error(r, 403)


async def test_webhook_is_rate_limited(anonymous):
    """Last in the module: it spends this client address's calls."""
    uid = uuid.uuid4().hex
    statuses = []
    for _ in range(RATE + 5):
        r = await call(anonymous, uid, b"{}", {"X-GitHub-Event": "push"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert_json_error(r, 429)
            break
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {403}
