"""Helpers shared by the tests: the hub's configuration, logged-in users, contracts."""

import asyncio
import itertools
import os
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tljh_repo2docker import TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE

SERVICE = "tljh_repo2docker"
ADMIN_API_TOKEN = "test-admin-token-0123456789abcdef"
SECRET_PASSWORD = "s3cret-Pa55word-do-not-leak-7f1c"
#: Users of the test hubs given the build scope (tests/test_sharing.py).
BUILDERS = ["sh-owner", "sh-builder", "sh-quota", "sh-quota2"]
#: Images built by this session's test hubs (removed at the session's end).
#: Each hub gets its own prefix below this one (see ``next_image_prefix``), so
#: that a hub never adopts (and a test never removes) another hub's images, and
#: test sessions sharing one Docker engine leave each other alone.
TEST_IMAGE_PREFIX = f"tljh-r2d-test-{os.getpid()}"
_hub_numbers = itertools.count()


def next_image_prefix():
    return f"{TEST_IMAGE_PREFIX}-{next(_hub_numbers)}/"


def remove_test_images():
    import subprocess

    out = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    for image in out:
        if not image.startswith(f"{TEST_IMAGE_PREFIX}-"):
            continue
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def remove_volumes(label):
    """Remove the Docker volumes carrying ``label`` (``key=value``)."""
    import subprocess

    names = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if names:
        subprocess.run(["docker", "volume", "rm", "-f", *names], capture_output=True)


def remove_home_volumes(info):
    """Remove the home volumes of the users of the hub ``info`` (labelled with its prefix)."""
    remove_volumes(f"tljh_repo2docker.home.prefix={info.image_prefix}")


@dataclass
class HubInfo:
    workdir: Path
    proxy_port: int
    hub_port: int
    service_port: int
    gateway: str
    network: str
    proxy_api_port: int = 0
    image_prefix: str = field(default_factory=lambda: next_image_prefix())
    proc: object = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.proxy_port}/"

    @property
    def service_url(self):
        return f"{self.url}services/{SERVICE}/"

    @property
    def api(self):
        return f"{self.url}hub/api/"

    @property
    def db_path(self):
        return self.workdir / "tljh_repo2docker.sqlite"


def hub_config(info: HubInfo, builder_image: str, extra_service_args=(), extra_config=""):
    """The jupyterhub_config.py of the test hub: the README's configuration, on loopback.

    A ``--db_url=...`` in ``extra_service_args`` replaces the default SQLite
    file (the service takes each option once).
    """
    db_args = [] if any(a.startswith("--db_url=") for a in extra_service_args) else [
        f"--db_url=sqlite:///{info.db_path}"
    ]
    db_url = next(a for a in [*db_args, *extra_service_args] if a.startswith("--db_url="))
    db_url = db_url.split("=", 1)[1]
    service_args = [
        f"--port={info.service_port}",
        *db_args,
        f"--repo2docker_image={builder_image}",
        "--builder_network=host",
        "--max_concurrent_builds=2",
        f"--image_prefix={info.image_prefix}",
        "--machine_profiles=" + json.dumps({"label": "Small", "cpu": 0.5, "memory": "512M"}),
        "--machine_profiles=" + json.dumps({"label": "Large", "cpu": 1, "memory": 1}),
        "--node_selector="
        + json.dumps({"gpu": {"description": "GPU availability", "values": ["yes", "no"]}}),
        "--DockerBuilder.pull_repo2docker_image=False",
        # The build cache is the engine's, shared with other test sessions:
        # a prune by a test hub (the fuzzing of POST api/disk/prune) never
        # takes an entry younger than a century.
        f"--build_cache_max_age={100 * 365 * 24 * 3600}",
        "--debug",
        *extra_service_args,
    ]
    return f"""
import sys
from tljh_repo2docker import TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {info.proxy_port}
# The hub listens on the gateway of the project's own Docker network, so that
# spawned containers reach it and nothing leaves the machine.
c.JupyterHub.hub_ip = "{info.gateway}"
c.JupyterHub.hub_port = {info.hub_port}
c.JupyterHub.hub_connect_ip = "{info.gateway}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{info.proxy_api_port}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.admin_users = {{"admin"}}
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 5
c.JupyterHub.cleanup_servers = True

c.JupyterHub.spawner_class = "tljh_repo2docker.Repo2DockerSpawner"
c.DockerSpawner.network_name = "{info.network}"
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.remove = True
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.name_template = "tljh-r2d-test-{{username}}-{{servername}}"
# The service's prefix and its database (read only: who may use which
# environment), for every spawner class, as hub_config.configure() gives them.
from tljh_repo2docker import hub_config
hub_config.configure_spawners(
    c, image_prefix="{info.image_prefix}", db_url={db_url!r}, content_puller_image="{builder_image}"
)
# Each test hub its own home volumes on the shared engine (users of every hub
# are called alice and bob); removed with the hub (tests/helpers/fixtures.py).
c.Repo2DockerSpawner.home_volume_name_template = "tljh-r2d-test-home-{{prefix}}-{{username}}"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60
c.Spawner.poll_interval = 5

c.JupyterHub.custom_scopes = {{
    TLJH_R2D_ADMIN_SCOPE: {{"description": "Manage tljh-repo2docker environments"}},
    TLJH_R2D_BUILD_SCOPE: {{"description": "Build and share environments of one's own"}},
}}
c.JupyterHub.services = [
    {{
        "name": "{SERVICE}",
        "url": "http://127.0.0.1:{info.service_port}",
        "command": [sys.executable, "-m", "tljh_repo2docker", *{service_args!r}],
        "cwd": "{info.workdir}",
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": [TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE],
    }},
    {{"name": "test-admin", "api_token": "{ADMIN_API_TOKEN}"}},
]
c.JupyterHub.load_roles = [
    {{
        "name": "{SERVICE}-service",
        "scopes": [
            "list:users", "read:users", "read:roles:users", "admin:servers",
            "list:groups", "read:groups", "read:users:groups",
        ],
        "services": ["{SERVICE}"],
    }},
    {{
        "name": "user",
        "scopes": ["self", "access:services!service={SERVICE}"],
    }},
    {{
        "name": "tljh-repo2docker-admins",
        "scopes": [TLJH_R2D_ADMIN_SCOPE, "access:services!service={SERVICE}"],
        "users": ["bob"],
    }},
    {{
        "name": "tljh-repo2docker-builders",
        "scopes": [TLJH_R2D_BUILD_SCOPE],
        "users": {BUILDERS!r},
    }},
    {{
        "name": "test-admin",
        "scopes": ["admin:users", "admin:servers", "tokens", "read:roles", "admin:groups"],
        "services": ["test-admin"],
    }},
]
{extra_config}
"""


