"""JSON API of an environment's versions: its history, what each holds, and rollback.

``versions/{id}/packages`` lists a version's packages and
``versions/{id}/diff?from={other}`` the change from another version to it
(:mod:`tljh_repo2docker.service.packages`); both for whoever sees the history.

The logic is :mod:`tljh_repo2docker.service.version_history`; who may do what is the rule
of the environment itself (see ``handlers/environments.py``): those who see
it see its history, its owner and admins roll it back.
"""

import re

from tornado import web

from ..db import store
from ..service import files_source, packages
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


_VERSION_ID = re.compile(r"^[0-9]{1,18}$")


class VersionAPIMixin(EnvironmentAPIMixin):
    async def get_version(self, env, text, field):
        """The stored Version ``text`` (an id in the URL or the query) of
        ``env``: 400 naming ``field`` when it is not an id, 404 when it is not
        one of ``env``'s versions."""
        if not _VERSION_ID.match(text) or int(text) < 1:
            raise FieldError(field, f"{text[:40]!r} is not a version id")
        version = await store.get_version(self.sessions, env.uid, int(text))
        if version is None:
            raise FieldError(field, f"no version {text} of this environment", status=404)
        return version


class VersionPackagesAPIHandler(VersionAPIMixin, APIHandler):
    @web.authenticated
    async def get(self, uid, version_id):
        env = await self.get_env(uid)
        version = await self.get_version(env, version_id, "version")
        self.write_json(packages.packages_answer(version))


class VersionDiffAPIHandler(VersionAPIMixin, APIHandler):
    @web.authenticated
    async def get(self, uid, version_id):
        env = await self.get_env(uid)
        version = await self.get_version(env, version_id, "version")
        other = self.get_query_argument("from", None)
        if other is None or not other.strip():
            raise FieldError("from", "is required: the id of the version to compare with")
        old = await self.get_version(env, other.strip(), "from")
        answer = packages.diff_answer(old, version)
        if env.source == "files":
            answer["files"] = files_source.diff_files(old.files, version.files)
        self.write_json(answer)


class VersionFilesAPIHandler(VersionAPIMixin, APIHandler):
    """The files a version of an environment from files was built from."""

    @web.authenticated
    async def get(self, uid, version_id):
        env = await self.get_env(uid)
        version = await self.get_version(env, version_id, "version")
        if env.source != "files":
            raise FieldError(
                "version", "this environment is not built from files: its versions have none",
                status=404,
            )
        self.write_json({"files": dict(version.files or {})})


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
        model = await self.full_model(await self.get_env(uid))
        model["version"] = version.id
        self.write_json(model)


default_handlers = [
    (r"api/environments/([^/]+)/versions", VersionsAPIHandler),
    (r"api/environments/([^/]+)/versions/([^/]+)/packages", VersionPackagesAPIHandler),
    (r"api/environments/([^/]+)/versions/([^/]+)/diff", VersionDiffAPIHandler),
    (r"api/environments/([^/]+)/versions/([^/]+)/files", VersionFilesAPIHandler),
    (r"api/environments/([^/]+)/rollback", RollbackAPIHandler),
]
