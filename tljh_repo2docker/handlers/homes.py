"""Users' homes (Docker volumes made by the spawner): the admins' list, removal, and page."""

from tornado import web

from ..db import store
from ..service.engine import EngineError, HomeInUse, HomeNotFound, valid_volume_name
from .base import APIHandler, BaseHandler, FieldError, admin_only

NO_ENGINE = (
    "Homes are Docker volumes on the engine the service builds with; with this build "
    "backend ({backend}) the service has no Docker engine, so it cannot list them. On "
    "Kubernetes, users' homes are the persistent volume claims of KubeSpawner: manage them "
    "with kubectl."
)


class HomesMixin:
    def require_engine(self):
        if not self.homes.available:
            raise web.HTTPError(
                501, NO_ENGINE.format(backend=self.tljh_app.builder.__class__.__name__)
            )
        return self.homes

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
        if not valid_volume_name(name):
            raise FieldError(
                "name",
                f"{name[:100]!r} cannot be a Docker volume name: up to 255 letters, digits, "
                "'_', '.' or '-', starting with a letter or digit",
            )
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
        unavailable = None
        if not self.homes.available:
            unavailable = NO_ENGINE.format(backend=self.tljh_app.builder.__class__.__name__)
        self.finish(self.render_template("homes.html", page="homes", unavailable=unavailable))


default_handlers = [
    (r"homes", HomesPageHandler),
    (r"api/homes", HomesAPIHandler),
    (r"api/homes/([^/]+)", HomeAPIHandler),
]
