"""Base classes: one per kind of response (HTML page, JSON API, event stream)."""

import functools
import json
import traceback
from http.client import responses

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from .. import TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE
from ..access import Viewer
from ..db.errors import database_unavailable
from ..errors import FieldError, ServiceError  # noqa: F401 (FieldError: the handlers import it here)
from .bodylimit import body_limit


def admin_only(method):
    """Allow the method only to hub admins and users holding the admin scope.

    Use below ``@web.authenticated``, so that anonymous requests are sent to
    log in first.
    """

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if not self.is_admin:
            raise web.HTTPError(
                403,
                "Only administrators may open this page: ask a hub administrator for the "
                "admin permission of tljh-repo2docker (its admin scope)",
            )
        return await method(self, *args, **kwargs)

    return wrapper


def builders_only(method):
    """Allow the method to admins and holders of the build scope (who add
    environments of their own). Use below ``@web.authenticated``."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if not (self.is_admin or self.is_builder):
            raise web.HTTPError(
                403,
                "Only administrators and people allowed to build environments may do this: "
                "ask a hub administrator for the build or admin permission of tljh-repo2docker "
                "(its build or admin scope)",
            )
        return await method(self, *args, **kwargs)

    return wrapper


DATABASE_UNAVAILABLE = "The database is not available: try again shortly"


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Authentication through JupyterHub, and HTML pages and errors."""

    is_admin = False
    #: Holds the build scope: may add environments of their own.
    is_builder = False
    #: Who asks, for access.Access (set by prepare()).
    viewer = Viewer("")
    #: HTTP methods that need the builds recovered (the build backend reachable).
    builds_needed_for = ()
    #: Whether the handler needs the database (all but the root's redirect).
    needs_database = True

    @property
    def log(self):
        return self.settings["tljh_app"].log

    @property
    def tljh_app(self):
        return self.settings["tljh_app"]

    @property
    def sessions(self):
        return self.settings["sessions"]

    @property
    def builds(self):
        return self.settings["build_manager"]

    @property
    def hub(self):
        return self.settings["hub_client"]

    @property
    def homes(self):
        """Users' home volumes (service/engine.py), made by the app's ``init_homes``."""
        return self.tljh_app.homes

    @property
    def disk(self):
        """The engine's disk (service/disk_usage.py), made by the app's ``init_disk``."""
        return self.tljh_app.disk

    async def prepare(self):
        # Until the database (and, for changes, the build backend) can be
        # used, say so instead of failing on the first query.
        reason = self.needs_database and self.tljh_app.not_ready(
            self.request.method in self.builds_needed_for
        )
        if reason:
            self.set_header("Retry-After", "5")
            raise web.HTTPError(503, reason)
        # Identify the user asynchronously: the hub's answer is cached on the
        # handler, so the synchronous ``current_user`` below does no I/O.
        user = await self.hub_auth.get_user(self, sync=False)
        if user is not None:
            user = self.current_user
        if user:
            self.is_admin = TLJH_R2D_ADMIN_SCOPE in user.get("scopes", ()) or bool(
                user.get("admin")
            )
            if not self.is_admin and user.get("kind", "user") == "user":
                self.is_admin = await self.hub.is_admin(user["name"])
            self.is_builder = TLJH_R2D_BUILD_SCOPE in user.get("scopes", ())
            groups = frozenset()
            if not self.is_admin and user.get("kind", "user") == "user":
                groups = await self.hub.user_groups(user["name"])
            self.viewer = Viewer(user["name"], groups, self.is_admin)

    def url(self, *parts):
        """A URL under the service's prefix."""
        path = "/".join(p.strip("/") for p in parts if p)
        return self.settings["base_url"] + path

    def render_template(self, name, **ns):
        template = self.settings["jinja2_env"].get_template(name)
        user = self.current_user
        context = {
            "base_url": self.settings["base_url"],
            "hub_prefix": self.settings["hub_prefix"],
            "static_url": self.static_url,
            "user": user,
            "is_admin": self.is_admin,
            "is_builder": self.is_builder,
            "xsrf_token": self.xsrf_token.decode("ascii"),
            "version": self.settings["version"],
            "url": self.url,
            "custom_links": self.settings.get("custom_links") or {},
            "logo_src": self.settings.get("logo_src"),
            "logo_href": self.settings.get("logo_href"),
        }
        context.update(ns)
        return template.render(**context)

    def send_error(self, status_code=500, **kwargs):
        # The one place where the domain's errors (errors.py) become HTTP:
        # Tornado answers 500 for any exception but its own HTTPError.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ServiceError):
            status_code = exc.status_code
        super().send_error(status_code, **kwargs)

    def error_message(self, exc):
        """The message for the user of an HTTPError or a domain error, else None."""
        if isinstance(exc, ServiceError):
            for name, value in exc.headers.items():
                self.set_header(name, value)
            return exc.log_message
        if isinstance(exc, web.HTTPError):
            return exc.log_message
        return None

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self.error_message(exc)
        if not message:
            message = responses.get(status_code, "Unknown error")
        try:
            html = self.render_template(
                "error.html", status_code=status_code, message=message
            )
        except Exception:
            self.log.exception("Could not render the error page")
            html = f"<h1>{status_code}</h1>"
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(html)

    def log_exception(self, typ, value, tb):
        if isinstance(value, (web.HTTPError, ServiceError)):
            if value.log_message and value.status_code >= 500:
                self.log.warning("%d %s: %s", value.status_code, self.request.path, value.log_message)
            return
        self.log.error(
            "Uncaught error in %s %s\n%s",
            self.request.method,
            self.request.path,
            "".join(traceback.format_exception(typ, value, tb)),
        )


