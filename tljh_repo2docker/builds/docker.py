"""The Docker backend: repo2docker runs in a container next to the service.

Each build is one container, ``{container_prefix}{uid}``, made from
``repo2docker_image`` with the engine's socket mounted, so repo2docker builds
the image on the same engine that JupyterHub spawns from. The container
carries the label ``tljh_repo2docker.build=<uid>``; that label is how
:meth:`DockerBuilder.running` and :meth:`DockerBuilder.attach` find builds
again after the service restarted. The container outlives the service's task
that follows it: it is removed when the build has ended and its result was
read, or by :meth:`DockerBuilder.cancel`.

repo2docker builds into a staging name unique to the build
(``{container_prefix}{uid}:<random>``), and only a successful build gets the
environment's image name. repo2docker skips the build when the name it is
given already exists, which would make every rebuild keep the old image; and
this way the previous image keeps its name, for new servers, until the new
one is ready.

The commit that was built is read from the log: git prints ``HEAD is now at
<sha>`` when repo2docker checks out a ref, and for the default branch
(``HEAD``, a shallow clone without that line) a ``post-checkout`` hook
uploaded into the container prints ``tljh-repo2docker: checked out <sha>``.

Credentials for private repositories never reach the container's command
line, environment or labels. They are written to a file inside the created
(not yet started) container, and git is pointed at that file through
``GIT_CONFIG_*`` variables that hold only its path.
"""

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import io
import json
import os
import re
import shutil
import tarfile
import time
import uuid
from urllib.parse import quote, unquote, urlsplit

import aiodocker
import aiohttp
from traitlets import Bool, Float, Integer, List, Unicode, default, validate

from . import failure
from .base import BUILT, CANCELLED, FAILED, LOG, STATUS, Builder, BuildError, BuildEvent

#: Container label holding the build's uid; also marks the container as ours.
BUILD_LABEL = "tljh_repo2docker.build"
#: Container label holding the image the build makes (for attach()).
IMAGE_NAME_LABEL = "tljh_repo2docker.build_image"
#: Container label holding the staging name repo2docker builds into.
STAGING_NAME_LABEL = "tljh_repo2docker.build_staging"
#: Image label that marks an environment's image (see adoptable_images()).
UID_LABEL = "tljh_repo2docker.uid"
#: The label every image of tljh-repo2docker 3.x carries (it has no uid label).
LEGACY_LABEL = "tljh_repo2docker.image_name"

DOCKER_SOCKET = "/var/run/docker.sock"
#: Where the git credential store goes inside the build container.
CREDENTIALS_DIR = "/tmp"
CREDENTIALS_FILE = "tljh-r2d-git-credentials"
CREDENTIALS_PATH = f"{CREDENTIALS_DIR}/{CREDENTIALS_FILE}"

# With core.abbrev=40 (set below) git prints the full commit id here.
_HEAD_RE = re.compile(r"HEAD is now at ([0-9a-f]{7,64})\b")
# Printed by the post-checkout hook (see _HOOK) after a clone of the default branch.
_CHECKOUT_RE = re.compile(r"^tljh-repo2docker: checked out ([0-9a-f]{40}|[0-9a-f]{64})$")
#: Where a build's working files go when ``build_tmpfs_size`` is set (its TMPDIR).
BUILD_TMPFS_PATH = "/tljh-r2d-build"
HOOKS_DIR = "tljh-r2d-hooks"
HOOKS_PATH = f"{CREDENTIALS_DIR}/{HOOKS_DIR}"
# Runs after git checks out a tree; git sends its output to stderr, which
# repo2docker logs. Only the repository itself, not its submodules.
_HOOK = """#!/bin/sh
if [ "$3" = 1 ] && [ -z "$(git rev-parse --show-superproject-working-tree 2>/dev/null)" ]; then
    echo "tljh-repo2docker: checked out $(git rev-parse HEAD)"
fi
"""
_FULL_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# What explains a failure best: the build tool's or git's own error line, else
# any line that sounds like an error (Python's traceback comes last in the log).
_TAIL_LINES = failure.TAIL_LINES
# aiodocker's status of a DockerError when the engine cannot be reached at all.
_NO_CONNECTION = 900
# Engine losses one build lives through before it is marked failed.
_MAX_ENGINE_LOSSES = 10


class _ContainerGone(Exception):
    """The build container disappeared while we followed it."""


class _EngineLost(Exception):
    """The Docker engine stopped answering and did not come back in time."""


