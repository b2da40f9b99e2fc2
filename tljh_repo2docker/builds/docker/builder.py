"""The Docker backend's builder: its settings, and the flow of a build.

:class:`DockerBuilder` runs repo2docker as a container next to the service
(see :mod:`.container`). The container outlives the service's task that
follows it: it is removed when the build has ended and its result was read,
or by :meth:`DockerBuilder.cancel`. Its parts, each in a module of its own:

- :mod:`.container`: the build container (its command, environment and
  mounts; creating, finding, stopping and removing it);
- :mod:`.follow` and :mod:`.logreader`: following it to its result, with a
  cursor after each log line, through restarts of the engine;
- :mod:`.images`: naming the built image, versions, deleting images, disk
  use, adoption;
- :mod:`.credentials`: credentials for private repositories, which never
  reach the container's command line, environment or labels;
- :mod:`.push`: pushing built images to the registry their name designates
  (``push``), with credentials that never reach a log line;
- :mod:`.check` and :mod:`.inside`: the check of a built image before it
  becomes current (``check_images``), and what it holds;
- :mod:`.imported`: environments from an existing image (``source``
  ``"image"``), taken instead of built, then checked and published alike.
"""

import asyncio
import collections
import contextlib
import dataclasses
import os
import re

import aiodocker
from traitlets import Bool, Float, Integer, List, Unicode, default, validate

from ..base import FAILED, Builder, BuildError, BuildEvent
from . import credentials
from .check import CHECK_LABEL, CheckMixin, CheckSpec, parse_version
from .container import (
    CHECK_COMMAND_LABEL,
    CPU_LABEL,
    MEMORY_LABEL,
    ContainerMixin,
    _Repo2DockerGone,
)
from .engine import (
    BUILD_LABEL,
    DOCKER_SOCKET,
    ENGINE_ERRORS,
    IMAGE_NAME_LABEL,
    STAGING_NAME_LABEL,
    VERSION_NUMBER_LABEL,
    describe,
    option,
    shielded,
)
from .follow import FollowMixin
from .images import ImagesMixin
from .imported import ImportMixin
from .inside import InsideMixin
from .logreader import LogReader
from .registry import RegistryMixin
from .push import PushMixin


