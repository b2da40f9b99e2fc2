"""The user's servers: JSON API, the Servers page, and direct launch links."""

import asyncio
import collections
import hashlib
import re
import string
import time
from datetime import datetime
from urllib.parse import quote

from escapism import escape
from tornado import web

from ..access import Access
from ..contract import user_options
from ..db import store
from ..errors import ServiceError
from ..hub_client import HubError
from ..service import starting
from .base import APIHandler, BaseHandler, FieldError

# JupyterHub accepts most characters in server names; we keep to those that
# are safe in URLs and container names.
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_server_name(name):
    if not isinstance(name, str) or not name:
        raise FieldError("name", "is required")
    if not _SERVER_NAME.match(name):
        raise FieldError(
            "name",
            f"{name!r} is not a valid server name: use up to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


# JupyterHub 6 wants named servers' names to be "safe slugs" (lowercase letters,
# digits and single hyphens, at most 30 characters) and keeps what the user
# typed as the server's display name.
_SLUG = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_SLUG_MAX = 30


def slug_for(name):
    """The JupyterHub 6 server name for ``name``: ``name`` itself when it is
    already a slug, otherwise a readable slug plus a hash of ``name`` (so that
    ``Data.Lab`` and ``data-lab`` stay two servers)."""
    if len(name) <= _SLUG_MAX and _SLUG.match(name):
        return name
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower())
    readable = re.sub(r"^[^a-z]+", "", readable)  # must start with a letter
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    readable = readable[: _SLUG_MAX - len(digest) - 1].strip("-") or "server"
    return f"{readable}-{digest}"


# Answers of the hub that say nothing about why a start failed.
_GENERIC = {"", "error", "internal server error", "bad request", "bad gateway", "unknown error"}


# DockerSpawner's words when the container stopped before it had an address.
_NO_ADDRESS = "The 'ip' trait of a Server instance expected"
_NO_ADDRESS_REASON = (
    "The server's container stopped as soon as it started{status}: the environment's image "
    "does not run a notebook server (JupyterHub: {message})"
)

# Why a container exited while its server started, seen by this service, by
# (user, hub server name): the hub only remembers what came after (a timeout,
# or no address), and the container is gone by then. Forgotten when the
# server starts again or runs.
_exit_reasons = collections.OrderedDict()
_EXIT_REASONS_KEPT = 1000


def _remember(key, reason):
    _exit_reasons[key] = reason
    _exit_reasons.move_to_end(key)
    while len(_exit_reasons) > _EXIT_REASONS_KEPT:
        _exit_reasons.popitem(last=False)
    return reason


def _reason(message):
    """The hub's ``Spawn failed: <why>`` as ``<why>``, explained where it is cryptic."""
    if not message:
        return None
    message = str(message).strip()
    if message.startswith("Spawn failed:"):
        message = message.split(":", 1)[1].strip() or message
    return message


def _escape(text):
    """DockerSpawner's escaping of user and server names in container names."""
    return escape(text, set(string.ascii_lowercase + string.digits), escape_char="-").lower()


