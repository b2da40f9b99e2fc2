"""The Docker engine: :class:`SpawnerMixin` for any DockerSpawner, and :class:`Repo2DockerSpawner`.

``start()`` is a list of small steps: choose the environment (labels of the
image, which only the service writes; :meth:`list_images` decides what this
user may start), apply its limits, make sure the user's home exists
(:meth:`prepare_home`), replace the server's container when it no longer
fits (:meth:`replace_container`, copying the home directory of a container
that had none mounted), then DockerSpawner's own ``start``.
"""

import asyncio
import functools
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor

import docker.errors
from dockerspawner import DockerSpawner, SystemUserSpawner
from traitlets import Bool, Unicode, default

from . import content as content_puller
from . import homes
from ..contract import home_belongs_to_hub
from .mixin import (
    HOME_LABEL,
    UID_LABEL,
    BuiltEnvironment,
    EnvironmentMixin,
    EnvironmentRefused,
    SpawnFailed,
    belongs_to_hub,
    environments_from_images,
    escape_name,
)

#: What a container runs when neither ``cmd`` nor the image says.
DEFAULT_COMMAND = ["jupyterhub-singleuser"]

_VOLUME_TEMPLATES = {
    "user": "tljh-r2d-home-{username}",
    "server": "tljh-r2d-home-{username}--{servername}",
    "environment": "tljh-r2d-home-{username}--env-{environment}",
    "none": "",
}


