"""The user's servers: JSON API, the Servers page, and direct launch links.

The rules (names, the list's facts, which environment a start uses, why a
start failed) are in ``service/servers.py``; here the requests are read, the
hub is asked, and the answers are written.
"""

import asyncio
import time
from urllib.parse import quote

from tornado import web

from ..access import Access
from ..contract import user_options, with_content
from ..db import store
from ..errors import ServiceError
from ..hub_client import HubError
from ..service import environment_list
from ..service import servers as rules
from ..service.content import check_urlpath, parse_content
from ..service import starting
from ..service.servers import _escape, _reason, check_server_name, slug_for
from .base import APIHandler, BaseHandler, FieldError

__all__ = [
    "ServersMixin",
    "ServersAPIHandler",
    "ServerAPIHandler",
    "ServersPageHandler",
    "default_handlers",
    # the rules' names that were defined here, for code that imports them from here
    "check_server_name",
    "slug_for",
    "_escape",
    "_reason",
]


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
        return await rules.hub_server_name(self.hub, name)

    async def user_servers(self):
        name = self.current_user["name"]
        try:
            model = await self.hub.request(
                "GET", f"users/{quote(name, safe='')}", params={"include_stopped_servers": "1"}
            )
        except HubError as e:
            raise web.HTTPError(502, f"JupyterHub answered: {e.message}") from None
        servers, self._options = await rules.UserServers(
            name, sessions=self.sessions, hub=self.hub, homes=self.homes, log=self.log
        ).read(model, self.server_url)
        return servers

    async def find_built(self, environment):
        app = self.tljh_app
        return await rules.find_built(
            self.sessions,
            environment,
            self.viewer,
            getattr(app, "builds_ready", None),
            wait=self.recovery_wait,
            backend_problem=lambda: getattr(app, "builder_problem", None),
            unstartable=self.builds.builder.unstartable,
        )

    async def find_server(self, name):
        """The user's server called ``name`` (by display or hub name), or None."""
        return rules.find_server(await self.user_servers(), name)

    async def start(self, name, env=None, previous_options=None, server_name=None, content=None):
        """Start a server from ``env``, or restart a stopped one (the hub's
        ``server_name``) with its own options; returns the hub's name for it.
        ``content`` (service/content.py): a repository pulled into the home first."""
        options = user_options(env) if env is not None else dict(previous_options or {})
        if content is not None:
            options = with_content(options, content)
        server_name = server_name or await self.hub_server_name(name)
        rules.forget(self.current_user["name"], server_name)
        self.homes.watch_deaths()
        try:
            await self.hub.start_server(
                self.current_user["name"], server_name, options, display_name=name
            )
        except HubError as e:
            status = e.status if 400 <= e.status < 500 else 502
            reason = e.message
            if e.status >= 500 or rules.says_nothing(reason):
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
        if rules.is_3x_body(body):
            body = self.body_of_3x(body)
        name = check_server_name(body.get("name"))
        content = parse_content(body)
        urlpath = content["urlpath"] if content else self.checked_urlpath(body)
        env = await self.find_built(body.get("environment"))
        existing = await self.find_server(name)
        rules.check_replaceable(existing, name)
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
        server_name = await self.start(name, env, content=content)
        answer = {
            "name": name,
            "server_name": server_name,
            "environment": env.name,
            "url": self.server_url(server_name, urlpath),
        }
        if content:
            answer["content"] = content
        self.write_json(answer, status=202)

    def checked_urlpath(self, body):
        """``urlpath`` without content: where the server opens."""
        value = body.get("urlpath")  # a string, if any: parse_content() checked it
        return check_urlpath(value.strip()) if isinstance(value, str) and value.strip() else ""

    def body_of_3x(self, body):
        """tljh-repo2docker 3.x's ``{"imageName", "serverName", "userName"}``, as ours."""
        self.set_header("Deprecation", "true")
        self.set_header("Link", f'<{self.url("api/servers")}>; rel="successor-version"')
        self.log.warning(
            'POST api/servers with "imageName" is a tljh-repo2docker 3.x call: send '
            '{"name", "environment"} instead'
        )
        return rules.body_of_3x(body, self.current_user["name"])


class ServerAPIHandler(ServersMixin, APIHandler):
    @web.authenticated
    async def delete(self, name):
        remove = self.get_argument("remove", "false").lower() in {"1", "true", "yes"}
        server = rules.check_found(await self.find_server(name), name)
        try:
            await self.hub.stop_server(self.current_user["name"], server["server_name"], remove=remove)
        except HubError as e:
            status = e.status if 400 <= e.status < 500 else 502
            raise web.HTTPError(status, f"JupyterHub could not stop {name!r}: {e.message}")
        if remove:
            rules.forget(self.current_user["name"], server["server_name"])
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
            content = parse_content(
                {f: self.get_argument(f, None) for f in ("content", "content_ref", "urlpath")}
            )
            if content:
                urlpath = content["urlpath"]
            elif urlpath:
                urlpath = check_urlpath(urlpath.strip())
            server = await self.find_server(name)
            if server and server["status"] == "running":
                return self.redirect(self.server_url(server["server_name"], urlpath))
            if server is None:
                if not environment:
                    raise FieldError("environment", "is required to create a new server")
                env = await self.find_built(environment)
                server_name = await self.start(name, env, content=content)
            else:
                name, server_name = server["name"], server["server_name"]
                if server["status"] == "stopped":
                    await self.start(
                        name, previous_options=self._options.get(name), server_name=server_name,
                        content=content,
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
        usable = [
            e
            for e in await store.list_environments(self.sessions)
            if e.image_id is not None and Access(e.owner, e.sharing).allows(self.viewer)
        ]
        # What each one's current version holds, for the New Server dialog (one query).
        inside = await environment_list.summaries(self.sessions, [e.uid for e in usable]) if usable else {}
        environments = [store.as_dict(e, admin=False, summary=inside.get(e.uid)) for e in usable]
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