def wait_for_http(url, timeout=30, proc=None, ok=(200, 302)):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}")
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code in ok:
                return r
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout}s (last: {last})")


def admin_api(info: HubInfo):
    return httpx.Client(
        base_url=info.api, headers={"Authorization": f"token {ADMIN_API_TOKEN}"}, timeout=30
    )


def stop_all_servers(info: HubInfo):
    with admin_api(info) as api:
        r = api.get("users")
        if r.status_code != 200:
            return
        users = r.json()
        users = users["items"] if isinstance(users, dict) else users
        for user in users:
            for name in user.get("servers", {}):
                api.request("DELETE", f"users/{user['name']}/servers/{name}", json={"remove": True})


def make_token(info: HubInfo, user, scopes):
    with admin_api(info) as api:
        r = api.post(f"users/{user}/tokens", json={"scopes": scopes, "note": "tests"})
        r.raise_for_status()
        return r.json()["token"]


class HubUser:
    """A user logged in to JupyterHub and, through OAuth, to the service."""

    def __init__(self, info: HubInfo, name: str, client: httpx.AsyncClient):
        self.info = info
        self.name = name
        self.client = client
        self.xsrf = None

    @classmethod
    async def login(cls, info: HubInfo, name: str):
        client = httpx.AsyncClient(base_url=info.url, timeout=60, follow_redirects=True)
        r = await client.get("hub/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text)
        data = {"username": name, "password": "any"}
        if xsrf:
            data["_xsrf"] = xsrf.group(1)
        r = await client.post("hub/login", data=data)
        assert r.status_code == 200, r.text[:500]
        user = cls(info, name, client)
        await user.refresh_xsrf()
        return user

    async def refresh_xsrf(self):
        r = await self.client.get(f"services/{SERVICE}/servers")
        assert r.status_code == 200, (r.status_code, r.text[:500])
        self.xsrf = re.search(r'name="xsrf-token" content="([^"]+)"', r.text).group(1)

    def service_path(self, path):
        return f"services/{SERVICE}/{path}"

    async def api(self, method, path, **kwargs):
        headers = kwargs.pop("headers", {})
        if method.upper() not in {"GET", "HEAD"}:
            headers.setdefault("X-XSRFToken", self.xsrf)
        return await self.client.request(
            method, self.service_path(path), headers=headers, follow_redirects=False, **kwargs
        )

    async def create_env(self, body, expect=202):
        r = await self.api("POST", "api/environments", json=body)
        assert r.status_code == expect, (r.status_code, r.text)
        return r.json()

    async def get_env(self, uid):
        r = await self.api("GET", f"api/environments/{uid}")
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    async def wait_env(self, uid, statuses, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = await self.get_env(uid)
            if env["status"] in statuses:
                return env
            await asyncio.sleep(0.5)
        raise TimeoutError(f"environment {uid} still {env['status']} after {timeout}s")

    async def delete_env(self, uid):
        return await self.api("DELETE", f"api/environments/{uid}")

    async def close(self):
        await self.client.aclose()


def assert_json_error(response, status, contains=None):
    """Every API error has one shape: JSON {"status": N, "message": "..."}."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in body["message"]
    if contains:
        assert contains in body["message"], body["message"]
    return body


async def sse_read(response, handle, raw=None):
    """Call ``handle(id, data)`` for each Server-Sent Event of the streamed
    ``response`` (data parsed as JSON) until it returns true; ``raw`` collects
    every line received. True when ``handle`` stopped it, False when the
    stream ended first."""
    event_id, data = None, None
    async for line in response.aiter_lines():
        if raw is not None:
            raw.append(line)
        if line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("data:"):
            data = json.loads(line[5:].strip())
        elif line == "" and data is not None:
            if handle(event_id, data):
                return True
            event_id, data = None, None
    return False


async def read_sse(client, url, headers=None, until_final=True, timeout=120):
    """Read Server-Sent Events into [(id, data)] until a final phase or the stream ends."""
    events = []
    final = {"built", "failed", "cancelled"}

    def handle(event_id, data):
        events.append((event_id, data))
        return until_final and data.get("phase") in final

    async with client.stream("GET", url, headers=headers or {}, timeout=timeout) as r:
        assert r.status_code == 200, r.status_code
        assert r.headers["content-type"].startswith("text/event-stream")
        await sse_read(r, handle)
    return events


# Figures the tests measure (latencies, counts, durations), printed together at
# the end of the run by tests/helpers/fixtures.py's pytest_terminal_summary, passed or not.
FIGURES = []


def figure(text):
    """Record a measured figure for the end-of-run summary (and print it, for -s)."""
    text = text.strip("\n")
    FIGURES.append(text)
    print(text)