class SpawnerMixin(EnvironmentMixin):
    """What tljh-repo2docker adds to a DockerSpawner (or any subclass, SystemUserSpawner included)::

        class MySpawner(SpawnerMixin, SystemUserSpawner):
            async def list_images(self):
                images = await super().list_images()
                return [i for i in images if allowed(self.user, i)]

    - ``user_options["image"]`` must be a built environment of this hub
      that :meth:`list_images` offers to the user; anything else is refused
      before a container is made.
    - Limits come from the environment (:meth:`set_limits`), else from the
      configured ``mem_limit`` and ``cpu_limit``.
    - The user's home is a named volume (or host directory) that outlives the
      container: see ``home_scope``. A server given another image, a rebuilt
      one, or whose container has no home mounted, gets a new container.
    - Without ``cmd`` and without a ``CMD`` in the image, ``jupyterhub-singleuser`` runs.
    """

    home_volume_name_template = Unicode(
        help="""
        Name of the Docker volume holding a home. Fields: ``{username}``,
        ``{servername}``, ``{environment}`` (the environment's uid) and
        ``{prefix}`` (``image_prefix``), each escaped for Docker (letters,
        digits, ``_`` and ``.`` stay, any other character becomes ``-`` and
        its hex code). Trailing ``-`` are dropped (the default server has no
        name). Default, by ``home_scope``: ``tljh-r2d-home-{username}``,
        ``tljh-r2d-home-{username}--{servername}``,
        ``tljh-r2d-home-{username}--env-{environment}``. A volume of this
        name that belongs to another hub (its ``tljh_repo2docker.home.prefix``
        label is another ``image_prefix``) is refused: give hubs sharing an
        engine their own template, e.g. with ``{prefix}``.
        """,
    ).tag(config=True)

    @default("home_volume_name_template")
    def _default_home_volume_name_template(self):
        return _VOLUME_TEMPLATES[self.home_scope]

    home_host_template = Unicode(
        "",
        help="""
        Keep homes in host directories instead of Docker volumes, e.g.
        ``/srv/homes/{username}`` (same fields as
        ``home_volume_name_template``; ``home_scope`` still chooses which
        servers share one). A missing directory is created (mode 0700, owned
        by ``image_user_id``), so the hub must run on the Docker host with
        the right to do so. Default: empty, Docker volumes.
        """,
    ).tag(config=True)

    home_image_files = Bool(
        True,
        help="""
        When a server starts from an image its home has not seen yet (another
        environment, a rebuild), copy into the home what the image has in its
        home directory and the home lacks: the repository's new files,
        dotfiles of the new image. Nothing that exists is overwritten, so a
        file the repository changed keeps the user's version. (A new, empty
        home gets the image's files from Docker anyway.) Default: True.
        """,
    ).tag(config=True)

    home_image_id = Unicode(
        "",
        help="""The image whose home files were last added to this server's home (spawner state).""",
    )

    shared_data_source = Unicode(
        "",
        help="""
        A host directory or Docker volume mounted read-only in every server at
        ``shared_data_path``: data sets, course material. Default: none.
        """,
    ).tag(config=True)

    shared_data_path = Unicode(
        "/srv/shared",
        help="""
        Where ``shared_data_source`` is mounted (read-only) in the servers.
        Default: ``/srv/shared``.
        """,
    ).tag(config=True)

    def get_state(self):
        state = super().get_state()
        if self.home_image_id:
            state["home_image_id"] = self.home_image_id
        return state

    def load_state(self, state):
        super().load_state(state)
        self.home_image_id = state.get("home_image_id", "")

    @default("home_scope")
    def _default_home_scope(self):
        # SystemUserSpawner mounts the user's home directory from the host.
        return "none" if isinstance(self, SystemUserSpawner) else "user"

    #: The home of the container being made (set by start()).
    _home = None
    #: One thread for the long home operations (copies, chown) of all servers,
    #: so that they never hold up DockerSpawner's own thread, which every
    #: server's Docker calls share.
    _homes_executor = None
    #: The home this start created: still empty, a rescued home goes in as it is.
    _new_home = None

    @property
    def host_homes(self):
        return bool(self.home_host_template)

    def render_home_name(self, server, environment):
        fields = {
            "username": escape_name(self.user.name),
            "servername": escape_name(self.name or ""),
            "environment": escape_name(environment),
            "prefix": escape_name(self.image_prefix),
        }
        if self.home_host_template:
            return os.path.normpath(self.home_host_template.format(**fields))
        return self.home_volume_name_template.format(**fields).rstrip("-")

    # -- environments on the engine -------------------------------------------------

    async def built_environments(self):
        """The built environments on the Docker engine, sorted by display name."""
        images = await self.docker("images", filters={"label": UID_LABEL})
        return environments_from_images(images, self.image_prefix, self.log)

    async def inspect_environment(self, image):
        if not image or not isinstance(image, str):
            raise EnvironmentRefused(
                "No environment was chosen: choose one of the built environments."
            )
        try:
            info = await self.docker("inspect_image", image)
        except docker.errors.NotFound:
            raise EnvironmentRefused(
                f"There is no environment {image!r}: it may have been deleted."
            ) from None
        except docker.errors.APIError as e:
            if e.status_code == 400:  # not a valid image reference
                raise EnvironmentRefused(f"{image!r} is not a valid image name.") from None
            raise
        labels = (info.get("Config") or {}).get("Labels")
        env = BuiltEnvironment.from_labels(labels, image, image_id=info["Id"])
        if not belongs_to_hub(image, labels, self.image_prefix):
            raise EnvironmentRefused(
                f"{image!r} is not one of this hub's environments: choose one of the built environments."
            )
        return env

    # -- start ------------------------------------------------------------------------

    async def start(self):
        env = await self.choose_environment()
        self.choose_content()
        self.apply_limits(env)
        try:
            self._home = await self.prepare_home(env)
            await self.replace_container(env)
            result = await super().start()
        except EnvironmentRefused:
            # refused inside DockerSpawner's start (check_allowed); the
            # choices above say it themselves
            self.forget_refused_first_start()
            raise
        except Exception as e:
            raise self._failure(env, e) from e
        finally:
            self.restore_limits()
            self.restore_default_url()
            self._new_home = None
        self.image_id = env.image_id
        self.started_once()
        return result

    def _failure(self, env, error):
        """An exception for JupyterHub to show: what went wrong, in words."""
        if getattr(error, "jupyterhub_message", None):
            return error
        if isinstance(error, docker.errors.APIError):
            reason = f"Docker said: {error.explanation or error}"
        else:
            reason = f"{error.__class__.__name__}: {error}"
        self.log.error("Starting %s from %s failed: %s", self._log_name, env.image, reason)
        return SpawnFailed(f"The server could not be started from {env.display_name!r}. {reason}")

    async def check_allowed(self, image):
        # DockerSpawner.start() passes user_options["image"] through here;
        # start() above has already checked it and set self.image to it.
        if image != self.image:
            raise EnvironmentRefused(f"{image!r} is not the environment being started.")
        return image

    async def get_command(self):
        """``cmd``, else the image's ``CMD``, else ``jupyterhub-singleuser``."""
        if not self.cmd:
            info = await self.docker("inspect_image", self.image)
            if not (info.get("Config") or {}).get("Cmd"):
                return DEFAULT_COMMAND + self.get_args()
        return await super().get_command()

    # -- homes ----------------------------------------------------------------------------

    async def prepare_home(self, env):
        """Make sure the home of this server for ``env`` exists; return it (None: no home)."""
        home = self.home_for(env.uid)
        if home is not None and self._configured_home_mount():
            self.log.info(
                "Not mounting home %s for %s: the configured volumes already mount %s",
                home.source, self._log_name, home.path,
            )
            return None
        if home is not None and await self.ensure_home(home):
            self._new_home = home.source
        return home

    def _configured_home_mount(self):
        """True when ``volumes``/``mounts`` (DockerSpawner's own) already mount the home path."""
        binds = super().volume_binds.values()
        return any(b["bind"] == self.home_path for b in binds) or any(
            self.format_volume_name(m["target"], self) == self.home_path for m in self.mounts
        )

    async def ensure_home(self, home):
        """Create ``home`` if it is missing. True when it was just created (it is empty)."""
        if home.host:
            return await asyncio.wrap_future(self.executor.submit(self._ensure_host_dir, home.source))
        try:
            info = await self.docker("inspect_volume", home.source)
        except docker.errors.NotFound:
            await self.docker("create_volume", home.source, labels=home.labels)
            self.log.info("Created home volume %s for %s", home.source, self._log_name)
            return True
        owner = (info.get("Labels") or {}).get(f"{HOME_LABEL}.prefix")
        if owner is not None and not home_belongs_to_hub(owner, self.image_prefix):
            raise SpawnFailed(
                f"The home volume {home.source!r} belongs to another hub on this Docker "
                f"engine (image prefix {owner!r}). Ask an administrator to give each hub "
                "its own home_volume_name_template."
            )
        return False

    def _ensure_host_dir(self, path):
        if os.path.isdir(path):
            return False
        try:
            os.makedirs(path, mode=0o700)
            os.chown(path, self.image_user_id, self.image_user_id)
        except OSError as e:
            raise SpawnFailed(f"The home directory {path} cannot be created: {e.strerror}.") from e
        self.log.info("Created home directory %s for %s", path, self._log_name)
        return True

    @property
    def volume_binds(self):
        binds = super().volume_binds
        if self._home is not None:
            binds[self._home.source] = {"bind": self._home.path, "mode": "rw"}
        if self.shared_data_source:
            binds[self.shared_data_source] = {"bind": self.shared_data_path, "mode": "ro"}
        return binds

    def _mounted_home(self, container):
        """What ``container`` has mounted at the home path (volume name or host path), or None."""
        for mount in container.get("Mounts") or []:
            if mount.get("Destination") == self.home_path:
                return mount.get("Name") or os.path.normpath(mount.get("Source") or "")
        return None

    async def replace_container(self, env):
        """Remove this server's container if it no longer fits, keeping its files.

        DockerSpawner restarts an existing container as it is. Another
        environment or a rebuild (limits are fixed when a container is made),
        another home, or ``remove = True`` need a new one; a container without
        a home mounted (tljh-repo2docker 3.x, or ``home_scope = "none"``) has
        its home directory copied into the user's home first.
        """
        container = await self.get_object()
        if container is None:
            return
        home = self._home
        mounted = self._mounted_home(container)
        reasons = []
        if container["Image"] != env.image_id:
            reasons.append(f"it was made from another image than {env.image}")
        if home is not None and mounted != home.source:
            reasons.append("it has no home mounted" if mounted is None else "its home is another one")
        if self.remove:
            reasons.append("remove = True")
        if self.content is not None and self._opens_elsewhere(container):
            reasons.append("it opens at another URL than the content's")
        if not reasons:
            return
        self.log.info(
            "Replacing container %s of %s: %s", self.object_name, self._log_name, "; ".join(reasons)
        )
        if home is not None and mounted is None:
            await self.rescue_home(container, home)
        if container["State"]["Running"]:
            await self.stop_object()
        await self.remove_object()
        self.object_id = ""

    def _opens_elsewhere(self, container):
        """``container`` was made with another default URL than this start's."""
        wanted = f"JUPYTERHUB_DEFAULT_URL={self.format_string(self.default_url)}"
        made = [e for e in (container.get("Config") or {}).get("Env") or []
                if e.startswith("JUPYTERHUB_DEFAULT_URL=")]
        return made != [wanted]

    async def rescue_home(self, container, home):
        """Copy the home directory of ``container`` (which has none mounted) into ``home``.

        Into an empty home it goes as it is; into one that already holds
        files it goes to ``~/recovered-<server>-<container id>/``, so nothing
        is overwritten.
        """
        if home is None:
            return
        fresh = await self.ensure_home(home) or self._new_home == home.source
        self._new_home = None  # it holds files from now on
        if fresh:
            destination, root = posixpath.dirname(home.path), posixpath.basename(home.path)
        else:
            destination = home.path
            root = f"recovered-{escape_name(self.name or 'default')}-{container['Id'][:12]}"
        self.log.info(
            "Copying %s of container %s (%s) into home %s as %s",
            self.home_path, self.object_name, self._log_name, home.source, posixpath.join(destination, root),
        )
        await self.in_homes_thread(
            homes.copy_home, container["Id"], self.home_path, container["Image"], home, destination, root
        )

    def in_homes_thread(self, func, *args):
        """Run ``homes.func(self.client, *args)`` in the homes thread."""
        if SpawnerMixin._homes_executor is None:
            SpawnerMixin._homes_executor = ThreadPoolExecutor(1, thread_name_prefix="tljh-r2d-homes")
        return asyncio.wrap_future(SpawnerMixin._homes_executor.submit(func, self.client, *args))

    async def _home_of(self, container):
        """The home the files of ``container`` belong in (when it is removed for good)."""
        uid = self.environment_uid
        if not uid and self.home_scope == "environment":
            try:
                uid = (await self.inspect_environment(self.environment_image)).uid
            except EnvironmentRefused:
                uid = ""
        return self.home_for(uid)

    async def start_object(self):
        home, env = self._home, self.chosen_environment
        if home is not None and self.home_image_files and env.image_id != self.home_image_id:
            await self.add_image_files(home)
            self.home_image_id = env.image_id
        if home is not None and not home.host:
            await self.fix_home_owner(home)
        if self.content is not None:
            await self.pull_content(home)
        await super().start_object()

    async def pull_content(self, home):
        """Clone or update the start's content (spawners/content.py) in a helper
        container on the server's network: in ``home`` or, for a server with
        no home, in a copy of ``~/<dir>`` of its container (created, not
        started), copied back before it starts (homes.pull_content_into). A
        pull that fails is logged in one line and the server starts anyway."""
        self.log.info(
            "Pulling %s into ~/%s of %s%s", self.content["repo"], self.content["dir"],
            self._log_name, "" if home is not None else " (in its container: it has no home)",
        )
        options = {
            "user": self.image_user_id,
            "network": self.network_name,
            "command": content_puller.command(),
            "timeout": self.content_pull_timeout,
        }
        if home is None:
            puller = functools.partial(
                homes.pull_content_into,
                environment=content_puller.environment(self.content, homes.CONTENT_WORKDIR),
                **options,
            )
            folder = posixpath.join(self.home_path, self.content["dir"])
            args = (self.container_id, folder, self.content_puller_image)
        else:
            puller = functools.partial(
                homes.pull_content,
                environment=content_puller.environment(self.content, home.path),
                **options,
            )
            args = (self.content_puller_image, home)
        try:
            problem = await self.in_homes_thread(puller, *args)
        except Exception as e:  # a pull never stops a start
            problem = f"{e.__class__.__name__}: {e}"
        if problem:
            self.content_not_pulled(problem)

    async def add_image_files(self, home):
        """Copy what the image has in its home directory and ``home`` lacks (nothing is overwritten)."""
        self.log.info("Adding the files of %s's home directory to home %s", self.image, home.source)
        problem = await self.in_homes_thread(homes.add_image_files, self.image, home)
        if problem:
            self.log.warning("Adding image files to home %s: %s", home.source, problem)

    async def fix_home_owner(self, home):
        """Give the home to ``image_user_id`` if another id owns it (``user_id`` changed)."""
        owner = await asyncio.wrap_future(
            self.executor.submit(homes.home_owner, self.client, self.container_id, home.path)
        )
        if owner is None or owner == self.image_user_id:
            return
        self.log.info(
            "Home %s of %s belongs to uid %s: giving it to %s",
            home.source, self._log_name, owner, self.image_user_id,
        )
        await self.in_homes_thread(homes.chown_home, self.image, home, self.image_user_id)

    # -- stop and delete ----------------------------------------------------------------

    async def stop(self, now=False):
        if self.remove and self.home_scope != "none":
            # With remove = True the container goes as soon as it stops.
            container = await self.get_object()
            if container is not None and self._mounted_home(container) is None:
                await self.rescue_home(container, await self._home_of(container))
        return await super().stop(now=now)

    async def delete_forever(self):
        """The server is deleted: remove its stopped container too (with ``remove=False``).

        The user's home stays: deleting data is never a side effect.
        """
        container = await self.get_object()
        if container is None:
            return
        if self.home_scope != "none" and self._mounted_home(container) is None:
            await self.rescue_home(container, await self._home_of(container))
        await self.remove_object()
        self.object_id = ""


class Repo2DockerSpawner(SpawnerMixin, DockerSpawner):
    """DockerSpawner that starts only the environments built by tljh-repo2docker,
    with a persistent home for every user (see :class:`SpawnerMixin`)."""
