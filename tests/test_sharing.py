"""Builders own and share environments; who may see, use and manage one; builders' quotas.

One hub for the module (the README's configuration, plus quotas small enough
to reach and a short group cache), environments built from the tiny
Dockerfile repositories. The callers:

- ``sh-owner``: a builder (build scope) who adds a private environment and
  shares it with ``sh-friend`` (by name) and the group ``sh-team``;
- ``sh-member``: in ``sh-team``; ``sh-stranger``: a plain user in no group;
- ``sh-builder``: a builder it is not shared with;
- ``admin`` (hub admin) and ``bob`` (the admin scope);
- API tokens with and without the build scope.
"""

import asyncio
import time

import httpx
import pytest

from tests.helpers.buildutils import dockerfile, token, wait_for
from tests.helpers.fixtures import running_hub
from tests.helpers.gitserver import make_repo
from tests.helpers.utils import SERVICE, HubUser, admin_api, assert_json_error, make_token
from tljh_repo2docker import TLJH_R2D_BUILD_SCOPE

pytestmark = [pytest.mark.hub, pytest.mark.docker]

ACCESS = f"access:services!service={SERVICE}"
USERS = ["sh-owner", "sh-friend", "sh-member", "sh-stranger", "sh-builder", "sh-quota", "sh-quota2"]
GROUP = "sh-team"
CACHE_SECONDS = 2


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images):
    """This module's hub (it shadows the session's: the quotas are its own)."""
    args = [
        f"--HubClient.groups_cache_seconds={CACHE_SECONDS}",
        "--environments_per_user=2",
        "--builds_per_user=1",
        "--image_size_per_user=10M",
    ]
    with running_hub(tmp_path_factory.mktemp("sharing-hub"), extra_service_args=args) as info:
        with admin_api(info) as api:
            r = api.post("users", json={"usernames": USERS})
            assert r.status_code in (201, 409), r.text
            assert api.post(f"groups/{GROUP}").status_code in (201, 409)
            r = api.post(f"groups/{GROUP}/users", json={"users": ["sh-member"]})
            assert r.status_code == 200, r.text
        yield info


@pytest.fixture(scope="module")
async def callers(hub):
    names = ["sh-owner", "sh-friend", "sh-member", "sh-stranger", "sh-builder", "admin", "bob"]
    users = {name: await HubUser.login(hub, name) for name in names}
    yield users
    for user in users.values():
        await user.close()


