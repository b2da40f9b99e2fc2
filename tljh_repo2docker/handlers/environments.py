"""JSON API of environments: list, add, show, share, rebuild, cancel, delete.

(Rebuilds are queued by service/lifecycle.py, the one path shared with the
ref poller and the webhook.)

Who may do what is :mod:`tljh_repo2docker.access`: an environment that a
user may not see is answered 404, one they see but do not manage 403.
"""

from tornado import web

from ..access import EVERYONE, PRIVATE, Access, SharingError, environment_for, parse_sharing
from ..db import store
from ..service import fields as envs
from ..service import lifecycle as rebuilds
from ..service.environment_list import EnvironmentList, summaries
from ..service.ref_watcher import SKIPPED
from .base import APIHandler, FieldError, admin_only, builders_only

#: A list answered from memory checks that the database still answers at
#: most this often (seconds): a database lost shows as 503 within that time.
LIST_PING_SECONDS = 1.0


class EnvironmentAPIMixin:
    async def get_env(self, uid, manage=False):
        """The environment ``uid`` as this user may see it: 404 when it does
        not exist for them, 403 when ``manage`` and they are neither its owner
        nor an admin."""
        env = environment_for(
            self.viewer, await store.get_environment(self.sessions, uid), uid, manage=manage
        )
        if manage and not (self.is_admin or self.is_builder):
            raise web.HTTPError(
                403, "Only people allowed to build environments may change one: ask a hub administrator "
                "for the permission to build (tljh-repo2docker's build scope)"
            )
        return env

    def model(self, env, summary=None):
        manages = Access(env.owner, env.sharing).manages(self.viewer)
        return store.as_dict(
            env, position=self.builds.position(env.uid), admin=manages, summary=summary
        )

    async def full_model(self, env):
        """:meth:`model` with the ``summary`` of the current version (one query)."""
        lines = await summaries(self.sessions, [env.uid]) if env.image_id else {}
        return self.model(env, lines.get(env.uid))

    async def one_model(self, env):
        """The model of one environment: :meth:`full_model` with, for an
        environment from files, its ``files`` (never in the list)."""
        model = await self.full_model(env)
        if env.source == "files":
            model["files"] = dict(env.files or {})
        return model

    def visible(self, env):
        """Whether ``env`` exists for this user (see access.Access.shows)."""
        return Access(env.owner, env.sharing).shows(self.viewer, env.image_id is not None)

    async def delete_environment(self, env):
        """Remove ``env`` (service/lifecycle.py); what its registry kept, with push on."""
        removed = await self.tljh_app.lifecycle.remove_environment(env)
        self.log.info("%s deleted environment %s", self.current_user["name"], env.uid)
        return removed

    def deprecated(self, replacement):
        """Mark the answer of a tljh-repo2docker 3.x call kept as an alias."""
        self.set_header("Deprecation", "true")
        self.set_header("Link", f'<{self.url(replacement)}>; rel="successor-version"')
        self.log.warning(
            "%s %s is a tljh-repo2docker 3.x call: use %s instead",
            self.request.method, self.request.path, replacement,
        )


class EnvironmentsAPIHandler(EnvironmentAPIMixin, APIHandler):
    builds_needed_for = ("POST", "DELETE")

    @web.authenticated
    async def get(self):
        listing = self.settings.get("environment_list")
        if listing is None:
            listing = self.settings["environment_list"] = EnvironmentList(self.sessions)
        version = listing.version
        positions = self.builds.positions()
        body = None
        if _accepts_gzip(self.request.headers.get("Accept-Encoding", "")):
            # None until compressed (see environment_list): then plain.
            body = await listing.gzip_body(positions, self.viewer, builds=self.builds)
        gzipped = body is not None
        if gzipped:
            self.set_header("Content-Encoding", "gzip")
        else:
            body = await listing.body(positions, self.viewer, builds=self.builds)
        self.set_header("Vary", "Accept-Encoding")
        self.set_header("Etag", listing.etag(self.viewer, gzipped))
        if version == listing.version:
            # Nothing was read: the answer holds only while the database
            # answers, so when it does not, say so (503) as a read would
            # (asked at most once per LIST_PING_SECONDS: under load, that
            # query was most of what a list cost beyond the proxy's part).
            await store.ping(self.sessions, fresh_for=LIST_PING_SECONDS)
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        self.set_status(200)
        self.finish(body)

    @web.authenticated
    @builders_only
    async def post(self):
        body = self.get_json_body()
        sharing = body.pop("sharing", None)
        fields, credentials = envs.parse_request(body, self.tljh_app, self.tljh_app.builder)
        default = EVERYONE if self.is_admin else PRIVATE
        try:
            fields["sharing"] = parse_sharing(sharing, default) if sharing is not None else dict(default)
        except SharingError as e:
            raise FieldError(e.field, e.reason) from None
        if not self.is_admin:
            fields = self.tljh_app.quotas.check_request(fields, body)
        env = await self.tljh_app.lifecycle.add_environment(
            fields, owner=self.current_user["name"],
            check_quota=not self.is_admin, credentials=credentials,
        )
        model = self.model(env)
        if env.source == "files":
            model["files"] = dict(env.files or {})
        self.write_json(model, status=202)


    @web.authenticated
    @admin_only
    async def delete(self):
        """tljh-repo2docker 3.x's delete: ``{"name": <uid>}`` in the body."""
        self.deprecated("api/environments/{uid}")
        uid = self.get_json_body().get("name")
        if not isinstance(uid, str) or not uid:
            raise envs.FieldError(
                "name", "give the environment's uid (or use DELETE api/environments/{uid})"
            )
        env = await store.get_environment(self.sessions, uid) or await store.find_environment(
            self.sessions, uid
        )
        if env is None:
            raise web.HTTPError(404, f"No environment with uid {uid!r}")
        await self.delete_environment(env)
        self.write_json({"status": "ok"})