def _timestamp(iso):
    """The hub's ISO 8601 time as Unix time, or None."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ServersMixin:
    """What the API and the page share: reading and starting the user's servers."""

    #: Seconds a start waits for the images of before the service's start to
    #: be adopted (see service/starting.py).
    recovery_wait = starting.RECOVERY_WAIT

    def server_url(self, server_name, urlpath=""):
        user = self.current_user["name"]
        base = self.settings["hub_base_url"]
        url = f"{base}user/{quote(user, safe='')}/{quote(server_name, safe='')}/"
        if urlpath:
            url += urlpath.lstrip("/")
        return url

    async def hub_server_name(self, name):
        """The name the hub knows the server ``name`` by (see ``slug_for``)."""
        return slug_for(name) if await self.hub.has_display_names() else name

    async def user_servers(self):
        name = self.current_user["name"]
        try:
            model = await self.hub.request(
                "GET", f"users/{quote(name, safe='')}", params={"include_stopped_servers": "1"}
            )
        except HubError as e:
            raise web.HTTPError(502, f"JupyterHub answered: {e.message}") from None
        self.homes.watch_deaths()
        listed = await store.list_environments(self.sessions)
        envs = {e.uid: e for e in listed}
        # Servers started under tljh-repo2docker 3.x name only their image.
        by_image = {e.image_name: e for e in listed}
        self._options = {}
        servers = []
        facts = []
        for server_name, server in sorted((model.get("servers") or {}).items()):
            if not server_name:
                continue  # the default server is the hub's own business
            options = server.get("user_options") or {}
            env = envs.get(options.get("environment")) or by_image.get(options.get("image"))
            if server.get("ready"):
                status = "running"
            elif server.get("pending"):
                status = server["pending"]  # spawn or stop
            else:
                status = "stopped"
            display = server.get("display_name") or server_name
            self._options[display] = options
            servers.append(
                {
                    "name": display,
                    "server_name": server_name,
                    "environment": env.name if env else options.get("image"),
                    "environment_uid": env.uid if env else None,
                    "image": options.get("image"),
                    "status": status,
                    "url": self.server_url(server_name),
                    "last_activity": server.get("last_activity"),
                    "started": server.get("started"),
                    "outdated": None,
                    "version": None,
                    "newer_version": None,
                    "error": None,
                }
            )
            facts.append(self.add_engine_facts(servers[-1], server, env))
        await asyncio.gather(*facts)
        await self.add_version_facts(servers, envs)
        return servers

    async def add_version_facts(self, servers, envs):
        """Fill ``version`` (the number of the environment's version a server
        runs) and ``newer_version`` (a newer one exists: after a rollback, or
        a rebuild it was not restarted for). The image is the container's
        (``_image``, from add_engine_facts), else, without an engine, the
        name the server was started by. Stopped servers start from the
        current version: ``newer_version`` false."""
        by_name = not self.homes.available
        uids = {s["environment_uid"] for s in servers if s["environment_uid"]}
        kept = {uid: await store.list_versions(self.sessions, uid) for uid in sorted(uids)}
        for server in servers:
            image_id = server.pop("_image", None)
            env = envs.get(server["environment_uid"])
            if env is None:
                continue
            if server["status"] == "stopped":
                server["newer_version"] = False
                continue
            versions = kept.get(env.uid) or []
            if image_id is not None:
                found = next((v for v in versions if v.image_id == image_id), None)
            elif by_name:
                # BinderHub names each version's image by its commit.
                found = next((v for v in versions if v.image_name == server["image"]), None)
                if found is not None and server["outdated"] is None and env.image_id:
                    server["outdated"] = found.image_id != env.image_id
            else:
                continue
            if found is not None:
                server["version"] = found.number
                server["newer_version"] = any(v.number > found.number for v in versions)

    async def add_engine_facts(self, model, hub_model, env):
        """Fill ``outdated`` and ``error`` of the server ``model``.

        ``outdated``: the server's container runs another image than its
        environment's current build. The hub does not say which image a
        container runs, but its server model carries the spawner's state
        (the service's role has ``admin:servers``), where DockerSpawner keeps
        the container's id: the engine then tells its image. A stopped server
        is never outdated (starting it again uses the newest build); without
        an engine (BinderHub and Kubernetes) or a container it is unknown (null).

        ``error``: why its last start failed, or why it is not running when
        the hub thinks it is. The hub's progress stream keeps the failure of a
        stopped server. A server "starting" whose container has exited failed
        too (the hub only notices when its ``http_timeout`` ends), and so has a
        "running" one whose container is gone (the hub took another
        container's answer at the same address for its own): the container,
        or the engine's events once Docker removed it, tell why.
        """
        status = model["status"]
        key = (self.current_user["name"], model["server_name"])
        if status == "stopped":
            model["outdated"] = False if env is not None else None
            failure = _reason(await self.hub.spawn_failure(*key))
            if failure and failure.startswith(_NO_ADDRESS) and key not in _exit_reasons:
                failure = await self._no_address(failure, hub_model, key)
            model["error"] = _exit_reasons.get(key) or failure
            return
        homes = self.homes
        state = hub_model.get("state") or {}
        ref = state.get("object_id") or state.get("object_name")
        if not homes.available or status not in {"spawn", "running"}:
            return
        info = await homes.container(ref) if ref else None
        self.log.debug(
            "Server %s/%s is %s; its container %s is %s", *key, status, ref or "(unknown)",
            (info.get("State") or {}).get("Status") if info else "not found",
        )
        if info is None:
            await self._gone(model, hub_model, homes, ref, key)
            return
        model["_image"] = info.get("Image")  # for add_version_facts
        if env is not None and env.image_id:
            model["outdated"] = info.get("Image") != env.image_id
        container_state = info.get("State") or {}
        if container_state.get("Running"):
            if status == "running":
                _exit_reasons.pop(key, None)
        elif container_state.get("Status") in {"exited", "dead"}:
            model["error"] = _remember(key, await homes.exit_reason(info))

    async def _no_address(self, failure, hub_model, key):
        """DockerSpawner's cryptic failure when the container stopped before
        it had an address, said plainly, with the exit status if the engine
        still knows it."""
        homes = self.homes
        code = None
        if homes.available:
            code = await homes.exit_status(
                time.time() - 3600,
                image=(hub_model.get("user_options") or {}).get("image"),
                name_parts=[_escape(key[0]), _escape(key[1].lower())],
            )
        status = f" (it exited with status {code})" if code is not None else ""
        return _NO_ADDRESS_REASON.format(status=status, message=failure)

    async def _gone(self, model, hub_model, homes, ref, key):
        """The container of a starting or running server is gone: it exited,
        and Docker removed it at once (DockerSpawner's ``remove``). Say so,
        with its exit status from the engine's events."""
        if key in _exit_reasons:
            model["error"] = _exit_reasons[key]  # seen before it was removed
            return
        started = _timestamp(hub_model.get("started")) or time.time() - 3600
        if ref:
            code = await homes.exit_status(started - 5, ref=ref)
        else:
            # DockerSpawner forgets the container's id once it saw it gone;
            # its name holds the escaped user and server names (as in
            # DockerSpawner's name_template, which must have both for named
            # servers), and it ran the environment's image.
            image = (hub_model.get("user_options") or {}).get("image")
            parts = [_escape(key[0]), _escape(key[1].lower())]
            code = await homes.exit_status(started - 5, image=image, name_parts=parts)
        self.log.debug("Server %s/%s: exit status of its container from events: %s", *key, code)
        if code is None:
            return
        model["error"] = _remember(
            key,
            f"The server's container exited with status {code} and was removed "
            "(DockerSpawner's remove), so its output is gone",
        )

    async def find_built(self, environment):
        if not isinstance(environment, str) or not environment.strip():
            raise FieldError("environment", "is required")
        env = await store.find_environment(self.sessions, environment.strip())
        if env is None or not Access(env.owner, env.sharing).allows(self.viewer):
            # one the user may not use does not exist for them
            raise FieldError("environment", f"no environment named {environment!r}", status=404)
        # Right after an upgrade from 3.x, a built environment's image may
        # not be adopted yet: wait for the recovery (bounded), then say so.
        app = self.tljh_app
        return await starting.startable(
            self.sessions,
            env,
            getattr(app, "builds_ready", None),
            wait=self.recovery_wait,
            backend_problem=lambda: getattr(app, "builder_problem", None),
            unstartable=self.builds.builder.unstartable,
        )

    async def find_server(self, name):
        """The user's server called ``name`` (by display or hub name), or None."""
        servers = await self.user_servers()
        for server in servers:
            if server["name"] == name:
                return server
        for server in servers:
            if server["server_name"] == name:
                return server
        return None

    async def start(self, name, env=None, previous_options=None, server_name=None):
        """Start a server from ``env``, or restart a stopped one (the hub's
        ``server_name``) with its own options; returns the hub's name for it."""
        options = user_options(env) if env is not None else dict(previous_options or {})
        server_name = server_name or await self.hub_server_name(name)
        _exit_reasons.pop((self.current_user["name"], server_name), None)
        self.homes.watch_deaths()
        try:
            await self.hub.start_server(
                self.current_user["name"], server_name, options, display_name=name
            )
        except HubError as e:
            status = e.status if 400 <= e.status < 500 else 502
            reason = e.message
            if e.status >= 500 or reason.strip().lower() in _GENERIC:
                # The hub's answer is often generic ("error", "Internal Server
                # Error"): the server's progress or its container know better.
                still_starting, known = await self.failure_reason(server_name)
                if still_starting:
                    # The hub answered 500 while the start goes on (it does
                    # when its spawner takes longer than its slow_spawn_timeout
                    # and then looks dead): like a slow start, the caller
                    # follows it, and the list gives the reason if it fails.
                    self.log.info("Start of %s goes on after the hub's %d", server_name, e.status)
                    return server_name
                reason = known or reason
            raise web.HTTPError(status, f"JupyterHub could not start {name!r}: {reason}")
        return server_name

    async def failure_reason(self, server_name, wait=5):
        """``(still starting, reason)`` of the user's server ``server_name``
        whose start the hub refused: its error when known, waiting up to
        ``wait`` seconds for one while the hub still says it is starting."""
        deadline = time.monotonic() + wait
        while True:
            try:
                servers = await self.user_servers()
            except (web.HTTPError, ServiceError):
                return False, None
            server = next((s for s in servers if s["server_name"] == server_name), None)
            if server is None:
                return False, None
            if server["error"] or server["status"] != "spawn":
                return False, server["error"]
            if time.monotonic() > deadline:
                return True, None
            await asyncio.sleep(1)


