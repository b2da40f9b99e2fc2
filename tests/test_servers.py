"""Launching environments end to end: servers API, direct links, the hub's spawn page.

Real Docker, real JupyterHub with its proxy, the service as a managed service,
and the environment built by repo2docker (the ``built_env`` fixture).
"""

import html
import re
import time

import httpx
import jupyterhub
import pytest

from tljh_repo2docker.handlers.servers import slug_for

from .helpers.servers import container, wait_server
from .helpers.utils import SERVICE, admin_api, assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def hub_name(name):
    """The hub's name for the server the user called ``name``."""
    return slug_for(name) if jupyterhub.version_info >= (6,) else name


async def test_start_reach_limits_stop_delete(alice, admin, built_env, hub):
    r = await alice.api("POST", "api/servers", json={"name": "e2e", "environment": built_env["name"]})
    assert r.status_code == 202, r.text
    assert r.json()["url"].endswith("/user/alice/e2e/")
    server = await wait_server(alice, "e2e")
    assert server["environment"] == built_env["name"]
    assert server["environment_uid"] == built_env["uid"]

    # reach it through the proxy: opening it runs the single-user server's own
    # OAuth with the hub, then its API answers with that cookie
    r = await alice.client.get("user/alice/e2e/")
    assert r.status_code == 200, (r.status_code, r.url)
    r = await alice.client.get("user/alice/e2e/api/status")
    assert r.status_code == 200, (r.status_code, r.url)
    assert "started" in r.json()

    # the running container has the environment's limits (512M, 0.5 CPU)
    info = container("alice", "e2e")
    assert info["Config"]["Image"] == built_env["image_name"]
    host = info["HostConfig"]
    assert host["Memory"] == 512 * 1024**2
    assert host["CpuQuota"] / host["CpuPeriod"] == pytest.approx(0.5)

    # deleting the environment is refused while the server runs, naming it
    r = await admin.delete_env(built_env["uid"])
    assert_json_error(r, 409, "alice/e2e")
    assert (await admin.get_env(built_env["uid"]))["status"] == "built"

    # stop, then remove
    r = await alice.api("DELETE", "api/servers/e2e")
    assert r.status_code == 202
    await wait_server(alice, "e2e", "stopped")
    r = await alice.api("DELETE", "api/servers/e2e", params={"remove": "true"})
    assert r.status_code == 204
    await wait_server(alice, "e2e", "absent")


async def test_direct_link_creates_restarts_and_opens(alice, built_env, hub):
    link = f"servers?name=link1&environment={built_env['name']}&urlpath=lab/tree/x.ipynb"
    r = await alice.api("GET", link)
    assert r.status_code == 200, r.text
    assert 'id="launching"' in r.text
    assert 'data-url="/user/alice/link1/lab/tree/x.ipynb"' in r.text
    await wait_server(alice, "link1")
    # running: the link goes straight to it
    r = await alice.api("GET", link)
    assert r.status_code == 302
    assert r.headers["location"] == "/user/alice/link1/lab/tree/x.ipynb"

    # stopped: the link starts it again with its own environment
    r = await alice.api("DELETE", "api/servers/link1")
    await wait_server(alice, "link1", "stopped")
    r = await alice.api("GET", "servers?name=link1")
    assert r.status_code == 200 and 'id="launching"' in r.text
    server = await wait_server(alice, "link1")
    assert server["environment"] == built_env["name"]
    await alice.api("DELETE", "api/servers/link1", params={"remove": "true"})
    await wait_server(alice, "link1", "absent")


@pytest.mark.parametrize(
    "query, status, text",
    [
        ("name=ok1&environment=no-such-env", 404, "no environment named"),
        ("name=bad%20name&environment=shared-env", 400, "not a valid server name"),
        ("name=ok2", 400, "environment: is required"),
        ("name=%3Cscript%3E&environment=shared-env", 400, "not a valid server name"),
    ],
)
async def test_direct_link_errors_are_readable(alice, built_env, query, status, text):
    r = await alice.api("GET", f"servers?{query}")
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert text in r.text
    assert "<script>" not in r.text
    assert "Traceback" not in r.text


async def test_logged_out_visitor_goes_through_login_and_back(hub, built_env):
    link = f"/services/{SERVICE}/servers?name=viaLogin&environment={built_env['name']}"
    async with httpx.AsyncClient(base_url=hub.url, follow_redirects=True, timeout=60) as client:
        r = await client.get(link)
        assert "/hub/login" in str(r.url)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
        r = await client.post(str(r.url), data={"username": "carol", "password": "x", "_xsrf": xsrf})
        assert r.url.path == f"/services/{SERVICE}/servers"
        assert r.url.params["name"] == "viaLogin"
        assert 'id="launching"' in r.text
    server_name = hub_name("viaLogin")
    with admin_api(hub) as api:
        for _ in range(240):
            model = api.get("users/carol").json()
            if model["servers"].get(server_name, {}).get("ready"):
                break
            time.sleep(0.5)
        assert model["servers"][server_name]["ready"]
        api.request("DELETE", f"users/carol/servers/{server_name}", json={"remove": True})