class DockerBuilder(Builder):
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

    # -- the engine ----------------------------------------------------------

    @property
    def docker(self):
        """The aiodocker client, made on first use inside the running loop."""
        if self._client is None:
            self._client = aiodocker.Docker(url=self.docker_url)
        return self._client

    def _container_name(self, uid):
        return f"{self.container_prefix}{uid}"

    async def check(self):
        try:
            version = await self.docker.version()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            raise BuildError(
                f"Cannot reach the Docker engine at {self.docker_url}: {_describe(e)}"
            ) from e
        return f"Docker {version.get('Version', '?')} at {self.docker_url}"

    async def close(self):
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # -- building ------------------------------------------------------------

    def _staging_name(self, uid):
        """A new image name for one build of ``uid``, that repo2docker has never seen."""
        return f"{self.container_prefix.lower()}{uid}:{uuid.uuid4().hex[:12]}"

    def _command(self, request, staging_name=None):
        cmd = [
            "jupyter-repo2docker",
            "--no-run",
            "--ref",
            request.ref,
            "--user-id",
            str(self.user_id),
            "--user-name",
            self.user_name,
            "--image-name",
            staging_name or request.image_name,
        ]
        labels = dict(request.labels)
        labels.setdefault(UID_LABEL, request.uid)
        for key, value in labels.items():
            cmd += ["--label", f"{key}={value}"]
        for key, value in request.build_args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        cmd += list(self.extra_repo2docker_args)
        # "--": a repository that starts with "-" must not be read as an option.
        cmd += ["--", request.repo]
        return cmd

    def _environment(self, request):
        # Git settings through the environment: only names and paths, never
        # secrets. Full commit ids in "HEAD is now at ..." give us the commit.
        config = [("core.abbrev", "40")]
        if request.has_credentials:
            config.append(("credential.helper", f"store --file={CREDENTIALS_PATH}"))
        # The post-checkout hook that prints the commit (see _HOOK).
        config.append(("core.hooksPath", HOOKS_PATH))
        env = [
            "PYTHONUNBUFFERED=1",
            # Fail instead of waiting for a password on a terminal that is not there.
            "GIT_TERMINAL_PROMPT=0",
            f"GIT_CONFIG_COUNT={len(config)}",
        ]
        for index, (key, value) in enumerate(config):
            env += [f"GIT_CONFIG_KEY_{index}={key}", f"GIT_CONFIG_VALUE_{index}={value}"]
        if self.build_tmpfs_size:
            # repo2docker clones into, and writes the build context below, TMPDIR.
            env.append(f"TMPDIR={BUILD_TMPFS_PATH}")
        return env

    def _host_config(self):
        host_config = {
            "Binds": [f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"],
            "NetworkMode": self.network_mode,
            "AutoRemove": False,
        }
        if self.build_tmpfs_size:
            host_config["Tmpfs"] = {BUILD_TMPFS_PATH: f"size={self.build_tmpfs_size},mode=1777"}
        return host_config

    async def build(self, request):
        uid = request.uid
        self._cancelled.pop(uid, None)
        # Credentials written into the URL take the same safe path as the
        # request's: the URL that repo2docker sees (and labels) has none.
        repo, username, password = _split_credentials(request.repo)
        if request.has_credentials:
            username, password = request.username, request.password
        if repo != request.repo or request.has_credentials:
            request = dataclasses.replace(request, repo=repo, username=username, password=password)
        secrets = _secrets(username, password)

        if request.has_credentials:
            try:
                credentials = _credential_store_line(repo, username, password)
            except ValueError as e:
                yield BuildEvent(FAILED, str(e))
                return
        else:
            credentials = None

        try:
            async for event in self._ensure_repo2docker_image():
                yield event
        except BuildError as e:
            self.log.error("Build %s: %s", uid, e.log_message)
            yield BuildEvent(FAILED, e.message)
            return
        request.mark("repo2docker image checked")

        container = None
        error = None
        staging = self._staging_name(uid)
        for attempt in (1, 2):
            try:
                container = await self._start_container(request, staging, credentials)
            except _Repo2DockerGone as e:
                if attempt == 2:  # gone again at once: a plain failure
                    error = e.__cause__
                    break
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
                error = e
                break
            except BaseException:
                # Cancelled while setting up: a container that never started is of
                # no use to anyone (it may exist even if create() did not return).
                await _shielded(self._discard(uid))
                raise
            else:
                break
            # Gone since it was last found: check again (a pull, or a clear failure).
            try:
                async for event in self._ensure_repo2docker_image():
                    yield event
            except BuildError as e:
                self.log.error("Build %s: %s", uid, e.log_message)
                yield BuildEvent(FAILED, e.message)
                return
        if error is not None:
            self.log.error("Build %s: could not start the build container: %s", uid, error)
            await self._discard(uid)
            yield BuildEvent(
                FAILED, _scrub(f"Could not start the build: {_describe(error)}", secrets)
            )
            return
        self.log.info(
            "Build %s: started %s for %s (ref %s)",
            uid,
            self._container_name(uid),
            request.repo,
            request.ref,
        )
        follow = self._follow(
            container, uid, request.image_name, staging, _LogReader(), secrets, request.mark
        )
        async with contextlib.aclosing(follow) as events:
            async for event in events:
                yield event

    async def _ensure_repo2docker_image(self):
        """Make sure the repo2docker image is there; yields status events while pulling."""
        image = self.repo2docker_image
        if self._repo2docker_found == image:
            return
        try:
            await self.docker.images.inspect(image)
            self._repo2docker_found = image
            return
        except aiodocker.DockerError as e:
            if e.status != 404:
                raise BuildError(f"Cannot use the Docker engine: {_describe(e)}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise BuildError(
                f"Cannot reach the Docker engine at {self.docker_url}: {_describe(e)}"
            ) from e
        if not self.pull_repo2docker_image:
            raise BuildError(
                f"The repo2docker image {image} is not present on the Docker engine "
                "(and DockerBuilder.pull_repo2docker_image is False)"
            )
        yield BuildEvent(STATUS, f"pulling {image}")
        self.log.info("Pulling the repo2docker image %s", image)
        try:
            await self.docker.images.pull(image)
            await self.docker.images.inspect(image)
            self._repo2docker_found = image
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            raise BuildError(
                f"The repo2docker image {image} is not present on the Docker engine "
                f"and pulling it failed: {_describe(e)}"
            ) from e

    async def _start_container(self, request, staging, credentials):
        """Create and start the build container; _Repo2DockerGone when the
        create finds no repo2docker image although it was found before."""
        try:
            container = await self._create_container(request, staging)
        except aiodocker.DockerError as e:
            if e.status != 404 or self._repo2docker_found is None:
                raise
            self._repo2docker_found = None
            raise _Repo2DockerGone() from e
        request.mark("container created")
        if credentials is not None:
            await container.put_archive(CREDENTIALS_DIR, _credentials_tar(credentials))
        await container.start()
        request.mark("container started")
        return container

    async def _create_container(self, request, staging):
        name = self._container_name(request.uid)
        config = {
            "Image": self.repo2docker_image,
            "Cmd": _with_hook(self._command(request, staging)),
            "Env": self._environment(request),
            "Labels": {
                BUILD_LABEL: request.uid,
                IMAGE_NAME_LABEL: request.image_name,
                STAGING_NAME_LABEL: staging,
            },
            "Tty": False,
            "AttachStdin": False,
            "OpenStdin": False,
            "HostConfig": self._host_config(),
        }
        try:
            return await self.docker.containers.create(config, name=name)
        except aiodocker.DockerError as e:
            if e.status != 409:
                raise
        # The name is taken by a container left from an earlier build of this
        # uid that nobody follows any more (the manager never runs two builds
        # of one uid at once). Asked only then: one request less per build.
        self.log.warning("Removing the leftover build container %s", name)
        stale = await self.docker.containers.get(name)
        await stale.delete(force=True)
        return await self.docker.containers.create(config, name=name)

    def attach(self, uid, skip_lines, cursor=None):
        if self._known_builds is not None and uid not in self._known_builds:
            return None
        return self._attach(uid, skip_lines, cursor)

    async def _attach(self, uid, skip_lines, cursor=None):
        try:
            container = await self._find(uid)
            info = await container.show() if container is not None else None
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            yield BuildEvent(FAILED, f"Cannot reach the Docker engine: {_describe(e)}")
            return
        if container is None:
            yield BuildEvent(FAILED, "The build container is gone")
            return
        if info["State"].get("Status") == "created":
            await self._remove(container, uid)
            yield BuildEvent(FAILED, "The build container was never started")
            return
        labels = info["Config"].get("Labels") or {}
        staging = labels.get(STAGING_NAME_LABEL) or _option(info["Config"]["Cmd"], "--image-name")
        image_name = labels.get(IMAGE_NAME_LABEL) or staging
        # Defence in depth after a restart: the request's credentials are
        # gone, so read them back from the container to scrub the log.
        secrets = await self._stored_secrets(container)
        if cursor is not None:
            self.log.info("Build %s: re-attached, going on after log position %s", uid, cursor)
        else:
            self.log.info("Build %s: re-attached, skipping %d lines", uid, skip_lines)
        reader = _LogReader(cursor=cursor, skip_lines=skip_lines)
        follow = self._follow(container, uid, image_name, staging, reader, secrets)
        async with contextlib.aclosing(follow) as events:
            async for event in events:
                yield event

    async def _follow(self, container, uid, image_name, staging, reader, secrets, mark=None):
        """Yield a started container's log lines, then the final event.

        repo2docker builds ``staging``; a successful build is then tagged
        ``image_name`` (see :meth:`_publish`). ``reader`` (a
        :class:`_LogReader`) knows which lines were yielded before (by the
        service before it restarted): those are read again, for the commit
        and the failure message, but not yielded. Each line yielded carries
        its cursor (see :class:`_LogReader`).

        Shared by build() and attach(). The container is removed after the
        final event, when the consumer asks for more (the manager does once
        the result is stored). If the consumer stops early (its task is
        cancelled, or it closes this generator), only the following stops:
        the container stays for attach() or cancel().

        A restart of the engine (``dockerd``) is told from a failed build:
        a stopping engine first closes its socket to new connections, keeps
        serving the ones open (so the log stream and the wait for the
        container's exit may still answer), stops the containers unless it
        runs with ``live-restore``, and exits. So when the container ends
        with an error, or the connection breaks, and a new connection is
        refused, this waits up to ``engine_wait_timeout`` for the engine to
        answer again and looks at the container: one that still runs is
        followed further, without repeating lines; one that the restart
        stopped fails the build with a reason naming the engine, and is
        removed like any other. ``mark(point)``, when given, notes the moments
        of the build's steps (see :class:`~.base.Timeline`).
        """
        mark = mark or (lambda point: None)
        started = time.monotonic()
        commit = None
        ref = None
        tail = collections.deque(maxlen=_TAIL_LINES)
        final = None
        lost = None  # why the engine was lost, while it is
        losses = 0
        code = None

        def take(line):
            """Scrub ``line``, note what it tells, and return it."""
            nonlocal commit
            match = _CHECKOUT_RE.match(line) or _HEAD_RE.search(line)
            if match:
                commit = match.group(1)
            line = _scrub(line, secrets)
            if line.strip():
                tail.append(line)
            return line

        try:
            while True:
                try:
                    info = await container.show()
                    ref = _option(info["Config"]["Cmd"], "--ref")
                    if lost is not None and not info["State"].get("Running"):
                        # The container ended while the engine was away.
                        code = info["State"].get("ExitCode")
                        break
                    if lost is not None:
                        self.log.info("Build %s: the Docker engine is back; following again", uid)
                        yield BuildEvent(STATUS, "the Docker engine answers again; following the build")
                        # The log is read again from its start: what was
                        # yielded is skipped, an unfinished line read again.
                        reader = reader.again()
                        tail.clear()
                        lost = None
                    # Asked for while the log is followed: its answer is
                    # there when the log ends (a request less after the exit).
                    waiter = asyncio.ensure_future(container.wait())
                    try:
                        async with contextlib.aclosing(
                            container.log(stdout=True, stderr=True, follow=True, timestamps=True)
                        ) as chunks:
                            async for chunk in chunks:
                                for line, new, cursor in reader.feed(chunk):
                                    line = take(line)
                                    if new:
                                        yield BuildEvent(LOG, line, cursor=cursor)
                        mark("container log ended")
                        code = (await waiter).get("StatusCode")
                    finally:
                        _forget(waiter)
                    mark("container exited")
                    # The container has ended, so its log has: output it
                    # left without a line end is its last line. (aiodocker
                    # also ends the stream when the connection breaks; then
                    # the wait above fails and the line is read again.)
                    for line, new, cursor in reader.finish():
                        line = take(line)
                        if new:
                            yield BuildEvent(LOG, line, cursor=cursor)
                    # A busy engine is not a stopping one: only a refused
                    # connection means that it is going away.
                    if code == 0 or await self._probe_engine() != "refused":
                        break
                    lost = "it stopped accepting connections as the build ended"
                except aiodocker.DockerError as e:
                    if e.status == 404:
                        raise _ContainerGone() from e
                    if e.status != _NO_CONNECTION:
                        raise
                    lost = _describe(e)
                except (aiohttp.ClientError, OSError) as e:
                    lost = f"the connection broke: {e.__class__.__name__}"
                losses += 1
                self.log.warning("Build %s: lost the Docker engine: %s", uid, lost)
                yield BuildEvent(
                    STATUS,
                    f"lost contact with the Docker engine ({lost}); "
                    f"waiting up to {self.engine_wait_timeout:g} s for it to answer again",
                )
                if losses > _MAX_ENGINE_LOSSES or not await self._wait_for_engine():
                    raise _EngineLost()
        except _ContainerGone:
            if uid in self._cancelled:
                final = BuildEvent(CANCELLED, "Build cancelled")
            elif losses:
                final = BuildEvent(
                    FAILED, "The Docker engine restarted during the build and its container is gone"
                )
            else:
                final = BuildEvent(FAILED, "The build container disappeared")
        except _EngineLost:
            self.log.error("Build %s: the Docker engine did not come back: %s", uid, lost)
            final = BuildEvent(
                FAILED,
                f"Lost contact with the Docker engine at {self.docker_url}, and it did not "
                f"answer again within {self.engine_wait_timeout:g} s ({lost})",
            )
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            self.log.error("Build %s: lost the Docker engine: %s", uid, e)
            final = BuildEvent(FAILED, f"Lost contact with the Docker engine: {_describe(e)}")
        else:
            if ref and _FULL_SHA_RE.match(ref):
                commit = ref
            if uid in self._cancelled:
                # Even if the build got to its end: cancel() removes its image.
                final = BuildEvent(CANCELLED, "Build cancelled")
            elif code == 0:
                final = await self._publish(staging, image_name, commit, uid, mark)
            elif lost is not None:
                final = BuildEvent(
                    FAILED,
                    "The Docker engine restarted during the build, which stopped the build "
                    f"container (exit code {code}): rebuild the environment",
                )
            else:
                final = BuildEvent(FAILED, _failure_message(code, tail))
        if final.phase != BUILT:
            await self._remove_staging(uid, staging)
        self.log.info("Build %s: %s after %.1f s", uid, final.phase, time.monotonic() - started)
        yield final
        # Only once the consumer asks for more (the manager: once it stored
        # the result), so that a service killed before that finds the
        # container, re-attaches and reports the same result.
        await self._remove(container, uid)

    async def _probe_engine(self):
        """``"ok"``, ``"refused"`` (no new connection) or ``"error"``, asking the engine anew.

        A new client, not the shared one: an engine that is shutting down
        refuses new connections but still answers on those already open.
        """
        client = None
        try:
            client = aiodocker.Docker(url=self.docker_url)
            await asyncio.wait_for(client.version(), 10)
            return "ok"
        except aiodocker.DockerError as e:
            return "refused" if e.status == _NO_CONNECTION else "error"
        except (aiohttp.ClientConnectionError, OSError):
            return "refused"
        except (asyncio.TimeoutError, aiohttp.ClientError, ValueError):
            return "error"
        finally:
            if client is not None:
                await client.close()

    async def _wait_for_engine(self):
        """Whether the engine answers again within ``engine_wait_timeout`` seconds."""
        deadline = time.monotonic() + self.engine_wait_timeout
        while True:
            if await self._probe_engine() == "ok":
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(1)

    async def _publish(self, staging, image_name, commit, uid=None, mark=None):
        """Give the image built as ``staging`` its real name; the final event.

        A build re-attached after it ended (the service was killed before it
        stored the result) was named already: its staging name is gone, and
        ``image_name`` is the image (labelled with the build's uid; repo2docker
        ended with 0, so it built it, perhaps all from BuildKit's cache).
        """
        if staging and staging != image_name:
            repository, tag = _split_reference(image_name)
            try:
                await self.docker.images.tag(staging, repository, tag=tag)
            except aiodocker.DockerError as e:
                if e.status == 404:
                    if await self._made_by(image_name, uid):
                        return await self._built_event(image_name, commit)
                    return BuildEvent(
                        FAILED, f"repo2docker finished but the image {staging} does not exist"
                    )
                return BuildEvent(FAILED, f"Cannot name the built image: {_describe(e)}")
            except (aiohttp.ClientError, OSError) as e:
                return BuildEvent(FAILED, f"Cannot name the built image: {_describe(e)}")
            if mark is not None:
                mark("image named")
            await self._untag(staging)
            if mark is not None:
                mark("staging name removed")
        return await self._built_event(image_name, commit)

    async def _made_by(self, image_name, uid):
        """Whether ``image_name`` exists and is labelled as built for ``uid``."""
        if not uid:
            return False
        try:
            image = await self.docker.images.inspect(image_name)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            return False
        return (image["Config"].get("Labels") or {}).get(UID_LABEL) == uid

    async def _untag(self, name):
        await self._delete_quietly(name, noprune=True)

    async def _delete_quietly(self, name, **kwargs):
        """Remove an image or image name: a missing one is fine, other errors are logged."""
        try:
            await self.docker.images.delete(name, **kwargs)
        except aiodocker.DockerError as e:
            if e.status != 404:
                self.log.warning("Could not remove image %s: %s", name, e)
        except (aiohttp.ClientError, OSError) as e:
            self.log.warning("Could not remove image %s: %s", name, e)

    async def _remove_staging(self, uid, staging):
        """Remove what an unfinished build tagged under its staging name, if anything."""
        if not staging:
            return
        try:
            image = await self.docker.images.inspect(staging)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            return
        if (image["Config"].get("Labels") or {}).get(UID_LABEL) not in (None, uid):
            return
        self.log.warning("Build %s: removing the unfinished image %s", uid, staging)
        await self._delete_quietly(staging)

    async def _built_event(self, image_name, commit):
        try:
            image = await self.docker.images.inspect(image_name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return BuildEvent(
                    FAILED,
                    f"repo2docker finished but the image {image_name} does not exist",
                )
            return BuildEvent(FAILED, f"Cannot inspect the built image: {_describe(e)}")
        except (aiohttp.ClientError, OSError) as e:
            return BuildEvent(FAILED, f"Cannot inspect the built image: {_describe(e)}")
        return BuildEvent(
            BUILT,
            f"Built {image_name}",
            image_name=image_name,
            image_id=image["Id"],
            size=image.get("Size"),
            commit=commit,
        )

    async def _stored_secrets(self, container):
        try:
            archive = await container.get_archive(CREDENTIALS_PATH)
            member = archive.extractfile(CREDENTIALS_FILE)
            text = member.read().decode() if member is not None else ""
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, KeyError, tarfile.TarError):
            return []
        secrets = []
        for line in text.splitlines():
            parts = urlsplit(line.strip())
            if parts.password is not None or parts.username is not None:
                secrets += _secrets(unquote(parts.username or ""), unquote(parts.password or ""))
        return secrets

    # -- containers ----------------------------------------------------------

    async def _find(self, uid):
        containers = await self.docker.containers.list(
            all=True, filters={"label": [f"{BUILD_LABEL}={uid}"]}
        )
        return containers[0] if containers else None

    async def _discard(self, uid):
        """Remove the build container of ``uid`` if there is one; never raises."""
        try:
            container = await self._find(uid)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            self.log.warning("Could not look for the container of build %s: %s", uid, e)
            return
        if container is not None:
            await self._remove(container, uid)

    async def _remove(self, container, uid):
        try:
            await container.delete(force=True)
        except aiodocker.DockerError as e:
            if e.status not in (404, 409):  # 409: removal already in progress
                self.log.warning("Could not remove the container of build %s: %s", uid, e)
        except (aiohttp.ClientError, OSError) as e:
            self.log.warning("Could not remove the container of build %s: %s", uid, e)

    def version_name(self, image_name, number):
        return version_reference(image_name, number)

    async def keep_version(self, image_name, image_id, number):
        ref = version_reference(image_name, number)
        repository, tag = _split_reference(ref)
        await self.docker.images.tag(image_id or image_name, repository, tag=tag)
        return ref

    async def image_references(self):
        images = await self.docker.images.list()
        return {tag for image in images for tag in image.get("RepoTags") or ()}

    async def make_current(self, version_image, image_id, image_name):
        repository, tag = _split_reference(image_name)
        try:
            await self.docker.images.tag(image_id or version_image, repository, tag=tag)
        except aiodocker.DockerError as e:
            raise BuildError(f"Cannot restore image {version_image}: {_describe(e)}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise BuildError(f"Cannot restore image {version_image}: {_describe(e)}") from e
        return image_name

    async def image_users(self):
        """``{image id: number of containers}`` over the engine's containers,
        build containers left out (any state: a stopped server's container
        still needs its image to start again)."""
        containers = await self.docker.containers.list(all=True)
        users = {}
        for container in containers:
            info = container._container  # the list entry (aiodocker keeps it there)
            if (info.get("Labels") or {}).get(BUILD_LABEL):
                continue
            image_id = info.get("ImageID")
            if image_id:
                users[image_id] = users.get(image_id, 0) + 1
        return users

    async def running(self):
        containers = await self.docker.containers.list(all=True, filters={"label": [BUILD_LABEL]})
        uids = {(c["Labels"] or {}).get(BUILD_LABEL) for c in containers} - {None, ""}
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
        await self._stop_and_remove(container, uid, info)
        await self._remove_leftover_image(uid, info)

    async def discard(self, uid):
        container = await self._find(uid)
        if container is None:
            return
        try:
            info = await container.show()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            self.log.warning("Could not inspect the leftover container of build %s: %s", uid, e)
            return
        self.log.warning("Build %s has ended: removing its leftover container", uid)
        await self._stop_and_remove(container, uid, info)

    async def _stop_and_remove(self, container, uid, info):
        """Stop the build container (``info``: its inspection) if it runs,
        remove it and the unfinished image tagged under its staging name."""
        if info["State"].get("Running"):
            await self._interrupt(container, uid)
        await self._remove(container, uid)
        await self._remove_staging(uid, (info["Config"].get("Labels") or {}).get(STAGING_NAME_LABEL))

    async def _interrupt(self, container, uid):
        """Ask the build tools in the container to stop, and wait a little.

        SIGINT makes ``docker buildx`` cancel its build on the engine before
        it exits. When its container is just killed, the engine usually
        notices the lost client and stops the build too, but not always:
        seen here (Docker 20.10) once in a few dozen cancels, and SIGINT too
        was once ignored while the engine was busy with other builds. Hence
        the check for a leftover image in cancel().
        """
        try:
            # Every process but the shell itself and repo2docker (PID 1).
            run = await container.exec(["sh", "-c", "kill -INT -1"], stdout=False, stderr=False)
            await run.start(detach=True)
            await asyncio.wait_for(container.wait(), self.cancel_grace_period)
        except (asyncio.TimeoutError, aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            self.log.debug("Build %s: no clean stop (%s); killing it", uid, e)

    async def _remove_leftover_image(self, uid, info):
        """Remove an image the cancelled build managed to tag anyway."""
        image_name = (info["Config"].get("Labels") or {}).get(IMAGE_NAME_LABEL)
        if not image_name:
            return
        try:
            image = await self.docker.images.inspect(image_name)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            return
        labels = image["Config"].get("Labels") or {}
        # Only an image of this very build: a previous build of the same
        # environment can carry the same name and uid, but it is older.
        built = _timestamp(image.get("Created"))
        if labels.get(UID_LABEL) != uid or built < _timestamp(info.get("Created")):
            return
        self.log.warning("Build %s: removing image %s tagged despite the cancel", uid, image_name)
        try:
            await self.docker.images.delete(image_name)
        except aiodocker.DockerError as e:
            self.log.warning("Could not remove image %s: %s", image_name, e)

    # -- images --------------------------------------------------------------

    async def image_exists(self, image_name):
        try:
            await self.docker.images.inspect(image_name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def delete_image(self, image_name, image_id=None):
        image = None
        target = None
        for candidate in (image_name, image_id):
            if not candidate:
                continue
            try:
                image = await self.docker.images.inspect(candidate)
            except aiodocker.DockerError as e:
                if e.status == 404:
                    continue
                raise BuildError(f"Cannot inspect image {candidate}: {_describe(e)}") from e
            except (aiohttp.ClientError, OSError) as e:
                raise BuildError(f"Cannot reach the Docker engine: {_describe(e)}") from e
            target = candidate
            break
        if image is None:
            return []
        try:
            candidates = await self.docker.containers.list(
                all=True, filters={"ancestor": [image["Id"]]}
            )
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            raise BuildError(f"Cannot list containers: {_describe(e)}") from e
        users = [c for c in candidates if "ImageID" in c and c["ImageID"] == image["Id"]]
        if users:
            names = sorted(_container_name(c) for c in users)
            raise BuildError(
                f"Image {image_name or image_id} is used by "
                f"{len(names)} container{'s' if len(names) > 1 else ''}: {', '.join(names)}"
            )
        try:
            answer = await self.docker.images.delete(target)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return []
            raise BuildError(f"Cannot remove image {target}: {_describe(e)}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise BuildError(f"Cannot reach the Docker engine: {_describe(e)}") from e
        self.log.info("Removed image %s", target)
        return answer if isinstance(answer, list) else []

    # -- disk ----------------------------------------------------------------

    async def disk_usage(self):
        # GET /system/df: every image with its own size and the part of it
        # shared with other images, and the build cache (BuildKit's records).
        try:
            df = await self.docker._query_json("system/df", method="GET")
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            raise BuildError(f"Cannot ask the Docker engine for its disk use: {_describe(e)}") from e
        images = {}
        for image in df.get("Images") or []:
            images[image["Id"]] = {
                "size": image.get("Size") or 0,
                # -1 when the engine did not compute it
                "shared_size": max(image.get("SharedSize") or 0, 0),
                "containers": image.get("Containers", -1),
                "tags": [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"],
                "labels": image.get("Labels") or {},
                "created": image.get("Created") or 0,
            }
        cache = [
            {
                "id": entry.get("ID"),
                "size": entry.get("Size") or 0,
                "in_use": bool(entry.get("InUse")),
                "shared": bool(entry.get("Shared")),
                "last_used": _timestamp(entry.get("LastUsedAt") or entry.get("CreatedAt")),
            }
            for entry in df.get("BuildCache") or []
        ]
        return {"images": images, "layers_size": df.get("LayersSize"), "build_cache": cache}

    async def disk_space(self):
        space = {"path": None, "total": None, "used": None, "free": None, "note": None}
        if not self.docker_url.startswith("unix://"):
            space["note"] = (
                f"The Docker engine at {self.docker_url} is on another machine: its disk "
                "cannot be measured from here"
            )
            return space
        if self._root_dir is None:
            try:
                info = await self.docker.system.info()
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
                space["note"] = f"Cannot ask the Docker engine where it stores images: {_describe(e)}"
                return space
            self._root_dir = info.get("DockerRootDir") or ""
        space["path"] = self._root_dir or None
        try:
            usage = shutil.disk_usage(self._root_dir)
        except OSError as e:
            space["note"] = (
                f"The engine stores images in {self._root_dir or '?'}, which this service "
                f"cannot see ({e.strerror or e.__class__.__name__}): run it on the engine's "
                "machine (not in a container without that folder) to know the free space"
            )
            return space
        space.update(total=usage.total, used=usage.used, free=usage.free)
        return space

    async def prune_build_cache(self, older_than):
        # POST /build/prune: "all" takes every unused entry, not only the
        # dangling ones; "until" keeps those used within the duration. The
        # build cache is the engine's, shared by every hub and user of it.
        params = {"all": "true", "filters": json.dumps({"until": [f"{int(older_than)}s"]})}
        try:
            answer = await self.docker._query_json("build/prune", method="POST", params=params)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            raise BuildError(f"Cannot prune the build cache: {_describe(e)}") from e
        return {
            "count": len(answer.get("CachesDeleted") or []),
            "size": answer.get("SpaceReclaimed") or 0,
        }

    async def adoptable_images(self):
        # Ours carry the uid label; those of tljh-repo2docker 3.x only its
        # image_name label (they are re-labelled when adopted: adopt_image()).
        images = {}
        for label in (UID_LABEL, LEGACY_LABEL):
            for image in await self.docker.images.list(filters={"label": [label]}):
                images[image["Id"]] = image
        staging = self.container_prefix.lower()
        result = []
        for image in images.values():
            tags = sorted(
                t
                for t in image.get("RepoTags") or []
                # Staging names are left by builds that never finished.
                if t != "<none>:<none>" and not t.startswith(staging)
            )
            if not tags:
                continue
            labels = dict(image.get("Labels") or {})
            wanted = labels.get(LEGACY_LABEL)
            result.append(
                {
                    "image_name": wanted if wanted in tags else tags[0],
                    "image_id": image["Id"],
                    "size": image.get("Size"),
                    "labels": labels,
                }
            )
        return result

    async def adopt_image(self, image_name, labels):
        """Make ``image_name`` an image of the environment that ``labels`` describe.

        An image that already carries the environment's uid is used as it
        is. Otherwise (an image of tljh-repo2docker 3.x, without our labels)
        a new image is made from it with the labels added: the same layers
        (nothing is copied), a new id, the same name. Returns ``{"image_id",
        "size"}``, or None when there is no such image.
        """
        try:
            image = await self.docker.images.inspect(image_name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise BuildError(f"Cannot inspect image {image_name}: {_describe(e)}") from e
        current = image["Config"].get("Labels") or {}
        if current.get(UID_LABEL) == labels.get(UID_LABEL) and all(
            current.get(k) == v for k, v in labels.items()
        ):
            return {"image_id": image["Id"], "size": image.get("Size")}
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            dockerfile = f"FROM {image['Id']}\n".encode()
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(dockerfile))
        context.seek(0)
        try:
            await self.docker.images.build(
                fileobj=context, encoding="identity", tag=image_name, labels=labels, rm=True
            )
            relabelled = await self.docker.images.inspect(image_name)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            raise BuildError(f"Cannot label image {image_name}: {_describe(e)}") from e
        self.log.info(
            "Labelled image %s (was %s, now %s) for environment %s",
            image_name, image["Id"][:19], relabelled["Id"][:19], labels.get(UID_LABEL),
        )
        return {"image_id": relabelled["Id"], "size": relabelled.get("Size")}


# -- helpers -----------------------------------------------------------------


class _LogReader:
    """The lines of a build container's Docker log, and where each one ends.

    Fed the items of ``container.log(..., follow=True, timestamps=True)``.
    For a container without a terminal the engine stores each line written
    to stdout or stderr as one message, stamped (to the nanosecond) when the
    engine read it; a line longer than the engine's buffer (16 KiB) becomes
    several messages without a line end but the last, and so does output a
    container leaves without a line end when it exits. aiodocker yields one
    item per message: ``"<RFC 3339 stamp> <text>"``. A line here is the text
    of consecutive messages up to one ending with ``\n``, without it (and a
    ``\r`` before it). Empty lines are lines. Stdout and stderr are read as
    one stream, in the engine's order (aiodocker does not say which stream a
    message came from): a long stdout line would take a stderr line written
    while it was cut in the middle; that happens the same way on every read.

    **Cursor** (stored with each line; see :class:`~.base.BuildEvent`):
    ``"<since> <count>"``, where ``<since>`` is a time stamp in nanoseconds
    since the epoch, a whole second at least ``_CURSOR_MARGIN_NS`` before
    the last message read, and ``<count>`` how many messages read so far are
    stamped at or after ``<since>``. Reading the log again from its start,
    the messages up to the cursor are those stamped before ``<since>`` and
    the first ``<count>`` stamped at or after it. This is exact whatever the
    order of the stamps: the messages read are a prefix of the log, so those
    of them stamped at or after ``<since>`` come first among all the log's
    messages stamped at or after it. Stamps are almost in order (stdout and
    stderr are stamped by two threads of the engine, microseconds apart);
    the margin covers a message stamped before ``<since>`` but stored after
    the last message read. It does not rely on counting the same number of
    lines on every read: when the engine rotated the log (``max-size``) and
    lost its start, the messages around the cursor are still there.

    ``skip_lines`` (without a cursor): lines a service that stored no cursor
    recorded; the first ``skip_lines`` lines are then the old ones.
    """

    def __init__(self, cursor=None, skip_lines=0):
        self._skip_since, self._skip_count = _parse_cursor(cursor)
        self._skip_lines = 0 if self._skip_since is not None else max(skip_lines or 0, 0)
        self._seen_at_or_after = 0  # messages stamped at or after _skip_since
        self._pending = []  # texts of the unfinished line
        self._pending_new = False
        self._lines = 0  # complete lines read, old and new
        self._recent = collections.deque()  # stamps of messages read, newest last
        self._since = None
        self._count = 0
        self._last_stamp = 0
        self.cursor = cursor

    def again(self):
        """A reader for the same log read again from its start, after what this one read."""
        if self.cursor is not None:
            return _LogReader(cursor=self.cursor)
        return _LogReader(skip_lines=max(self._skip_lines, self._lines))

    def feed(self, item):
        """``[(line, new, cursor)]`` for the lines that the message ``item`` completes.

        ``new`` is False for lines up to the cursor the reader started from.
        """
        stamp, text = self._split(item)
        old = self._is_old(stamp)
        self._read(stamp)
        self._pending.append(text)
        self._pending_new = self._pending_new or not old
        if not text.endswith("\n"):
            return []
        return [self._complete()]

    def finish(self):
        """The unfinished last line, once the log has ended: ``[]`` or ``[(line, new, cursor)]``."""
        if not self._pending:
            return []
        return [self._complete()]

    def _complete(self):
        line = "".join(self._pending)
        line = line.removesuffix("\n").removesuffix("\r")
        new = self._pending_new
        self._pending = []
        self._pending_new = False
        self._lines += 1
        if self._skip_lines and self._lines <= self._skip_lines:
            new = False
        self.cursor = self._make_cursor()
        return line, new, self.cursor

    def _split(self, item):
        head, sep, text = item.partition(" ")
        stamp = _nanoseconds(head) if sep else None
        if stamp is None:
            # Not stamped (cannot happen with timestamps=True): keep the text
            # whole, with the last stamp, so that cursors still only grow.
            return self._last_stamp, item
        self._last_stamp = stamp
        return stamp, text

    def _is_old(self, stamp):
        if self._skip_since is None:
            return False
        if stamp < self._skip_since:
            return True
        self._seen_at_or_after += 1
        return self._seen_at_or_after <= self._skip_count

    def _read(self, stamp):
        self._recent.append(stamp)
        if self._since is not None and stamp >= self._since:
            self._count += 1

    def _make_cursor(self):
        newest = self._recent[-1]
        target = (newest - _CURSOR_MARGIN_NS) // 1_000_000_000 * 1_000_000_000
        if self._since is None or target > self._since:
            # At most once a second of log: count again what is recent.
            self._since = target
            while self._recent and self._recent[0] < target:
                self._recent.popleft()
            self._count = sum(1 for stamp in self._recent if stamp >= target)
        return f"{self._since} {self._count}"


#: How far before the last message read a cursor's ``<since>`` lies (ns).
_CURSOR_MARGIN_NS = 1_000_000_000

_STAMP_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def _nanoseconds(stamp):
    """Nanoseconds since the epoch of a Docker log stamp (RFC 3339), or None."""
    match = _STAMP_RE.match(stamp)
    if not match:
        return None
    seconds, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    whole = int(datetime.datetime.fromisoformat(seconds + zone).timestamp())
    return whole * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def _parse_cursor(cursor):
    """``(since, count)`` of a cursor made by :class:`_LogReader`, or ``(None, 0)``."""
    try:
        since, count = (int(part) for part in (cursor or "").split(" "))
    except ValueError:
        return None, 0
    return since, max(count, 0)


def _timestamp(text):
    """Seconds since the epoch for a Docker time stamp (RFC 3339, nanoseconds)."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$", text or "")
    if not match:
        return 0.0
    seconds, fraction, zone = match.groups()
    zone = "+00:00" if zone in ("", "Z") else zone
    moment = datetime.datetime.fromisoformat(seconds + zone)
    return moment.timestamp() + float(f"0.{fraction or 0}")


def _container_name(container):
    try:
        return container["Names"][0].lstrip("/")
    except (KeyError, IndexError, TypeError):
        return container.id[:12]


async def _shielded(coro):
    """Run clean-up to its end even if the calling task is being cancelled."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _option(cmd, flag):
    """The value after ``flag`` in a command list, or None."""
    cmd = list(cmd or [])
    for index, item in enumerate(cmd[:-1]):
        if item == flag:
            return cmd[index + 1]
    return None


def _secrets(username, password):
    """The strings that must never be shown, longest first."""
    found = set()
    if password:
        found.update({password, quote(password, safe="")})
        if username:
            found.update(
                {f"{username}:{password}", f"{quote(username, safe='')}:{quote(password, safe='')}"}
            )
    elif username:
        # A token given as the user name is the secret.
        found.update({username, quote(username, safe="")})
    return sorted(found, key=len, reverse=True)


def _scrub(text, secrets):
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _split_credentials(repo):
    """``(url without user info, user, password)`` for an http(s) URL with user info."""
    parts = urlsplit(repo)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return repo, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = parts._replace(netloc=host).geturl()
    return clean, unquote(user) or None, unquote(password) or None


def _credential_store_line(repo, username, password):
    """A git credential-store line for the scheme and host of ``repo``."""
    parts = urlsplit(repo)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("Credentials can only be used with http:// or https:// repository URLs")
    host = parts.netloc.rpartition("@")[2]
    user = quote(username or "", safe="")
    secret = quote(password or "", safe="")
    return f"{parts.scheme}://{user}:{secret}@{host}\n"


#: Ends the tag of a version's own reference (see version_reference).
VERSION_TAG = re.compile(r"--v[0-9]+$")


def version_reference(image_name, number):
    """The reference that keeps build ``number`` of ``image_name``:
    ``repo:tag--vN`` (Docker tags have at most 128 characters)."""
    repository, tag = _split_reference(image_name)
    suffix = f"--v{number}"
    return f"{repository}:{tag[: 128 - len(suffix)]}{suffix}"


def _split_reference(image_name):
    """``(repository, tag)`` of an image reference; a port is not a tag."""
    repository, sep, tag = image_name.rpartition(":")
    if not sep or "/" in tag:
        return image_name, "latest"
    return repository, tag


def _forget(task):
    """Stop ``task`` if it still runs; an error it ended with is no one's business."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


class _Repo2DockerGone(Exception):
    """The repo2docker image, found before, is no longer on the engine."""


def _with_hook(cmd):
    """``cmd`` run by a shell that first writes the post-checkout hook (see _HOOK).

    Writing it from the command line costs nothing; uploading it into the
    created container (like the credentials) costs a mount of its file
    system, about a tenth of a second. The hook's text is the shell's $0.
    """
    hook = f"{HOOKS_PATH}/post-checkout"
    script = f'mkdir -p {HOOKS_PATH} && printf "%s" "$0" > {hook} && chmod 755 {hook} && exec "$@"'
    return ["sh", "-c", script, _HOOK, *cmd]


def _credentials_tar(content):
    data = content.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(CREDENTIALS_FILE)
        info.size = len(data)
        info.mode = 0o600
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _failure_message(code, tail):
    return failure.describe(f"repo2docker exited with code {code}", tail)


def _describe(error):
    if isinstance(error, aiodocker.DockerError):
        return error.message
    return str(error) or error.__class__.__name__
