"""Who may do what: every route, for every kind of caller, through the real hub and proxy.

Environments of builders (owners, sharing with users and groups) have their
own matrix in tests/test_sharing.py.
"""

import httpx
import pytest

from tljh_repo2docker import TLJH_R2D_ADMIN_SCOPE

from .helpers.utils import SERVICE, assert_json_error, make_token

pytestmark = [pytest.mark.hub, pytest.mark.docker]

ACCESS = f"access:services!service={SERVICE}"

# (method, path, body): admin routes answer 400/404 to an allowed caller here,
# so that the matrix exercises authorization without starting builds.
ADMIN_API = [
    ("POST", "api/environments", {"repo": ""}),
    ("DELETE", "api/environments/does-not-exist", None),
    ("POST", "api/environments/does-not-exist/rebuild", {}),
    ("POST", "api/environments/does-not-exist/cancel", {}),
    ("GET", "api/environments/does-not-exist/logs", None),
    ("DELETE", "api/homes/does-not-exist", None),
]
USER_API = [
    ("GET", "api/environments", None),
    ("GET", "api/servers", None),
]
ALLOWED_ADMIN_STATUS = {400, 404}
# Routes of one environment: one that does not exist (or that the caller may
# not see) is 404 for everyone; the matrix with a real one is in test_sharing.py.
ENVIRONMENT_ROUTES = {path for _, path, _ in ADMIN_API if path.startswith("api/environments/")}


@pytest.fixture
def users(admin, alice, bob):
    return {"admin": admin, "alice": alice, "bob": bob}


def test_import_scope():
    assert TLJH_R2D_ADMIN_SCOPE == "custom:tljh_repo2docker:admin"


async def test_anonymous_pages_redirect_to_hub_login(hub):
    async with httpx.AsyncClient(base_url=hub.url) as client:
        for page in ["", "servers", "environments"]:
            r = await client.get(f"services/{SERVICE}/{page}")
            assert r.status_code == 302, page
            assert "/hub/api/oauth2/authorize" in r.headers["location"]


@pytest.mark.parametrize("method, path, body", ADMIN_API + USER_API)
async def test_anonymous_api_is_refused(hub, method, path, body):
    async with httpx.AsyncClient(base_url=hub.url) as client:
        r = await client.request(method, f"services/{SERVICE}/{path}", json=body)
    assert_json_error(r, 403)


@pytest.mark.parametrize("method, path, body", ADMIN_API)
async def test_plain_user_cannot_manage_environments(alice, method, path, body):
    r = await alice.api(method, path, json=body)
    if path in ENVIRONMENT_ROUTES:
        assert_json_error(r, 404, "No environment")
    elif path == "api/environments":
        assert_json_error(r, 403, "build or admin")
    else:
        assert_json_error(r, 403, "admin")


@pytest.mark.parametrize("who", ["admin", "bob"])
@pytest.mark.parametrize("method, path, body", ADMIN_API)
async def test_admins_and_scope_holders_manage_environments(users, who, method, path, body):
    user = users[who]
    r = await user.api(method, path, json=body)
    assert r.status_code in ALLOWED_ADMIN_STATUS, (r.status_code, r.text)
    assert_json_error(r, r.status_code)


@pytest.mark.parametrize("who", ["admin", "alice", "bob"])
@pytest.mark.parametrize("method, path, body", USER_API)
async def test_every_user_lists(users, who, method, path, body):
    user = users[who]
    r = await user.api(method, path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")


async def test_pages_by_role(admin, alice, bob):
    for user in (admin, bob):
        r = await user.client.get(user.service_path("environments"))
        assert r.status_code == 200
        assert 'href="/services/tljh_repo2docker/environments"' in r.text
    r = await alice.client.get(alice.service_path("environments"))
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("text/html")
    assert "admin permission" in r.text
    assert "Traceback" not in r.text
    r = await alice.client.get(alice.service_path("servers"))
    assert r.status_code == 200
    # no Environments link for a plain user
    assert 'href="/services/tljh_repo2docker/environments"' not in r.text
    r = await alice.client.get(alice.service_path(""), follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"].endswith("/servers")


async def test_cookie_post_without_xsrf_is_refused(alice, admin):
    for user in (alice, admin):
        r = await user.client.post(
            user.service_path("api/environments"), json={"repo": ""}, follow_redirects=False
        )
        assert r.status_code == 403, r.text


async def _token_call(hub, token, method, path, body):
    async with httpx.AsyncClient(base_url=hub.url) as client:
        return await client.request(
            method,
            f"services/{SERVICE}/{path}",
            json=body,
            headers={"Authorization": f"token {token}"},
        )


async def test_api_tokens(hub):
    scoped = make_token(hub, "bob", [ACCESS, TLJH_R2D_ADMIN_SCOPE])
    unscoped = make_token(hub, "bob", [ACCESS])
    plain = make_token(hub, "alice", [ACCESS])
    no_access = make_token(hub, "alice", ["read:users:name!user=alice"])
    for method, path, body in ADMIN_API:
        r = await _token_call(hub, scoped, method, path, body)
        assert r.status_code in ALLOWED_ADMIN_STATUS, (path, r.status_code, r.text)
        for token in (unscoped, plain):
            r = await _token_call(hub, token, method, path, body)
            assert_json_error(r, 404 if path in ENVIRONMENT_ROUTES else 403)
    for method, path, body in USER_API:
        for token in (scoped, unscoped, plain):
            r = await _token_call(hub, token, method, path, body)
            assert r.status_code == 200, (path, r.text)
        r = await _token_call(hub, no_access, method, path, body)
        assert r.status_code == 403


async def test_unknown_api_url_is_json_404(admin):
    r = await admin.api("GET", "api/nothing-here")
    assert_json_error(r, 404)


async def test_bad_json_body(admin):
    r = await admin.api(
        "POST", "api/environments", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_json_error(r, 400, "JSON")
    r = await admin.api("POST", "api/environments", content=b"\xff\xfe", headers={})
    assert_json_error(r, 400, "UTF-8")
    r = await admin.api("POST", "api/environments", json=[1, 2])
    assert_json_error(r, 400, "object")