async def test_names_are_kept_as_typed_whatever_the_hub_accepts(alice, built_env, hub):
    """``My.Lab_2`` is no JupyterHub 6 server name: the hub gets a slug, the user
    keeps seeing (and using) the name they typed."""
    name = "My.Lab_2"
    r = await alice.api("POST", "api/servers", json={"name": name, "environment": built_env["name"]})
    assert r.status_code == 202, r.text
    assert r.json()["name"] == name
    assert r.json()["server_name"] == hub_name(name)
    assert r.json()["url"] == f"/user/alice/{hub_name(name)}/"
    server = await wait_server(alice, name)
    assert server["server_name"] == hub_name(name)
    assert container("alice", hub_name(name))["Config"]["Image"] == built_env["image_name"]
    if jupyterhub.version_info >= (6,):
        with admin_api(hub) as api:
            assert api.get(f"users/alice/servers/{hub_name(name)}").json()["display_name"] == name
    # the same name again is the same server; a link with it opens it
    r = await alice.api("POST", "api/servers", json={"name": name, "environment": built_env["name"]})
    assert_json_error(r, 409, "already running")
    r = await alice.api("GET", f"servers?name={name}")
    assert r.status_code == 302 and r.headers["location"] == f"/user/alice/{hub_name(name)}/"
    # stop by the typed name; a link with it starts it again, and the page's
    # links (the server, the hub's spawn messages) use the hub's name
    r = await alice.api("DELETE", f"api/servers/{name}")
    assert r.status_code == 202
    await wait_server(alice, name, "stopped")
    r = await alice.api("GET", f"servers?name={name}")
    assert r.status_code == 200 and 'id="launching"' in r.text
    assert f'data-name="{name}"' in r.text
    assert f'data-url="/user/alice/{hub_name(name)}/"' in r.text
    assert f'spawn-pending/alice/{hub_name(name)}"' in r.text
    await wait_server(alice, name)
    r = await alice.api("DELETE", f"api/servers/{name}")
    await wait_server(alice, name, "stopped")
    # remove by the hub's name
    r = await alice.api("DELETE", f"api/servers/{hub_name(name)}", params={"remove": "true"})
    assert r.status_code == 204
    await wait_server(alice, name, "absent")


async def test_servers_api_errors(alice, built_env):
    r = await alice.api("POST", "api/servers", json={"name": "x1", "environment": "nope"})
    assert_json_error(r, 404, "nope")
    r = await alice.api("POST", "api/servers", json={"name": "", "environment": built_env["name"]})
    assert_json_error(r, 400, "name")
    r = await alice.api("POST", "api/servers", json={"name": "a/b", "environment": built_env["name"]})
    assert_json_error(r, 400, "name")
    r = await alice.api("DELETE", "api/servers/never-existed")
    assert_json_error(r, 404)


async def test_spawner_refuses_images_that_are_not_environments(hub):
    """Straight through the hub's API, bypassing the service: the spawner says no."""
    with admin_api(hub) as api:
        r = api.post(
            "users/admin/servers/rogue",
            json={"image": "tljh-repo2docker-test/singleuser:latest"},
        )
        if r.status_code in (201, 202):
            for _ in range(60):
                model = api.get("users/admin").json()
                pending = model["servers"].get("rogue", {}).get("pending")
                if not pending:
                    break
                time.sleep(0.5)
            assert not model["servers"].get("rogue", {}).get("ready")
        else:
            assert r.status_code == 400
            assert "not an environment built by tljh-repo2docker" in r.json()["message"]
        api.request("DELETE", "users/admin/servers/rogue", json={"remove": True})
    assert container("admin", "rogue") is None


async def test_spawn_page_form_starts_the_chosen_environment(alice, built_env, hub):
    r = await alice.client.get("hub/spawn/alice/formsrv")
    assert r.status_code == 200
    assert built_env["name"] in r.text
    assert f'value="{built_env["image_name"]}"' in r.text
    # the hub's form posts to its action URL, which carries the XSRF token
    action = re.search(r'id="spawn_form"\s+action="([^"]+)"', r.text).group(1)
    r = await alice.client.post(html.unescape(action), data={"image": built_env["image_name"]})
    assert r.status_code == 200, r.status_code
    server = await wait_server(alice, "formsrv")
    assert server["environment"] == built_env["name"]
    info = container("alice", "formsrv")
    assert info["HostConfig"]["Memory"] == 512 * 1024**2
    await alice.api("DELETE", "api/servers/formsrv", params={"remove": "true"})
    await wait_server(alice, "formsrv", "absent")
