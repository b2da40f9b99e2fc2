"""Single-user servers started through the service: waiting for them, their
containers, and the user's files in them.

- ``wait_server(user, name, status)``: polls the service's ``api/servers`` until
  the server is ``running`` (or ``stopped``, or ``absent``).
- ``container(user, server)``: ``docker inspect`` of the server's container on a
  hub of ``tests/helpers/fixtures.py`` (None when there is none).
- ``Files(hub, user)``: a user's files in their server, through the Jupyter
  server's contents API behind the hub's proxy.
"""

import asyncio
import json
import subprocess
import time

import httpx
from dockerspawner import DockerSpawner

from tests.helpers.utils import make_token


async def wait_server(user, name, status="running", timeout=120):
    deadline = time.monotonic() + timeout
    servers = {}
    while time.monotonic() < deadline:
        r = await user.api("GET", "api/servers")
        assert r.status_code == 200, r.text
        servers = {s["name"]: s for s in r.json()["servers"]}
        if status == "absent" and name not in servers:
            return None
        if name in servers and servers[name]["status"] == status:
            return servers[name]
        await asyncio.sleep(0.5)
    raise TimeoutError(f"server {name} not {status}: {servers.get(name)}")


def container(user, server):
    # DockerSpawner lowercases and escapes the server name in {servername}
    name = f"tljh-r2d-test-{user}-{DockerSpawner._escape(server.lower())}"
    out = subprocess.run(["docker", "inspect", name], capture_output=True, text=True)
    return json.loads(out.stdout)[0] if out.returncode == 0 else None


class Files:
    """A user's files in their server, through the contents API of the Jupyter server."""

    def __init__(self, hub, user):
        token = make_token(hub, user, [f"access:servers!user={user}"])
        self.user = user
        self.client = httpx.AsyncClient(
            base_url=hub.url, headers={"Authorization": f"token {token}"}, timeout=30
        )

    async def _request(self, method, server, path, **kwargs):
        url = f"user/{self.user}/{server}/api/contents/{path}"
        for _ in range(60):  # the proxy may not route to a new server at once
            r = await self.client.request(method, url, **kwargs)
            if r.status_code not in (502, 503, 424):
                return r
            await asyncio.sleep(0.5)
        return r

    async def write(self, server, path, text):
        r = await self._request("PUT", server, path.rsplit("/", 1)[0], json={"type": "directory"})
        assert r.status_code in (200, 201), (r.status_code, r.text)
        r = await self._request(
            "PUT", server, path, json={"type": "file", "format": "text", "content": text}
        )
        assert r.status_code in (200, 201), (r.status_code, r.text)

    async def read(self, server, path):
        r = await self._request("GET", server, path, params={"content": "1", "format": "text"})
        if r.status_code == 404:
            return None
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()["content"]

    async def close(self):
        await self.client.aclose()