class DockerBuilder(
    ContainerMixin,
    FollowMixin,
    CheckMixin,
    InsideMixin,
    ImagesMixin,
    ImportMixin,
    PushMixin,
    RegistryMixin,
    Builder,
):
    """Build images with repo2docker running as a Docker container."""

    repo2docker_image = Unicode(
        "quay.io/jupyterhub/repo2docker:2025.12.0",
        help="""
        The image that runs repo2docker for each build.

        It must provide ``jupyter-repo2docker``, ``git`` and a Docker client
        (repo2docker 2025+ also needs ``docker buildx``); the official
        ``quay.io/jupyterhub/repo2docker`` images do. Pin a tag: builds then
        do not change behind your back. Default:
        ``quay.io/jupyterhub/repo2docker:2025.12.0``.
        """,
    ).tag(config=True)

    pull_repo2docker_image = Bool(
        True,
        help="""
        Pull ``repo2docker_image`` when it is not present on the engine.

        When False, or when the pull fails (for example without access to the
        registry), the build fails with a message naming the missing image.
        Default: True.
        """,
    ).tag(config=True)

    user_id = Integer(
        1000,
        help="""
        Numeric uid of the user that owns the home directory in the built
        images (repo2docker's ``--user-id``). It must not be 0. Default: 1000.
        """,
    ).tag(config=True)

    user_name = Unicode(
        "jovyan",
        help="""
        Name of the user in the built images (repo2docker's
        ``--user-name``). Default: ``jovyan``.
        """,
    ).tag(config=True)

    network_mode = Unicode(
        "bridge",
        help="""
        Docker network mode of the build container, which is where the git
        clone happens. Use ``host`` when repositories are served on the
        host's loopback interface. It does not affect the network of the
        image build itself. Default: ``bridge``.
        """,
    ).tag(config=True)

    docker_url = Unicode(
        help="""
        Address of the Docker engine, for example
        ``unix:///var/run/docker.sock`` or ``tcp://127.0.0.1:2375``.

        The engine's socket is always mounted into build containers from
        ``/var/run/docker.sock`` on the engine's host. Default: the
        ``DOCKER_HOST`` environment variable, else
        ``unix:///var/run/docker.sock``.
        """,
    ).tag(config=True)

    extra_repo2docker_args = List(
        Unicode(),
        help="""
        More arguments for ``jupyter-repo2docker``, placed before the
        repository URL, for example ``["--cache-from", "base:latest"]``.
        Do not put secrets here: they would show in ``docker inspect``.
        Default: none.
        """,
    ).tag(config=True)

    container_prefix = Unicode(
        "tljh-repo2docker-build-",
        help="""
        Prefix of build container names; the build's uid follows it.
        Default: ``tljh-repo2docker-build-``.
        """,
    ).tag(config=True)

    cancel_grace_period = Float(
        5,
        help="""
        Seconds a cancelled build gets to stop its image build cleanly (the
        build tools receive SIGINT) before its container is killed.
        Default: 5.
        """,
    ).tag(config=True)

    build_tmpfs_size = Unicode(
        "",
        help="""
        Give each build container a tmpfs (memory-backed, size-limited file
        system) of this size for its working files: repo2docker's checkout of
        the repository and the build context it writes (the container's
        ``TMPDIR`` points there). A number of bytes, or with a unit: ``512m``,
        ``2g``. A repository that does not fit makes the build fail with "The
        build ran out of disk space". It bounds what one build can write on
        the host's disk; the memory is used only as far as it is filled.
        The image layers themselves are stored by the Docker engine and are
        not limited by this. Default: empty (no tmpfs: the container's own
        file system).
        """,
    ).tag(config=True)

    engine_wait_timeout = Float(
        120,
        help="""
        Seconds a running build waits for the Docker engine to answer again
        after losing contact with it (for example while ``dockerd``
        restarts). When it answers again, the build is followed further if
        its container still runs (``live-restore``), and otherwise marked
        failed with a reason naming the engine, and its container removed.
        When it does not answer in time, the build is marked failed.
        Default: 120.
        """,
    ).tag(config=True)

    push = Bool(
        False,
        help="""
        Push each built image to the registry its name designates, for
        servers that run elsewhere (KubeSpawner). With the service's
        ``image_prefix`` ``127.0.0.1:5000/tljh-r2d/``, ``.../name:ref`` goes to
        the registry at ``127.0.0.1:5000``; a name without a registry host
        (no ``.`` or ``:`` before its first ``/``) goes to Docker Hub.

        The push is the last step of the build, shown in its log. A build
        whose push fails has failed (the message names the registry), and
        the environment keeps its previous image. Each version kept
        (``name:ref--vN``) is pushed too, and so is the name when a rollback
        moves it. Removing old versions (``keep_versions``) removes their
        local tags only: their tags stay in the registry. Default: False.
        """,
    ).tag(config=True)

    registry_username = Unicode(
        "",
        help="""
        User name for the registry that ``push`` sends images to. The Docker
        engine does not read the ``docker login`` of the command line client:
        without this, pushes are anonymous. Default: empty (anonymous).
        """,
    ).tag(config=True)

    registry_password = Unicode(
        "",
        help="""
        Password (or access token) of ``registry_username`` for the registry
        that ``push`` sends images to. It goes to the Docker engine only with
        each push request, and never reaches a log line, the build's log, a
        label or an error message. Default: empty.
        """,
    ).tag(config=True)

    registry_config_file = Unicode(
        "",
        help="""
        A Docker client config file (``config.json``: ``{"auths":
        {"<registry>": {"auth": "<base64 of user:password>"}}}``), e.g. a
        Kubernetes secret of type ``kubernetes.io/dockerconfigjson`` mounted
        as a file: the credentials of the registry each image is pushed to,
        when ``registry_username`` is empty. Read at each push; its content
        never reaches a log, the build's log, a label or an error message.
        Default: none.
        """,
    ).tag(config=True)

    push_timeout = Float(
        3600,
        help="""
        Seconds one push (see ``push``) may take before the build fails with
        a message saying so. Default: 3600.
        """,
    ).tag(config=True)

    check_images = Bool(
        True,
        help="""
        Check each built image before it becomes the environment's current
        version: start ``jupyterhub-singleuser`` in it as the spawner would
        (the image's user and entry point, the environment's memory and CPU
        limits, no network but its own loopback) and wait for the server to
        answer, check that its JupyterHub is at least
        ``check_jupyterhub_min_version``, then run the environment's own
        ``check_command`` if it has one. An image that fails is kept as a
        version marked failed, never made current: the previous version
        stays, and servers are not touched. The check's output is in the
        build's log. When False, images are not checked (nor is the
        ``check_command`` run). Default: True.
        """,
    ).tag(config=True)

    check_timeout = Float(
        60,
        help="""
        Seconds the check (see ``check_images``) waits for
        ``jupyterhub-singleuser`` to answer; a server that does not answer
        in time fails the check. Listing what the image holds is bounded by
        it too. A server usually answers within a few seconds; a large
        image under a small memory or CPU limit takes longer.
        Default: 60.
        """,
    ).tag(config=True)

    check_command_timeout = Float(
        600,
        help="""
        Seconds an environment's ``check_command`` may run (in the new
        image, with its limits and no network) before it is stopped and the
        check fails. Default: 600.
        """,
    ).tag(config=True)

    check_jupyterhub_min_version = Unicode(
        "2.0",
        help="""
        The oldest JupyterHub that a built image may hold: an image whose
        ``jupyterhub-singleuser`` is older fails its check, with a message
        asking for a newer ``jupyterhub`` in its requirements. A single-user
        server authenticates its users with its hub, and the JupyterHub
        package in the image does that part; it must be close enough to the
        hub's (JupyterHub's developers advise the same major version). The
        default, ``2.0``, refuses the single-user servers from before roles
        and scopes (JupyterHub 1.x and older), which today's hubs no longer
        work with as they should; set the hub's own major version (such as
        ``5.0``) to be stricter, or an empty string not to look at the
        version. Default: ``2.0``.
        """,
    ).tag(config=True)

    @validate("check_timeout", "check_command_timeout")
    def _validate_check_timeouts(self, proposal):
        value = proposal["value"]
        if not value > 0:
            raise ValueError(
                f"DockerBuilder.{proposal['trait'].name} must be a positive number of "
                f"seconds, not {value}"
            )
        return value

    @validate("check_jupyterhub_min_version")
    def _validate_check_jupyterhub_min_version(self, proposal):
        value = proposal["value"].strip()
        if value and (parse_version(value) is None or not value[0].isdigit()):
            raise ValueError(
                f"DockerBuilder.check_jupyterhub_min_version {proposal['value']!r} is not "
                "a version like 2.0 or 5.1 (empty: any version)"
            )
        return value

    @property
    def pushes(self):
        return self.push

    @default("docker_url")
    def _default_docker_url(self):
        return os.environ.get("DOCKER_HOST") or f"unix://{DOCKER_SOCKET}"

    @validate("docker_url")
    def _validate_docker_url(self, proposal):
        value = proposal["value"].strip()
        if not re.match(r"^(unix|tcp|http|https|npipe|ssh)://", value):
            raise ValueError(
                f"DockerBuilder.docker_url {value!r} needs a scheme, like "
                "unix:///var/run/docker.sock or tcp://127.0.0.1:2375"
            )
        return value

    @validate("build_tmpfs_size")
    def _validate_build_tmpfs_size(self, proposal):
        value = proposal["value"].strip().lower()
        if value and not re.match(r"^[1-9][0-9]*[kmg]?$", value):
            raise ValueError(
                f"DockerBuilder.build_tmpfs_size {proposal['value']!r} is not a size: "
                "use a number of bytes or a number with k, m or g (512m, 2g)"
            )
        return value

    @validate("push_timeout")
    def _validate_push_timeout(self, proposal):
        value = proposal["value"]
        if not value > 0:
            raise ValueError(
                f"DockerBuilder.push_timeout must be a positive number of seconds, not {value}"
            )
        return value

    @validate("user_id")
    def _validate_user_id(self, proposal):
        value = proposal["value"]
        if value <= 0:
            raise ValueError(
                f"DockerBuilder.user_id must be a positive uid (root cannot own the "
                f"home directory in repo2docker images), not {value}"
            )
        return value

    @validate("container_prefix")
    def _validate_container_prefix(self, proposal):
        value = proposal["value"]
        if not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", value):
            raise ValueError(
                f"DockerBuilder.container_prefix {value!r} cannot start a container name "
                "(letters, digits, '_', '.', '-')"
            )
        return value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._client = None
        # Uids stopped through cancel(), to tell a cancel from a vanished or
        # failed build; bounded, as nobody may follow a cancelled build.
        self._cancelled = collections.OrderedDict()
        # The repo2docker image last found on the engine: not asked again
        # before each build (a request less); a create that finds it gone
        # asks again (see build).
        self._repo2docker_found = None
        # Uids seen by the last running(); attach() answers None for others.
        self._known_builds = None
        # Where the engine keeps its data (``info``'s DockerRootDir), once known.
        self._root_dir = None
        # One /system/df at a time: the engine refuses a second meanwhile (images.py).
        self._df_lock = asyncio.Lock()

    # -- the engine ----------------------------------------------------------

    @property
    def docker(self):
        """The aiodocker client, made on first use inside the running loop."""
        if self._client is None:
            self._client = aiodocker.Docker(url=self.docker_url)
        return self._client

    async def check(self):
        try:
            version = await self.docker.version()
        except ENGINE_ERRORS as e:
            raise BuildError(
                f"Cannot reach the Docker engine at {self.docker_url}: {describe(e)}"
            ) from e
        return f"Docker {version.get('Version', '?')} at {self.docker_url}"

    async def close(self):
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # -- building ------------------------------------------------------------

    async def build(self, request):
        uid = request.uid
        self._cancelled.pop(uid, None)
        if request.source == "image":
            # An existing image: taken, labelled, checked, published (imported.py).
            async with contextlib.aclosing(self._import(request)) as events:
                async for event in events:
                    yield event
            return
        # Credentials written into the URL take the same safe path as the
        # request's: the URL that repo2docker sees (and labels) has none.
        repo, username, password = credentials.split(request.repo)
        if request.has_credentials:
            username, password = request.username, request.password
        if repo != request.repo or request.has_credentials:
            request = dataclasses.replace(request, repo=repo, username=username, password=password)
        secrets = credentials.secrets(username, password)

        if request.has_credentials:
            try:
                credential_store = credentials.store_line(repo, username, password)
            except ValueError as e:
                yield BuildEvent(FAILED, str(e))
                return
        else:
            credential_store = None

        container = None
        error = None
        staging = self._staging_name(uid)
        for attempt in (1, 2):
            # The repo2docker image: found (or pulled) before the first
            # attempt, and checked again when the create finds it gone since.
            try:
                async for event in self._ensure_repo2docker_image(self._builder_image(request)):
                    yield event
            except BuildError as e:
                self.log.error("Build %s: %s", uid, e.log_message)
                yield BuildEvent(FAILED, e.message)
                return
            request.mark("repo2docker image checked")
            try:
                container = await self._start_container(request, staging, credential_store)
            except _Repo2DockerGone as e:
                if attempt == 2:  # gone again at once: a plain failure
                    error = e.__cause__
                    break
            except ENGINE_ERRORS as e:
                error = e
                break
            except BaseException:
                # Cancelled while setting up: a container that never started is of
                # no use to anyone (it may exist even if create() did not return).
                await shielded(self._discard(uid))
                raise
            else:
                break
        if error is not None:
            self.log.error("Build %s: could not start the build container: %s", uid, error)
            await self._discard(uid)
            yield BuildEvent(
                FAILED, credentials.scrub(f"Could not start the build: {describe(error)}", secrets)
            )
            return
        self.log.info(
            "Build %s: started %s for %s (ref %s)",
            uid,
            self._container_name(uid),
            request.repo,
            request.ref,
        )
        spec = CheckSpec(command=request.check_command, memory=request.memory, cpu=request.cpu)
        follow = self._follow(
            container, uid, request.image_name, staging, LogReader(), secrets, request.mark,
            number=request.number, check=spec,
        )
        async with contextlib.aclosing(follow) as events:
            async for event in events:
                yield event

    def attach(self, uid, skip_lines, cursor=None):
        if self._known_builds is not None and uid not in self._known_builds:
            return None
        return self._attach(uid, skip_lines, cursor)

    async def _attach(self, uid, skip_lines, cursor=None):
        try:
            container = await self._find(uid)
            info = await container.show() if container is not None else None
        except ENGINE_ERRORS as e:
            yield BuildEvent(FAILED, f"Cannot reach the Docker engine: {describe(e)}")
            return
        if container is None:
            # An import (imported.py) has no build container: one cut short
            # by a stop left only its check's containers and its image.
            await self._remove_checks(uid)
            await self._remove_import_leftovers(uid)
            yield BuildEvent(FAILED, "The build container is gone")
            return
        if info["State"].get("Status") == "created":
            await self._remove(container, uid)
            yield BuildEvent(FAILED, "The build container was never started")
            return
        labels = info["Config"].get("Labels") or {}
        staging = labels.get(STAGING_NAME_LABEL) or option(info["Config"]["Cmd"], "--image-name")
        image_name = labels.get(IMAGE_NAME_LABEL) or staging
        number = labels.get(VERSION_NUMBER_LABEL)
        number = int(number) if number and number.isdigit() else None
        spec = _check_spec(labels)
        # Defence in depth after a restart: the request's credentials are
        # gone, so read them back from the container to scrub the log.
        secrets = await credentials.read_back(container)
        if cursor is not None:
            self.log.info("Build %s: re-attached, going on after log position %s", uid, cursor)
        else:
            self.log.info("Build %s: re-attached, skipping %d lines", uid, skip_lines)
        reader = LogReader(cursor=cursor, skip_lines=skip_lines)
        follow = self._follow(
            container, uid, image_name, staging, reader, secrets, number=number, check=spec
        )
        async with contextlib.aclosing(follow) as events:
            async for event in events:
                yield event

    # -- builds found again, cancelled, left over --------------------------------

    async def running(self):
        containers = await self.docker.containers.list(all=True, filters={"label": [BUILD_LABEL]})
        uids = {(c["Labels"] or {}).get(BUILD_LABEL) for c in containers} - {None, ""}
        # Imports (imported.py) have no build container: one that a stop cut
        # short during its check is found by the check's containers.
        checks = await self.docker.containers.list(all=True, filters={"label": [CHECK_LABEL]})
        uids |= {(c["Labels"] or {}).get(CHECK_LABEL) for c in checks} - {None, ""}
        self._known_builds = set(uids)
        return uids

    async def cancel(self, uid):
        self._cancelled[uid] = True
        while len(self._cancelled) > 1000:
            self._cancelled.popitem(last=False)
        container = await self._find(uid)
        if container is None:
            return
        self.log.info("Build %s: cancelling", uid)
        try:
            info = await container.show()
        except aiodocker.DockerError as e:
            if e.status == 404:
                return
            raise
        # A check's containers first: they hold the new image, which goes too.
        await self._remove_checks(uid)
        await self._stop_and_remove(container, uid, info)
        await self._remove_leftover_image(uid, info)

    async def discard(self, uid):
        container = await self._find(uid)
        if container is None:
            await self._remove_checks(uid)  # an import's (imported.py)
            return
        try:
            info = await container.show()
        except ENGINE_ERRORS as e:
            self.log.warning("Could not inspect the leftover container of build %s: %s", uid, e)
            return
        self.log.warning("Build %s has ended: removing its leftover container", uid)
        await self._remove_checks(uid)
        await self._stop_and_remove(container, uid, info)


def _check_spec(labels):
    """What the check of a build's image needs, from its container's labels."""
    cpu = labels.get(CPU_LABEL)
    try:
        cpu = float(cpu) if cpu else None
    except ValueError:
        cpu = None
    return CheckSpec(
        command=labels.get(CHECK_COMMAND_LABEL) or None,
        memory=labels.get(MEMORY_LABEL) or None,
        cpu=cpu,
    )