class ServersAPIHandler(ServersMixin, APIHandler):
    @web.authenticated
    async def get(self):
        self.write_json({"servers": await self.user_servers()})

    @web.authenticated
    async def post(self):
        body = self.get_json_body()
        if {"imageName", "serverName", "userName"} & set(body):
            body = self.body_of_3x(body)
        name = check_server_name(body.get("name"))
        env = await self.find_built(body.get("environment"))
        existing = await self.find_server(name)
        if existing and existing["status"] != "stopped":
            raise web.HTTPError(409, f"name: the server {name!r} is already running")
        if existing:
            # A new environment for an existing server: remove the old one first,
            # so that the hub forgets its state and the spawner starts fresh.
            try:
                await self.hub.stop_server(
                    self.current_user["name"], existing["server_name"], remove=True
                )
            except HubError as e:
                raise web.HTTPError(502, f"JupyterHub could not replace {name!r}: {e.message}")
            name = existing["name"]
        server_name = await self.start(name, env)
        self.write_json(
            {
                "name": name,
                "server_name": server_name,
                "environment": env.name,
                "url": self.server_url(server_name),
            },
            status=202,
        )


    def body_of_3x(self, body):
        """tljh-repo2docker 3.x's ``{"imageName", "serverName", "userName"}``, as ours."""
        self.set_header("Deprecation", "true")
        self.set_header("Link", f'<{self.url("api/servers")}>; rel="successor-version"')
        self.log.warning(
            'POST api/servers with "imageName" is a tljh-repo2docker 3.x call: send '
            '{"name", "environment"} instead'
        )
        user = body.get("userName")
        if user not in (None, "", self.current_user["name"]):
            raise FieldError(
                "userName", "servers can only be started for yourself (leave userName out)",
                status=403,
            )
        unknown = sorted(set(body) - {"imageName", "serverName", "userName"})
        if unknown:
            raise FieldError(unknown[0], "is not a known field (with imageName and serverName)")
        return {"name": body.get("serverName"), "environment": body.get("imageName")}