class APIHandler(BaseHandler):
    """JSON in, JSON out; errors as ``{"status": N, "message": "..."}``."""

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self):
        limit = body_limit(self.tljh_app, self.request.method, self.request.path)
        if len(self.request.body or b"") > limit:
            raise web.HTTPError(413, f"The request body is larger than {limit} bytes")
        await super().prepare()

    def get_login_url(self):
        # An API client cannot follow a login redirect: answer 403 instead.
        raise web.HTTPError(403, "Log in through JupyterHub, or send 'Authorization: token <API token>'")

    def get_json_body(self):
        """The request body as JSON, or a 400 that says what is wrong."""
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body.decode("utf-8"))
            # Lone surrogates ("\ud800") are valid JSON but not text: no
            # database would store them.
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeDecodeError:
            raise web.HTTPError(400, "The request body is not valid UTF-8") from None
        except UnicodeEncodeError:
            raise web.HTTPError(
                400, "The request body is not valid JSON: a string holds a lone surrogate"
            ) from None
        except json.JSONDecodeError as e:
            raise web.HTTPError(400, f"The request body is not valid JSON: {e.msg}") from None
        except (ValueError, RecursionError):
            # Integers of more digits than Python converts, or nesting deeper
            # than the parser goes.
            raise web.HTTPError(
                400, "The request body is not valid JSON: a number too long or nesting too deep"
            ) from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The request body must be a JSON object")
        return body

    def write_json(self, data, status=200):
        self.set_status(status)
        self.finish(json.dumps(data))

    def log_exception(self, typ, value, tb):
        if database_unavailable(value, tb):
            first = str(value).splitlines()[0] if str(value) else ""
            self.log.warning(
                "503 %s %s: database unavailable: %s: %s",
                self.request.method, self.request.path, typ.__name__, first,
            )
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code, **kwargs):
        _, exc, tb = kwargs.get("exc_info", (None, None, None))
        message = None
        if exc is not None and status_code == 500 and database_unavailable(exc, tb):
            status_code = 503
            self.set_status(503)
            self.set_header("Retry-After", "5")
            message = DATABASE_UNAVAILABLE
        if isinstance(exc, (web.HTTPError, ServiceError)):
            message = self.error_message(exc)
        if not message:
            message = responses.get(status_code, "Unknown error")
        body = {"status": status_code, "message": message}
        field = getattr(exc, "field", None)
        if field:
            body["field"] = field
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))


class NotFoundAPIHandler(APIHandler):
    """JSON 404 for unknown ``api/`` URLs."""

    async def prepare(self):
        raise web.HTTPError(404, f"No API endpoint at {self.request.path}")