class LegacyImagesAPIHandler(EnvironmentAPIMixin, APIHandler):
    """tljh-repo2docker 3.x's list: ``{"images": [...]}`` with 3.x's field names."""

    @web.authenticated
    async def get(self):
        self.deprecated("api/environments")
        images = []
        for env in await store.list_environments(self.sessions):
            if not self.visible(env):
                continue
            images.append(
                {
                    "uid": env.uid,
                    "image_name": env.image_name,
                    "display_name": env.name,
                    "status": env.status,
                    "repo": env.repo,
                    "ref": env.ref,
                    "mem_limit": env.memory or "",
                    "cpu_limit": "" if env.cpu is None else f"{env.cpu:g}",
                    "node_selector": env.node_selector or {},
                    "owner": env.owner,
                    "creation_date": env.created.strftime("%d/%m/%Y") if env.created else "",
                }
            )
        self.write_json({"images": images})


class EnvironmentAPIHandler(EnvironmentAPIMixin, APIHandler):
    builds_needed_for = ("DELETE",)

    @web.authenticated
    async def get(self, uid):
        env = await self.get_env(uid)
        self.write_json(await self.one_model(env))

    @web.authenticated
    async def patch(self, uid):
        """Change who the environment is shared with (``{"sharing": {...}}``),
        whether it is rebuilt when its ref moves (``{"auto_rebuild": bool}``)
        and on which pushes (``rebuild_on``), its ``check_command`` and its
        ``builder_image`` (both used from the next build on), and the
        ``files`` (or an ``archive`` of them) of an environment from files,
        which are built at once."""
        body = self.get_json_body()
        changeable = {"sharing", "auto_rebuild", "files", "archive", *envs.TRUST_FIELDS}
        unknown = sorted(set(body) - changeable)
        if unknown:
            raise FieldError(
                unknown[0],
                f"is not a field that can be changed (only {', '.join(sorted(changeable))})",
            )
        if not body:
            raise FieldError("sharing", "give sharing or auto_rebuild")
        env = await self.get_env(uid, manage=True)
        new_files = self.new_files(env, body)
        changes = envs.parse_trust_fields(
            body, self.tljh_app, self.tljh_app.builder, defaults=False
        )
        if ("rebuild_on" in changes or "builder_image" in changes) and (
            env.remote_error or ""
        ).startswith(SKIPPED):
            changes["remote_error"] = None  # a skipped push is looked at again
        if "auto_rebuild" in body:
            changes["auto_rebuild"] = envs.parse_auto_rebuild(body, private=env.private)
        if "sharing" in body:
            try:
                changes["sharing"] = parse_sharing(body["sharing"], env.sharing)
            except SharingError as e:
                raise FieldError(e.field, e.reason) from None
        if changes.get("auto_rebuild") is False:
            changes["remote_error"] = None
        if changes.get("auto_rebuild") and env.source == "files":
            raise FieldError(
                "auto_rebuild",
                "an environment from files has no repository to watch: change its files instead",
            )
        message = None
        if new_files is not None:
            # Queued through the one admission path, the other changes
            # stored with the queued state (nothing stored when it refuses).
            message = await self.queue_files(env, new_files, changes)
        elif changes:
            await store.update_environment(self.sessions, env.uid, **changes)
        sharing = changes.get("sharing")
        if sharing is not None:
            self.log.info(
                "%s changed the sharing of environment %s: everyone=%s, %d users, %d groups",
                self.current_user["name"], env.uid, sharing["everyone"],
                len(sharing["users"]), len(sharing["groups"]),
            )
        if "auto_rebuild" in changes:
            self.log.info(
                "%s turned auto-rebuild of environment %s %s", self.current_user["name"],
                env.uid, "on" if changes["auto_rebuild"] else "off",
            )
        trust = sorted(set(changes) & set(envs.TRUST_FIELDS))
        if trust:
            self.log.info(
                "%s changed %s of environment %s",
                self.current_user["name"], ", ".join(trust), env.uid,
            )
        model = await self.one_model(await self.get_env(uid))
        if message is not None:
            model["message"] = message
        self.write_json(model, status=202 if new_files is not None and message is None else 200)

    def new_files(self, env, body):
        """The checked files of a PATCH body's ``files`` or ``archive`` (None
        when it has neither); 400 naming the field for another source."""
        given = [field for field in ("files", "archive") if field in body]
        if not given:
            return None
        if len(given) > 1:
            raise FieldError("archive", "give only one of: files or archive (files is given)")
        field = given[0]
        if env.source != "files":
            raise FieldError(
                field,
                f"this environment is built from {'an image' if env.source == 'image' else 'a repository'}: "
                "only an environment from files can be given new files",
            )
        return envs.parse_files_source(body, self.tljh_app, field)

    async def queue_files(self, env, files, changes):
        """Store ``files`` (and the other ``changes``) as ``env``'s and queue
        its next build (the lifecycle's one admission path); the message when
        the same files are built already (then they are only stored)."""
        reason = self.tljh_app.not_ready(True)
        if reason:
            self.set_header("Retry-After", "5")
            raise web.HTTPError(503, reason)
        if self.builds.is_active(env.uid):
            raise web.HTTPError(409, "The environment is already queued or building")
        try:
            await self.tljh_app.lifecycle.queue_rebuild(
                env, requested_by=self.current_user["name"], check_quota=not self.is_admin,
                force=False, files=files, fields=changes or None,
            )
        except rebuilds.AlreadyBuilt as e:
            await store.update_environment(self.sessions, env.uid, files=files, **changes)
            self.log.info("New files of %s not built: %s", env.uid, e.message)
            return e.message
        self.log.info(
            "%s gave environment %s new files (%d): build queued",
            self.current_user["name"], env.uid, len(files),
        )
        return None

    @web.authenticated
    async def delete(self, uid):
        registry = await self.delete_environment(await self.get_env(uid, manage=True))
        if registry is not None:
            # With push on: what went from the registry, and what it kept (and why).
            self.write_json(registry)
            return
        self.set_status(204)
        self.finish()


