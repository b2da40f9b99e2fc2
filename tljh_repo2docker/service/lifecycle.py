"""Admitting builds: the one path for every way an environment is built.

Adding an environment (``POST api/environments``, :meth:`Lifecycle.add_environment`),
a user's ``POST api/environments/{uid}/rebuild``, the ref poller
(ref_watcher.py) and the push webhook (handlers/webhooks.py)
(:meth:`Lifecycle.queue_rebuild`) all pass :meth:`Lifecycle._admit`, so the checks a build
passes (the engine's free disk, the owner's quotas under the owner's lock,
nothing queued yet, credentials of a private repository) are made once,
and nothing is stored when one refuses.

Rebuild only what changed: a user's rebuild of the commit and builder the
current version already has raises AlreadyBuilt (unless ``force``), and
:meth:`Lifecycle.push_skip_reason` tells the poller and the webhook when a
push needs no build (the same commit and builder, or with ``rebuild_on:
"environment"`` a push that changes none of the files repo2docker reads).
Whenever that cannot be known (a private repository, git not answering),
the build goes ahead: a check that fails never skips a build.
"""

import dataclasses

from .. import contract
from ..builds.base import BuildError, BuildRequest
from ..db import store
from ..errors import Conflict, DiskFull, FieldError, NotFound, ServiceError
from ..hub_client import HubError
from . import image_source, rebuild_rules
from .files_source import files_hash
from .remote_git import RemoteGitError, is_full_sha

#: Why a build runs (stored with the version it makes).
REQUEST, POLL, WEBHOOK = "request", "poll", "webhook"


class AlreadyBuilding(Conflict):
    """The environment is queued or building already (409)."""

    def __init__(self):
        super().__init__("The environment is already queued or building")


class NeedsCredentials(FieldError):
    """A private repository: its credentials are never stored, so the service
    cannot rebuild it without someone giving them again."""

    def __init__(self):
        super().__init__(
            "password", "this repository is private: give the credentials again to rebuild"
        )


class AlreadyBuilt(Exception):
    """The current version is at the commit asked for, built with the same
    builder: nothing to build (answered 200 with the message)."""

    def __init__(self, commit, files=False, message=None):
        self.commit = commit
        what = f"from the same files ({commit[:12]})" if files else f"at commit {commit[:12]}"
        self.message = message or (
            f"Already built {what} with the same builder: nothing to "
            'rebuild (give "force": true to rebuild anyway)'
        )
        super().__init__(self.message)


def same_builder(version_builder, wanted, default):
    """Whether a version built with ``version_builder`` (None: not recorded)
    was built with the builder ``wanted`` now (None: the ``default``)."""
    if version_builder is None:
        # Versions made before builders were recorded used the default.
        return wanted is None
    return version_builder == (wanted or default)


def build_request(env, credentials=(None, None), image_prefix=""):
    """What the build backend needs to build ``env``; ``image_prefix`` (the
    service's) goes into the image's labels, marking it as this hub's."""
    username, password = credentials
    return BuildRequest(
        uid=env.uid,
        repo=env.repo,
        ref=env.ref,
        image_name=env.image_name,
        labels=contract.image_labels(env, image_prefix),
        build_args=dict(env.build_args or {}),
        provider=env.provider,
        number=env.build_number,
        check_command=env.check_command,
        memory=env.memory,
        cpu=env.cpu,
        builder_image=env.builder_image,
        source=env.source or "git",
        files=dict(env.files) if env.source == "files" and env.files else None,
        username=username,
        password=password,
    )


