"""JSON API of an environment's versions: its history and rollback.

The logic is :mod:`tljh_repo2docker.service.version_history`; who may do what is the rule
of the environment itself (see ``handlers/environments.py``): those who see
it see its history, its owner and admins roll it back.
"""

from tornado import web

from ..service import version_history as versions
from ..access import Access
from .base import APIHandler, FieldError
from .environments import EnvironmentAPIMixin


class VersionsAPIHandler(EnvironmentAPIMixin, APIHandler):
    # Not builds_needed_for: the history reads the database; with the engine
    # away, only the server counts are unknown (null).

    @web.authenticated
    async def get(self, uid):
        env = await self.get_env(uid)
        manages = Access(env.owner, env.sharing).manages(self.viewer)
        models = await versions.history(
            self.sessions, self.tljh_app.builder, self.hub, env, manages=manages
        )
        self.write_json({"versions": models})


class RollbackAPIHandler(EnvironmentAPIMixin, APIHandler):
    builds_needed_for = ("POST",)

    @web.authenticated
    async def post(self, uid):
        env = await self.get_env(uid, manage=True)
        try:
            version_id = versions.parse_version_id(self.get_json_body())
        except ValueError as e:
            raise FieldError("version", str(e)) from None
        if self.builds.is_active(env.uid):
            raise web.HTTPError(
                409, f"The environment is {env.status}: roll back once its build has ended"
            )
        try:
            version = await versions.rollback(
                self.sessions, self.tljh_app.builder, env, version_id
            )
        except versions.RollbackError as e:
            if e.message.startswith("version: "):
                raise FieldError(
                    "version", e.message.removeprefix("version: "), status=e.status
                ) from None
            raise web.HTTPError(e.status, e.message) from None
        self.log.info(
            "%s rolled environment %s back to version %d (%s)",
            self.current_user["name"], env.uid, version.number, version.image_id,
        )
        model = self.model(await self.get_env(uid))
        model["version"] = version.id
        self.write_json(model)


default_handlers = [
    (r"api/environments/([^/]+)/versions", VersionsAPIHandler),
    (r"api/environments/([^/]+)/rollback", RollbackAPIHandler),
]
