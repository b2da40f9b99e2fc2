"""A small client of JupyterHub's REST API, authenticated with the service's token."""

import asyncio
import json
import re
import time
from urllib.parse import quote

import httpx
from traitlets import Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable


class HubError(Exception):
    """The hub refused or failed a request; ``message`` is the hub's explanation."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_version(text):
    """``"6.1.1"`` → ``(6, 1, 1)``; ``"5.0.0b1"`` → ``(5, 0, 0)``; unknown → ``(0,)``."""
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts) or (0,)


class HubClient(LoggingConfigurable):
    api_url = Unicode(
        help="JupyterHub's API URL. Default: $JUPYTERHUB_API_URL, set for managed services."
    ).tag(config=True)

    api_token = Unicode(
        help="The service's API token. Default: $JUPYTERHUB_API_TOKEN. Never logged.",
    ).tag(config=True)

    timeout = Float(
        15,
        help="Seconds to wait for each request to the hub's API.",
    ).tag(config=True)

    retries = Integer(
        2,
        help="Retries of a request that failed to connect or got a 5xx answer (with backoff).",
    ).tag(config=True)

    admin_cache_seconds = Float(
        30,
        help="""
        How long the service remembers whether a user is a hub admin, in
        seconds. Default: 30.
        """,
    ).tag(config=True)

    groups_cache_seconds = Float(
        30,
        help="""
        How long the service remembers which JupyterHub groups a user belongs
        to, in seconds: a user added to (or removed from) a group that an
        environment is shared with may use it (or no longer) at most this
        long after the change, without restarting the service. The spawner
        reads the hub's own database and sees changes at once. Needs the
        service's ``read:users:groups`` scope (hub_config.roles()).
        Default: 30.
        """,
    ).tag(config=True)

    @default("api_url")
    def _default_api_url(self):
        import os

        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    @default("api_token")
    def _default_api_token(self):
        import os

        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._client = None
        self._admin_cache = {}
        self._groups_cache = {}
        self._version = None

    @property
    def client(self):
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.api_url.rstrip("/") + "/",
                headers={"Authorization": f"token {self.api_token}"},
                timeout=httpx.Timeout(self.timeout),
            )
        return self._client

    async def request(self, method, path, **kwargs):
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = await self.client.request(method, path.lstrip("/"), **kwargs)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise HubError(503, f"JupyterHub cannot be reached: {e.__class__.__name__}")
            else:
                if response.status_code < 500 or attempt == self.retries:
                    break
            await asyncio.sleep(delay)
            delay *= 2
        if response.status_code >= 400:
            try:
                message = response.json().get("message") or response.reason_phrase
            except ValueError:
                message = response.reason_phrase
            raise HubError(response.status_code, message)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def get_user(self, name):
        return await self.request("GET", f"users/{quote(name, safe='')}")

    async def is_admin(self, name):
        cached = self._admin_cache.get(name)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            model = await self.get_user(name)
        except HubError as e:
            self.log.warning("Could not check whether %s is an admin: %s", name, e.message)
            return False
        admin = bool(model.get("admin"))
        now = time.monotonic()
        self._admin_cache[name] = (admin, now + self.admin_cache_seconds)
        if "groups" in model:  # the same answer says the groups: one request, not two
            groups = frozenset(g for g in model["groups"] or () if isinstance(g, str))
            self._groups_cache[name] = (groups, now + self.groups_cache_seconds)
        return admin

    async def user_groups(self, name):
        """The names of the JupyterHub groups of the user ``name`` (a frozenset), cached.

        When the hub cannot say (no scope, not reachable), the user counts as
        a member of no group: nothing is shared with them by group.
        """
        cached = self._groups_cache.get(name)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            model = await self.get_user(name)
        except HubError as e:
            self.log.warning("Could not read the groups of %s: %s", name, e.message)
            return frozenset()
        groups = frozenset(g for g in model.get("groups") or () if isinstance(g, str))
        now = time.monotonic()
        if len(self._admin_cache) > 10000:
            self._admin_cache = {k: v for k, v in self._admin_cache.items() if v[1] > now}
        self._groups_cache[name] = (groups, now + self.groups_cache_seconds)
        self._admin_cache[name] = (bool(model.get("admin")), now + self.admin_cache_seconds)
        if len(self._groups_cache) > 10000:  # forget the expired ones
            self._groups_cache = {k: v for k, v in self._groups_cache.items() if v[1] > now}
        return groups

    async def groups(self):
        """The names of the hub's groups (for the sharing dialog)."""
        answer = await self.request("GET", "groups", params={"limit": 10000})
        if isinstance(answer, dict):  # paginated answer
            answer = answer.get("items", [])
        return sorted(g["name"] for g in answer or () if isinstance(g, dict) and "name" in g)

    async def active_servers(self):
        """``[(user name, server name, server model)]`` of every running or starting server."""
        users = await self.request("GET", "users", params={"state": "active", "limit": 10000})
        if isinstance(users, dict):  # paginated answer
            users = users.get("items", [])
        result = []
        for user in users:
            for server_name, server in (user.get("servers") or {}).items():
                result.append((user["name"], server_name, server))
        return result

    async def version(self):
        """JupyterHub's version as a tuple of ints, e.g. ``(6, 1, 1)``; asked once."""
        if self._version is None:
            answer = await self.request("GET", "")
            self._version = parse_version((answer or {}).get("version", ""))
        return self._version

    async def has_display_names(self):
        """JupyterHub 6 gave named servers a display name and made their names slugs."""
        return (await self.version()) >= (6,)

    async def start_server(self, user, server_name, user_options, display_name=None):
        path = f"users/{quote(user, safe='')}/servers/{quote(server_name, safe='')}"
        if await self.has_display_names():
            body = {"user_options": user_options, "display_name": display_name or server_name}
        else:
            body = user_options  # JupyterHub 5 takes the options as the whole body
        return await self.request("POST", path, json=body)

    async def stop_server(self, user, server_name, remove=False):
        path = f"users/{quote(user, safe='')}/servers/{quote(server_name, safe='')}"
        return await self.request("DELETE", path, json={"remove": remove})

    async def spawn_failure(self, user, server_name, timeout=5):
        """Why the last start of a server that is not starting failed: the
        message of the final event of the hub's progress stream (``failed``),
        or None (it did not fail, the hub forgot, or did not answer in
        ``timeout`` seconds). Only ask for servers that are not pending: the
        stream of a starting server lasts until it is up."""
        path = f"users/{quote(user, safe='')}/servers/{quote(server_name, safe='')}/progress"

        async def read():
            async with self.client.stream("GET", path) as response:
                if response.status_code != 200:
                    return None  # 400: not starting and no failure kept; 404: gone
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    try:
                        event = json.loads(line[5:])
                    except ValueError:
                        continue
                    if event.get("failed"):
                        return str(event.get("message") or "Spawn failed")
                    if event.get("ready"):
                        return None
            return None

        try:
            return await asyncio.wait_for(read(), timeout)
        except (asyncio.TimeoutError, httpx.HTTPError):
            return None

    async def check(self):
        await self.request("GET", "")
        return "jupyterhub"

    async def close(self):
        if self._client is not None:
            await self._client.aclose()
            self._client = None