@pytest.fixture(scope="module")
async def shared_env(hub, callers, git_server, git_root):
    """sh-owner's environment, built, shared with sh-friend and the group sh-team."""
    owner = callers["sh-owner"]
    name = f"sh-env-{token()}"
    make_repo(git_root, name, {"Dockerfile": dockerfile()})
    env = await owner.create_env({"repo": git_server.url(name), "name": name})
    assert env["owner"] == "sh-owner"
    assert env["sharing"] == {"everyone": False, "users": [], "groups": []}  # a builder's: private
    env = await owner.wait_env(env["uid"], {"built", "failed"})
    assert env["status"] == "built", env
    r = await owner.api(
        "PATCH", f"api/environments/{env['uid']}",
        json={"sharing": {"users": ["sh-friend"], "groups": [GROUP]}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["sharing"] == {"everyone": False, "users": ["sh-friend"], "groups": [GROUP]}
    return r.json()


async def listed(user, uid):
    r = await user.api("GET", "api/environments")
    assert r.status_code == 200, r.text
    return uid in {e["uid"] for e in r.json()["environments"]}


# who sees it, and who manages it
SEES = {"sh-owner", "sh-friend", "sh-member", "admin", "bob"}
MANAGES = {"sh-owner", "admin", "bob"}


@pytest.mark.parametrize(
    "who", ["sh-owner", "sh-friend", "sh-member", "sh-stranger", "sh-builder", "admin", "bob"]
)
async def test_matrix_of_environment_routes(callers, shared_env, who):
    user, uid = callers[who], shared_env["uid"]
    sees, manages = who in SEES, who in MANAGES
    assert await listed(user, uid) is sees
    r = await user.api("GET", f"api/environments/{uid}")
    if sees:
        assert r.status_code == 200, r.text
        assert r.json()["owner"] == "sh-owner" and r.json()["sharing"]["groups"] == [GROUP]
    else:
        assert_json_error(r, 404)
    # changes: 404 for those who cannot see it, 403 for those who only use it
    refused = 404 if not sees else 403
    calls = [
        ("POST", f"api/environments/{uid}/rebuild", {}),
        ("DELETE", f"api/environments/{uid}", None),
        ("PATCH", f"api/environments/{uid}", {"sharing": {"everyone": True}}),
    ]
    for method, path, body in [] if manages else calls:  # managers: below, without deleting it
        r = await user.api(method, path, json=body)
        assert_json_error(r, refused)
    r = await user.api("POST", f"api/environments/{uid}/cancel", json={})
    if manages:
        assert_json_error(r, 409, "nothing to cancel")
    else:
        assert_json_error(r, refused)
    async with user.client.stream(
        "GET", user.service_path(f"api/environments/{uid}/logs"), timeout=30
    ) as r:
        if manages:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
        else:
            await r.aread()
            assert_json_error(r, refused)
    if manages:  # the same sharing again: allowed, nothing changes
        r = await user.api("PATCH", f"api/environments/{uid}", json={"sharing": shared_env["sharing"]})
        assert r.status_code == 200, r.text
        assert r.json()["sharing"] == shared_env["sharing"]


@pytest.mark.parametrize("who", ["sh-owner", "sh-friend", "sh-member", "sh-stranger", "sh-builder"])
async def test_servers_page_and_direct_link(callers, shared_env, who):
    user = callers[who]
    r = await user.client.get(user.service_path("servers"))
    assert r.status_code == 200
    assert (shared_env["uid"] in r.text) is (who in SEES)
    if who in SEES:
        return
    # a direct link naming it (by uid or by name) is refused, the page says so
    for ref in (shared_env["uid"], shared_env["name"]):
        r = await user.client.get(
            user.service_path("servers"), params={"name": "sh-link", "environment": ref}
        )
        assert r.status_code == 404, r.status_code
        assert "no environment named" in r.text
    r = await user.api("POST", "api/servers", json={"name": "sh-link", "environment": shared_env["uid"]})
    assert_json_error(r, 404, "no environment named")
    body = assert_json_error(r, 404)
    assert body["field"] == "environment"


async def test_hub_spawn_form_offers_only_usable(callers, shared_env):
    for who in ("sh-member", "sh-stranger"):
        user = callers[who]
        r = await user.client.get(f"hub/spawn/{who}/sh-form")
        assert r.status_code == 200, r.text[:300]
        assert (shared_env["image_name"] in r.text) is (who in SEES), who


async def test_forged_user_options_through_the_hub_api(hub, callers, shared_env):
    """The spawner checks: user_options naming an environment the user may not use are refused."""
    options = {
        "image": shared_env["image_name"],
        "environment": shared_env["uid"],
        "metadata": {"memory": None, "cpu": None, "node_selector": {}},
    }
    stranger_token = make_token(hub, "sh-stranger", ["servers!user=sh-stranger"])
    async with httpx.AsyncClient(base_url=hub.api, timeout=60) as client:
        headers = {"Authorization": f"token {stranger_token}"}
        r = await client.post(
            "users/sh-stranger/servers/sh-forged", json={"user_options": options}, headers=headers
        )
        message = r.text
        if r.status_code < 400:  # the hub took it: the start fails, its progress says why
            for _ in range(60):
                model = (await client.get("users/sh-stranger", headers=headers)).json()
                if not model["servers"].get("sh-forged", {}).get("pending"):
                    break
                await asyncio.sleep(0.5)
            assert not model["servers"].get("sh-forged", {}).get("ready")
            message = (await client.get("users/sh-stranger/servers/sh-forged/progress", headers=headers)).text
        assert "may not start the environment" in message, message
    with admin_api(hub) as api:
        api.request("DELETE", "users/sh-stranger/servers/sh-forged", json={"remove": True})


async def test_group_membership_change_counts_without_restart(hub, callers, shared_env):
    member, uid = callers["sh-member"], shared_env["uid"]
    assert await listed(member, uid)
    with admin_api(hub) as api:
        r = api.request("DELETE", f"groups/{GROUP}/users", json={"users": ["sh-member"]})
        assert r.status_code == 200, r.text
    try:
        started = time.monotonic()
        await wait_for(lambda: _not_listed(member, uid), timeout=CACHE_SECONDS + 10, what="gone")
        assert time.monotonic() - started <= CACHE_SECONDS + 5
        r = await member.api("GET", f"api/environments/{uid}")
        assert_json_error(r, 404)
        # the spawner reads the hub's own database: the form no longer offers it, at once
        r = await member.client.get("hub/spawn/sh-member/sh-form2")
        assert shared_env["image_name"] not in r.text
    finally:
        with admin_api(hub) as api:
            api.post(f"groups/{GROUP}/users", json={"users": ["sh-member"]})
    await wait_for(lambda: listed(member, uid), timeout=CACHE_SECONDS + 10, what="back")


async def _not_listed(user, uid):
    return not await listed(user, uid)


async def test_who_may_add_environments(hub, callers):
    # plain users and tokens without the build scope: 403; builders, tokens with it: allowed (400 here)
    r = await callers["sh-stranger"].api("POST", "api/environments", json={"repo": ""})
    assert_json_error(r, 403, "build")
    for who in ("sh-builder", "admin", "bob"):
        r = await callers[who].api("POST", "api/environments", json={"repo": ""})
        assert_json_error(r, 400)
    with_scope = make_token(hub, "sh-builder", [ACCESS, TLJH_R2D_BUILD_SCOPE])
    without = make_token(hub, "sh-builder", [ACCESS])
    async with httpx.AsyncClient(base_url=hub.service_url) as client:
        for tok, status in ((with_scope, 400), (without, 403)):
            r = await client.post(
                "api/environments", json={"repo": ""}, headers={"Authorization": f"token {tok}"}
            )
            assert_json_error(r, status)


async def test_token_without_build_scope_cannot_change_own(hub, callers, shared_env):
    owner_token = make_token(hub, "sh-owner", [ACCESS])
    async with httpx.AsyncClient(base_url=hub.service_url) as client:
        headers = {"Authorization": f"token {owner_token}"}
        r = await client.get(f"api/environments/{shared_env['uid']}", headers=headers)
        assert r.status_code == 200
        r = await client.patch(
            f"api/environments/{shared_env['uid']}", json={"sharing": {"everyone": True}}, headers=headers
        )
        assert_json_error(r, 403, "build")


@pytest.mark.parametrize(
    "sharing, field",
    [
        ("everyone", "sharing"),
        ({"everyone": "yes"}, "sharing.everyone"),
        ({"users": "sh-friend"}, "sharing.users"),
        ({"groups": [""]}, "sharing.groups"),
        ({"users": ["x" * 300]}, "sharing.users"),
        ({"people": []}, "sharing.people"),
    ],
)
async def test_bad_sharing_is_refused_and_nothing_changes(callers, shared_env, sharing, field):
    owner, uid = callers["sh-owner"], shared_env["uid"]
    r = await owner.api("PATCH", f"api/environments/{uid}", json={"sharing": sharing})
    body = assert_json_error(r, 400)
    assert body["field"] == field
    assert (await owner.get_env(uid))["sharing"] == shared_env["sharing"]


async def test_admins_add_for_everyone_and_builders_can_share_at_once(callers, dockerfile_repo):
    admin = callers["admin"]
    env = await admin.create_env({"repo": dockerfile_repo, "name": f"sh-admin-{token()}"})
    assert env["sharing"] == {"everyone": True, "users": [], "groups": []}
    r = await admin.delete_env(env["uid"])
    assert r.status_code == 204


async def test_quota_builds_and_image_size(hub, callers, git_server, git_root):
    """sh-quota: one build at a time (429), then images over 10M (403); nothing half-stored."""
    user = await HubUser.login(hub, "sh-quota")
    try:
        names = []
        for _ in range(2):
            name = f"sh-q-{token()}"
            make_repo(git_root, name, {"Dockerfile": dockerfile("RUN sleep 2")})
            names.append(name)
        first = await user.create_env({"repo": git_server.url(names[0]), "name": names[0]})
        r = await user.api("POST", "api/environments", json={"repo": git_server.url(names[1]), "name": names[1]})
        body = assert_json_error(r, 429, "builds_per_user")
        assert body["field"] == "builds_per_user"
        assert await _owned(user) == [names[0]]
        await user.wait_env(first["uid"], {"built"})
        r = await user.api("POST", "api/environments", json={"repo": git_server.url(names[1]), "name": names[1]})
        body = assert_json_error(r, 403, "image_size_per_user")
        assert body["field"] == "image_size_per_user"
        # (forced: a rebuild of the commit already built is not a build at all)
        r = await user.api("POST", f"api/environments/{first['uid']}/rebuild", json={"force": True})
        assert_json_error(r, 403, "image_size_per_user")
        assert await _owned(user) == [names[0]]
        assert (await user.get_env(first["uid"]))["status"] == "built"
        # admins are not limited
        r = await callers["admin"].api(
            "POST", f"api/environments/{first['uid']}/rebuild", json={"force": True}
        )
        assert r.status_code == 202, r.text
        await callers["admin"].wait_env(first["uid"], {"built"})
    finally:
        await user.close()


async def test_quota_environments_per_user(hub, git_server):
    """sh-quota2: two environments (failed builds take no disk), the third is refused."""
    user = await HubUser.login(hub, "sh-quota2")
    try:
        names = [f"sh-q2-{token()}" for _ in range(3)]
        for name in names[:2]:
            env = await user.create_env({"repo": git_server.url("no-such-repo"), "name": name})
            await user.wait_env(env["uid"], {"failed"})
        r = await user.api("POST", "api/environments", json={"repo": git_server.url("no-such-repo"), "name": names[2]})
        body = assert_json_error(r, 403, "environments_per_user")
        assert body["field"] == "environments_per_user"
        assert sorted(await _owned(user)) == sorted(names[:2])
    finally:
        await user.close()


async def test_builders_use_machine_profiles_only(callers, dockerfile_repo):
    builder = callers["sh-builder"]
    r = await builder.api(
        "POST", "api/environments", json={"repo": dockerfile_repo, "name": f"sh-mem-{token()}", "memory": "64G"}
    )
    body = assert_json_error(r, 403, "Small")
    assert body["field"] == "machine_profile"


async def _owned(user):
    r = await user.api("GET", "api/environments")
    return [e["name"] for e in r.json()["environments"] if e["owner"] == user.name]


async def test_environments_page_for_builders(callers, shared_env):
    for who in ("sh-stranger", "sh-friend"):  # not builders
        r = await callers[who].client.get(callers[who].service_path("environments"))
        assert r.status_code == 403 and "build" in r.text
    for who in ("sh-owner", "sh-builder", "admin"):
        user = callers[who]
        r = await user.client.get(user.service_path("environments"))
        assert r.status_code == 200, who
        assert (shared_env["uid"] in r.text) is (who in SEES), who
    admin = callers["admin"]
    r = await admin.client.get(admin.service_path("environments"), params={"owner": "nobody-at-all"})
    assert shared_env["uid"] not in r.text
    r = await admin.client.get(admin.service_path("environments"), params={"owner": "sh-owner"})
    assert shared_env["uid"] in r.text


async def test_owner_cannot_delete_what_another_users_server_runs(callers, shared_env):
    """sh-friend starts a server from sh-owner's environment: deleting it is refused (409)."""
    friend, owner = callers["sh-friend"], callers["sh-owner"]
    r = await friend.api("POST", "api/servers", json={"name": "sh-uses", "environment": shared_env["uid"]})
    assert r.status_code == 202, r.text
    try:
        r = await owner.delete_env(shared_env["uid"])
        assert_json_error(r, 409, "sh-friend/sh-uses")
        assert (await owner.get_env(shared_env["uid"]))["status"] == "built"
    finally:
        await friend.api("DELETE", "api/servers/sh-uses", params={"remove": "true"})


async def test_list_revalidation_and_gzip_are_per_user(callers, shared_env):
    """An Etag or a compressed answer is one user's: it never gives another user's list."""
    uid = shared_env["uid"]
    answers = {}
    for who in ("sh-friend", "sh-stranger"):
        user = callers[who]
        plain = await user.api("GET", "api/environments", headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        for _ in range(100):  # compressed in the background: plain until it is ready
            r = await user.api("GET", "api/environments", headers={"Accept-Encoding": "gzip"})
            if r.headers.get("content-encoding") == "gzip":
                break
            await asyncio.sleep(0.05)
        assert r.headers.get("content-encoding") == "gzip"
        assert r.json() == plain.json() and r.headers["etag"] != plain.headers["etag"]
        again = await user.api(
            "GET", "api/environments",
            headers={"Accept-Encoding": "identity", "If-None-Match": plain.headers["etag"]},
        )
        assert again.status_code == 304 and again.content == b""
        answers[who] = plain
    assert uid in {e["uid"] for e in answers["sh-friend"].json()["environments"]}
    # the friend's tag, sent by the stranger: a full answer of the stranger's own list
    r = await callers["sh-stranger"].api(
        "GET", "api/environments",
        headers={"Accept-Encoding": "identity", "If-None-Match": answers["sh-friend"].headers["etag"]},
    )
    assert r.status_code == 200, r.text
    assert uid not in {e["uid"] for e in r.json()["environments"]}