class Lifecycle:
    """Adds environments and queues their rebuilds, each through :meth:`_admit`.

    Made by the app's ``init_lifecycle`` step and handed the parts it uses:
    the database ``sessions``, the ``build_manager`` (the queue), the
    ``quotas``, the ``hub_client`` (who is an admin), the ``disk`` (free
    space) and the service's ``image_prefix``.
    """

    def __init__(
        self, *, sessions, build_manager, quotas, hub_client, disk, image_prefix, log, git=None,
    ):
        """``git`` (service/remote_git.py's RemoteGit): where refs are and
        what pushes changed; None: never asked (every rebuild builds)."""
        self.git = git
        self.sessions = sessions
        self.build_manager = build_manager
        self.quotas = quotas
        self.hub_client = hub_client
        self.disk = disk
        self.image_prefix = image_prefix
        self.log = log

    async def refuse_when_disk_full(self):
        """507 when the engine's disk has less free space than ``min_free_disk``."""
        reason = await self.disk.refusal()
        if reason:
            raise DiskFull(reason)

    async def _owner_is_admin(self, owner):
        """Whether the environment's owner is a hub admin (whose builds no quota limits)."""
        if not owner:
            return True  # environments of no one (3.x's, adopted) are the admins'
        return await self.hub_client.is_admin(owner)

    async def _admit(
        self, owner, *, check_quota, new, store_it, before=None, credentials=(None, None),
        overrides=None,
    ):
        """The one admission path of every build: the engine's disk, then under
        the owner's lock (usage is counted and changed under it, so two requests
        at once cannot both take their last free place) ``before()``, the
        owner's quotas, ``store_it()`` (which returns the stored environment)
        and the hand-over to the build queue. Nothing is stored when a check
        refuses. ``overrides``: fields of the BuildRequest for this build only
        (a version's commit and builder)."""
        await self.refuse_when_disk_full()
        async with self.quotas.lock(owner or ""):
            if before is not None:
                before()
            if check_quota:
                await self.quotas.check_usage(self.sessions, owner or "", new=new)
            env = await store_it()
            request = build_request(env, credentials, self.image_prefix)
            if overrides:
                request = dataclasses.replace(request, **overrides)
            await self.build_manager.submit(env, request)
        return env

    async def add_environment(self, fields, *, owner, check_quota, credentials=(None, None)):
        """Store a new environment from checked ``fields`` (service/fields.py,
        with its ``sharing``) and queue its first build; the stored Environment.

        Raises Conflict for a name or image name taken, DiskFull, or the
        quotas' FieldError; nothing is stored then.
        """
        sessions = self.sessions

        async def store_it():
            name_taken = f"name: an environment named {fields['name']!r} exists"
            if await store.name_taken(sessions, fields["name"]):
                raise Conflict(name_taken)
            if await store.image_name_taken(sessions, fields["image_name"]):
                raise Conflict(f"name: the image {fields['image_name']} belongs to another environment")
            try:
                return await store.create_environment(
                    sessions,
                    uid=contract.new_uid(),
                    owner=owner,
                    requested_by=owner,
                    build_reason=REQUEST,
                    **fields,
                )
            except store.NameTaken:
                raise Conflict(name_taken) from None

        env = await self._admit(
            owner, check_quota=check_quota, new=True, store_it=store_it, credentials=credentials
        )
        self.log.info("%s added environment %s (%s)", owner, env.uid, env.name)
        return env

    @property
    def default_builder(self):
        """The backend's default builder (repo2docker image); None with BinderHub."""
        return getattr(self.build_manager.builder, "repo2docker_image", None)

    async def built_at(self, env, commit, builder_image):
        """Whether ``env``'s current version is ``commit`` built with
        ``builder_image`` (None: the default builder)."""
        if not commit or env.image_id is None:
            return False
        current = await store.current_version(self.sessions, env)
        if current is None or not current.commit:
            return False
        if current.commit.lower() != commit.lower():
            return False
        return same_builder(current.builder_image, builder_image, self.default_builder)

    async def _commit_to_build(self, env):
        """The full commit ``env``'s ref is at now, or None when it cannot be
        known without credentials or git (then the build goes ahead). For an
        image environment: the id of the image its reference points at now
        (pulled again; service/image_source.py)."""
        if env.source == "image":
            return await image_source.content_id(
                self.build_manager.builder, env.repo, self.log, env.image_name
            )
        if env.source == "files":
            return files_hash(env.files)
        if is_full_sha(env.ref):
            return env.ref.lower()
        if self.git is None or env.private or (env.provider != "git" and "://" not in env.repo):
            return None
        try:
            return await self.git.commit_of(env.repo, env.ref)
        except RemoteGitError as e:
            self.log.info("Cannot tell where the ref of %s is (building): %s", env.uid, e)
            return None

    async def push_skip_reason(self, env, commit):
        """Why a push that moved ``env``'s ref to ``commit`` (a full commit id)
        needs no build, or None when it must be built (the poller and the
        webhook skip it, log it and record the reason in ``remote_error``).

        A push needs no build when the current version is at ``commit``
        with the same builder, or, with ``rebuild_on: "environment"``, when
        it changes none of the files repo2docker reads since the commit
        built. Whenever git cannot say, None: it is built.
        """
        if not commit:
            return None
        if await self.built_at(env, commit, env.builder_image):
            return f"commit {commit[:12]} is already built with the same builder"
        if (env.rebuild_on or rebuild_rules.ANY) != rebuild_rules.ENVIRONMENT:
            return None
        if self.git is None or not env.commit or env.image_id is None:
            return None
        current = await store.current_version(self.sessions, env)
        if current is not None and not same_builder(
            current.builder_image, env.builder_image, self.default_builder
        ):
            return None  # another builder was chosen since: build with it
        try:
            paths, folder = await self.git.changed_files(
                env.uid, env.repo, env.ref, env.commit, commit
            )
        except RemoteGitError as e:
            self.log.warning(
                "Cannot tell which files the push to %s changed (building): %s", env.uid, e
            )
            return None
        if rebuild_rules.changes_environment(paths, folder):
            return None
        return (
            f"commit {commit[:12]} changes none of the files repo2docker reads "
            f"since {env.commit[:12]} (rebuild_on: environment)"
        )

    async def queue_rebuild(
        self, env, *, requested_by=None, reason=REQUEST, credentials=(None, None),
        check_quota=None, fields=None, force=True, version=None, files=None,
    ):
        """Queue ``env`` (a stored Environment) to be built again; the queued Environment.

        ``requested_by``: the user who asked, None for the service itself
        (poll, webhook). ``check_quota``: whether the owner's quotas apply
        (default: unless the owner is an admin, as when the owner asks).
        ``fields``: more columns written with the queued state (what the poller
        or the webhook saw). ``force=False``: raise AlreadyBuilt when the
        current version is at the commit the ref is at (or ``version``'s),
        built with the same builder. ``version`` (a stored Version of
        ``env``): build its commit with its builder (this build only: after
        a restart a queued build builds the ref again; an environment from
        files builds that version's files, which become its files). ``files``
        (an environment from files, checked): its new files, stored with the
        queued state, which the build builds. Raises
        AlreadyBuilding, NeedsCredentials, AlreadyBuilt, 507 when the disk
        is under ``min_free_disk``, or the quotas' FieldError; nothing is
        stored then.
        """
        builds = self.build_manager
        if builds.is_active(env.uid):
            raise AlreadyBuilding()
        username, password = credentials
        if env.private and not password:
            raise NeedsCredentials()
        overrides = None
        from_files = env.source == "files"
        if from_files and version is not None:
            if not version.files:
                raise FieldError("version", f"the files of version {version.number} are not known")
            files = dict(version.files)
        if from_files and files is not None:
            fields = {**(fields or {}), "files": files}
        if from_files:
            wanted = version.builder_image if version is not None else env.builder_image
            if version is None and fields and "builder_image" in fields:
                wanted = fields["builder_image"]  # changed with the files
            if wanted == self.default_builder and version is not None:
                wanted = None
            if version is not None:
                overrides = {"builder_image": wanted}
            commit = files_hash(files if files is not None else env.files)
        elif version is not None:
            if not version.commit:
                raise FieldError("version", f"the commit of version {version.number} is not known")
            overrides = {"ref": version.commit, "builder_image": version.builder_image}
            if version.builder_image == self.default_builder:
                overrides["builder_image"] = None
            commit, wanted = version.commit, overrides["builder_image"]
        else:
            commit, wanted = None, env.builder_image
        if not force:
            if commit is None:
                commit = await self._commit_to_build(env)
            if await self.built_at(env, commit, wanted):
                raise AlreadyBuilt(commit, files=from_files, message=(
                    image_source.unchanged_message(env.repo, commit)
                    if env.source == "image" else None
                ))
        if check_quota is None:
            check_quota = not await self._owner_is_admin(env.owner)

        def not_building():
            if builds.is_active(env.uid):
                raise AlreadyBuilding()

        async def store_it():
            queued = await store.start_rebuild(
                self.sessions, env.uid, requested_by=requested_by, reason=reason, fields=fields
            )
            if queued is None:
                raise NotFound(f"No environment with uid {env.uid!r}")
            return queued

        queued = await self._admit(
            env.owner, check_quota=check_quota, new=False, store_it=store_it,
            before=not_building, credentials=(username, password), overrides=overrides,
        )
        self.log.info(
            "Rebuild of %s queued (%s, by %s)", env.uid, reason, requested_by or "the service"
        )
        return queued

    async def remove_environment(self, env):
        """Cancel ``env``'s build, remove its images (every kept version, then
        its name) and forget it; with a backend that pushes, delete them from
        their registry too.

        Raises Conflict (409) while servers or containers use it, or when
        the backend cannot remove an image; ServiceError 502 when the hub
        cannot say which servers run. Returns None, or with push on
        ``{"deleted_from_registry": [...], "left_in_registry": [{"image_name",
        "reason"}]}``.
        """
        try:
            servers = await self.hub_client.active_servers()
        except HubError as e:
            if e.status != 403:
                raise ServiceError(
                    f"Could not ask JupyterHub which servers run: {e.message}", status=502
                ) from None
            # Without the list:users scope the hub cannot tell; the builder
            # still refuses to remove an image that a container uses.
            self.log.warning("Cannot list servers (give the service list:users): %s", e.message)
            servers = []
        users = sorted(
            f"{user}/{name}" if name else user
            for user, name, server in servers
            if uses(server, env)
        )
        if users:
            raise Conflict(f"The environment is used by running servers: {', '.join(users)}")
        builder = self.build_manager.builder
        versions = await store.list_versions(self.sessions, env.uid)
        try:
            in_use = await builder.image_users() or {}
        except Exception as e:
            raise ServiceError(f"Could not list the containers: {e}", status=502) from None
        kept = sorted({v.number for v in versions if in_use.get(v.image_id)})
        if kept:
            raise Conflict(
                "Containers still use version"
                f"{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))} of this environment"
            )
        await self.build_manager.cancel(env.uid)
        try:
            # Every kept version (its own tag), then the environment's name.
            for version in versions:
                if version.image_name != env.image_name:
                    await builder.delete_image(version.image_name, None)
            if env.image_id is not None or env.status == store.BUILT:
                await builder.delete_image(env.image_name, env.image_id)
        except BuildError as e:
            raise Conflict(e.message) from None
        await store.delete_environment(self.sessions, env.uid)
        if not builder.pushes:
            return None
        # Pushed images: their registry too, where it allows deletes.
        names = [v.image_name for v in versions] + [env.image_name]
        deleted, left = await builder.delete_pushed(names)
        return {
            "deleted_from_registry": deleted,
            "left_in_registry": [{"image_name": n, "reason": r} for n, r in left],
        }


def uses(server, env):
    """Whether the hub's ``server`` model runs ``env`` (by uid, or a 3.x image name)."""
    options = server.get("user_options") or {}
    return options.get("environment") == env.uid or options.get("image") == env.image_name
