"""The service is never the reason the hub is down.

JupyterHub does not start while a managed service that is starting exits.
At boot (TLJH's unit does not wait for Docker) the Docker engine or the
database server may not be up yet, and a cookie secret file may be unusable:
the service starts anyway, says what is missing (503 in the API's error shape,
``health`` names the part) and works, without a restart, once the part is
there. Through a real hub and proxy:

- the Docker engine not answering yet (the service's engine address is a
  socket that only appears later, forwarding to the real engine), with a
  cookie secret file that cannot be read (a folder in its place);
- a PostgreSQL server (this test's own) not running when the hub starts.
"""

import shutil
import time

import httpx
import pytest

from tests.helpers import utils
from tests.helpers.buildutils import dockerfile, token
from tests.helpers.docker_socket import SocketForwarder
from tests.helpers.fixtures import running_hub
from tests.helpers.gitserver import make_repo
from tests.helpers.private_postgres import PrivatePostgres
from tests.helpers.servers import wait_server

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def health(info):
    r = httpx.get(f"{info.service_url}health", timeout=15)
    return r.status_code, r.json()


def wait_healthy(info, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        status, body = health(info)
        if status == 200:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.5)


async def build_and_start(info, git_root, git_server, user_name):
    """What must work once the part is back: a build and a server start."""
    admin = await utils.HubUser.login(info, "admin")
    user = await utils.HubUser.login(info, user_name)
    try:
        repo = f"startup-{token()}"
        make_repo(git_root, repo, {"Dockerfile": dockerfile()})
        env = await admin.create_env({"repo": git_server.url(repo), "name": repo})
        env = await admin.wait_env(env["uid"], {"built", "failed"})
        assert env["status"] == "built", env
        r = await user.api("POST", "api/servers", json={"name": "boot", "environment": repo})
        assert r.status_code == 202, r.text
        await wait_server(user, "boot")
        await user.api("DELETE", "api/servers/boot", params={"remove": "true"})
        await wait_server(user, "boot", "absent")
    finally:
        await admin.close()
        await user.close()


async def test_hub_starts_without_docker_and_with_an_unreadable_cookie_secret(
    tmp_path, test_images, git_root, git_server
):
    engine = tmp_path / "engine" / "docker.sock"
    engine.parent.mkdir()
    workdir = tmp_path / "hub"
    workdir.mkdir()
    # a folder where the cookie secret file should be: it cannot be read
    (workdir / "tljh_repo2docker_cookie_secret").mkdir()
    args = [f"--DockerBuilder.docker_url=unix://{engine}", "--retry_interval=1"]
    forwarder = SocketForwarder(engine)
    with running_hub(workdir, args) as info:
        status, body = health(info)
        assert status == 503, body
        assert body["builder"].startswith("failed: ") and "Docker engine" in body["builder"]
        assert body["cookie_secret"].startswith("failed: ")
        assert body["database"] == "ok"
        assert "Traceback" not in (workdir / "jupyterhub.log").read_text()
        # pages and the API answer; changes that need the engine say why
        admin = await utils.HubUser.login(info, "admin")  # logins work meanwhile
        r = await admin.api("GET", "api/environments")
        assert r.status_code == 200 and r.json() == {"environments": []}
        r = await admin.api("POST", "api/environments", json={"repo": "https://example.org/x"})
        body = utils.assert_json_error(r, 503, "build backend")
        assert "Docker engine" in body["message"]
        await admin.close()

        # the parts come back: no restart needed
        shutil.rmtree(workdir / "tljh_repo2docker_cookie_secret")
        (workdir / "tljh_repo2docker_cookie_secret").write_text("ab" * 32)
        forwarder.start()
        try:
            body = wait_healthy(info)
            assert body["builder"].startswith("Docker ")
            await build_and_start(info, git_root, git_server, "startupdocker")
        finally:
            forwarder.stop()
    log = (workdir / "jupyterhub.log").read_text()
    assert "Traceback" not in log
    assert "The build backend answers now" in log and "logins now use it" in log


async def test_hub_starts_before_its_postgresql(tmp_path, test_images, git_root, git_server):
    pg = PrivatePostgres()
    try:
        pg.stop()
        workdir = tmp_path / "hub"
        workdir.mkdir()
        args = [f"--db_url={pg.url}", "--retry_interval=1"]
        # JupyterHub waits at its start for the service's URL to answer without a
        # 5xx, and does not start otherwise: the root redirects, whatever is missing.
        with running_hub(workdir, args) as info:
            # the hub is up and the service answers, naming the database
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, body = health(info)
                    break
                except (httpx.HTTPError, ValueError):
                    assert time.monotonic() < deadline
                    time.sleep(0.5)
            assert status == 503 and body["database"].startswith("failed: "), body
            assert "database" in body["message"]
            r = httpx.get(f"{info.api}", timeout=10)
            assert r.status_code == 200  # the hub itself
            r = httpx.get(
                f"{info.service_url}api/environments",
                headers={"Authorization": f"token {utils.make_token(info, 'admin', [])}"},
                timeout=10,
            )
            body = utils.assert_json_error(r, 503, "database")
            assert pg.url not in r.text
            pg.start()
            wait_healthy(info)
            await build_and_start(info, git_root, git_server, "startuppg")
        log = (workdir / "jupyterhub.log").read_text()
        assert "Traceback" not in log
        assert "The database can be used now" in log
    finally:
        pg.remove()