def _accepts_gzip(header):
    """Whether an ``Accept-Encoding`` header takes gzip (``gzip;q=0`` refuses it)."""
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower()
            return not quality.startswith("q=") or quality[2:].strip() not in ("0", "0.0", "0.00", "0.000")
    return False


class RebuildAPIHandler(EnvironmentAPIMixin, APIHandler):
    builds_needed_for = ("POST",)

    @web.authenticated
    async def post(self, uid):
        env = await self.get_env(uid, manage=True)
        if self.builds.is_active(env.uid):
            raise web.HTTPError(409, "The environment is already queued or building")
        body = self.get_json_body()
        unknown = sorted(set(body) - {"username", "password", "force", "version"})
        if unknown:
            raise FieldError(unknown[0], "is not a known field (username, password, force, version)")
        credentials = envs.parse_credentials(body)
        force = body.get("force", False)
        if force is None:
            force = False
        if not isinstance(force, bool):
            raise FieldError("force", "must be true or false")
        version = await self.version_to_rebuild(env, body.get("version"))
        try:
            env = await self.tljh_app.lifecycle.queue_rebuild(
                env, requested_by=self.current_user["name"],
                credentials=credentials, check_quota=not self.is_admin,
                force=force, version=version,
            )
        except rebuilds.AlreadyBuilt as e:
            self.log.info("Rebuild of %s not needed: %s", env.uid, e.message)
            model = await self.one_model(await self.get_env(uid))
            model["message"] = e.message
            self.write_json(model, status=200)
            return
        if version is not None:
            self.log.info(
                "%s rebuilds version %d of %s (commit %s, builder %s)",
                self.current_user["name"], version.number, env.uid, version.commit[:12],
                version.builder_image or "the default",
            )
        self.write_json(self.model(env), status=202)

    async def version_to_rebuild(self, env, value):
        """The stored Version a rebuild body's ``version`` names (None when
        not given); 400 naming ``version`` when it is not one of ``env``'s or
        its builder is no longer allowed."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
            raise FieldError("version", "must be the id of one of the environment's versions")
        version = await store.get_version(self.sessions, env.uid, value)
        if version is None:
            raise FieldError("version", f"no version {value} of this environment", status=404)
        if not version.commit:
            raise FieldError("version", f"the commit of version {version.number} is not known")
        choices = envs.builder_choices(
            self.tljh_app.allowed_repo2docker_images, self.tljh_app.builder
        )
        if version.builder_image and version.builder_image not in choices:
            raise FieldError(
                "version",
                f"version {version.number} was built with {version.builder_image}, which is "
                "no longer an allowed builder (allowed_repo2docker_images)",
            )
        return version


class CancelAPIHandler(EnvironmentAPIMixin, APIHandler):
    builds_needed_for = ("POST",)

    @web.authenticated
    async def post(self, uid):
        env = await self.get_env(uid, manage=True)
        if not await self.builds.cancel(env.uid):
            raise web.HTTPError(409, f"The environment is {env.status}: nothing to cancel")
        self.write_json(self.model(await self.get_env(uid)))


default_handlers = [
    (r"api/environments", EnvironmentsAPIHandler),
    (r"api/images", LegacyImagesAPIHandler),
    (r"api/environments/([^/]+)", EnvironmentAPIHandler),
    (r"api/environments/([^/]+)/rebuild", RebuildAPIHandler),
    (r"api/environments/([^/]+)/cancel", CancelAPIHandler),
]