class ServerAPIHandler(ServersMixin, APIHandler):
    @web.authenticated
    async def delete(self, name):
        remove = self.get_argument("remove", "false").lower() in {"1", "true", "yes"}
        server = await self.find_server(name)
        if server is None:
            check_server_name(name)  # a name no server can have is a bad request
            raise web.HTTPError(404, f"You have no server named {name!r}")
        try:
            await self.hub.stop_server(self.current_user["name"], server["server_name"], remove=remove)
        except HubError as e:
            status = e.status if 400 <= e.status < 500 else 502
            raise web.HTTPError(status, f"JupyterHub could not stop {name!r}: {e.message}")
        if remove:
            _exit_reasons.pop((self.current_user["name"], server["server_name"]), None)
        self.set_status(202 if not remove else 204)
        self.finish()


class ServersPageHandler(ServersMixin, BaseHandler):
    """The Servers page; with ``?name=…&environment=…`` a direct launch link."""

    @web.authenticated
    async def get(self):
        name = self.get_argument("name", None)
        if name is None:
            return await self.render_page()
        environment = self.get_argument("environment", None)
        urlpath = self.get_argument("urlpath", "")
        try:
            check_server_name(name)
            server = await self.find_server(name)
            if server and server["status"] == "running":
                return self.redirect(self.server_url(server["server_name"], urlpath))
            if server is None:
                if not environment:
                    raise FieldError("environment", "is required to create a new server")
                env = await self.find_built(environment)
                server_name = await self.start(name, env)
            else:
                name, server_name = server["name"], server["server_name"]
                if server["status"] == "stopped":
                    await self.start(
                        name, previous_options=self._options.get(name), server_name=server_name
                    )
        except (web.HTTPError, ServiceError) as e:
            self.set_status(e.status_code)
            return await self.render_page(error=self.error_message(e))
        await self.render_page(
            launching=name,
            launching_server=server_name,
            launch_url=self.server_url(server_name, urlpath),
        )

    async def render_page(self, error=None, launching=None, launching_server=None, launch_url=None):
        environments = [
            store.as_dict(e, admin=False)
            for e in await store.list_environments(self.sessions)
            if e.image_id is not None and Access(e.owner, e.sharing).allows(self.viewer)
        ]
        try:
            servers = await self.user_servers()
        except (web.HTTPError, ServiceError) as e:
            servers, error = [], error or self.error_message(e)
        self.finish(
            self.render_template(
                "servers.html",
                page="servers",
                servers=servers,
                environments=environments,
                error=error,
                launching=launching,
                launching_server=launching_server,
                launch_url=launch_url,
            )
        )


default_handlers = [
    (r"servers", ServersPageHandler),
    (r"api/servers", ServersAPIHandler),
    (r"api/servers/([^/]+)", ServerAPIHandler),
]
