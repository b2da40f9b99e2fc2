"""Users' homes (Docker volumes, or Kubernetes claims with ``kube_namespace``): the
admins' list, removal, and page."""

from tornado import web

from ..db import store
from ..service.engine import EngineError, HomeInUse, HomeNotFound, valid_volume_name
from .base import APIHandler, BaseHandler, FieldError, admin_only

NO_ENGINE = (
    "Homes are Docker volumes on the engine the service builds with; with this build "
    "backend ({backend}) the service has no Docker engine, so it cannot list them. On "
    "Kubernetes, users' homes are the persistent volume claims of KubeSpawner: set "
    "TljhRepo2Docker.kube_namespace to the spawner's namespace to list them here, "
    "or manage them with kubectl."
)


class HomesMixin:
    @property
    def user_homes(self):
        """Where users' homes are: the app's ``user_homes`` (claims with
        ``kube_namespace``), else the Docker engine's volumes."""
        return getattr(self.tljh_app, "user_homes", None) or self.homes

    def unavailable(self):
        """Why the homes cannot be listed here, or None."""
        homes = self.user_homes
        if homes.available:
            return None
        reason = getattr(homes, "unavailable_reason", None)
        return reason or NO_ENGINE.format(backend=self.tljh_app.builder.__class__.__name__)

    def require_engine(self):
        reason = self.unavailable()
        if reason:
            raise web.HTTPError(501, reason)
        return self.user_homes

    def check_name(self, homes, name):
        """400 when ``name`` cannot name a home: the claims' own rule, else Docker's."""
        own_rule = getattr(homes, "check_name", None)
        if own_rule is not None:
            own_rule(name)
        elif not valid_volume_name(name):
            raise FieldError(
                "name",
                f"{name[:100]!r} cannot be a Docker volume name: up to 255 letters, digits, "
                "'_', '.' or '-', starting with a letter or digit",
            )

    async def list_homes(self):
        homes, note = await self.require_engine().list()
        names = {e.uid: e.name for e in await store.list_environments(self.sessions)}
        for home in homes:
            home["environment_name"] = names.get(home["environment"])
        return {"homes": homes, "sizes_note": note}


class HomesAPIHandler(HomesMixin, APIHandler):
    @web.authenticated
    @admin_only
    async def get(self):
        try:
            self.write_json(await self.list_homes())
        except EngineError as e:
            raise web.HTTPError(503, str(e)) from None


class HomeAPIHandler(HomesMixin, APIHandler):
    @web.authenticated
    @admin_only
    async def delete(self, name):
        homes = self.require_engine()
        self.check_name(homes, name)
        try:
            await homes.delete(name)
        except HomeNotFound:
            raise FieldError("name", f"there is no home named {name!r} on this hub", status=404)
        except HomeInUse as e:
            raise FieldError("name", str(e), status=409) from None
        except EngineError as e:
            raise web.HTTPError(503, str(e)) from None
        self.log.info("%s removed the home %s", self.current_user["name"], name)
        self.set_status(204)
        self.finish()


class HomesPageHandler(HomesMixin, BaseHandler):
    @web.authenticated
    @admin_only
    async def get(self):
        self.finish(
            self.render_template("homes.html", page="homes", unavailable=self.unavailable())
        )


default_handlers = [
    (r"homes", HomesPageHandler),
    (r"api/homes", HomesAPIHandler),
    (r"api/homes/([^/]+)", HomeAPIHandler),
]
