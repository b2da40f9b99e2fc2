"""The build container: how it is configured, created, found again, stopped and removed.

Each build is one container, ``{container_prefix}{uid}``, made from the
request's ``builder_image`` (else ``repo2docker_image``) with the engine's socket mounted, so repo2docker builds
the image on the same engine that JupyterHub spawns from. The container
carries the label ``tljh_repo2docker.build=<uid>``; that label is how
``DockerBuilder.running()`` and ``attach()`` find builds again after the
service restarted. What the check of the built image needs (see
:mod:`.check`: the owner's check command and the environment's limits) is
in its labels too, for a build followed again after a restart; never a
credential.

:class:`ContainerMixin` is this part of
:class:`~tljh_repo2docker.builds.docker.DockerBuilder`.
"""

import asyncio
import io
import tarfile
import uuid

import aiodocker
import aiohttp

from ..base import STATUS, BuildError, BuildEvent
from . import credentials
from .credentials import CREDENTIALS_DIR, CREDENTIALS_PATH
from .engine import (
    BUILD_LABEL,
    DOCKER_SOCKET,
    ENGINE_ERRORS,
    IMAGE_NAME_LABEL,
    STAGING_NAME_LABEL,
    VERSION_NUMBER_LABEL,
    UID_LABEL,
    describe,
)

#: Where the files of an environment from files are put in its build
#: container (uploaded before it starts): repo2docker builds this local
#: directory, with no network fetch.
FILES_PARENT = "/tmp"
FILES_DIR = "tljh-r2d-source"
FILES_PATH = f"{FILES_PARENT}/{FILES_DIR}"
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


#: Build container labels: what the check of its image needs (see :mod:`.check`).
CHECK_COMMAND_LABEL = "tljh_repo2docker.build_check_command"
MEMORY_LABEL = "tljh_repo2docker.build_memory"
CPU_LABEL = "tljh_repo2docker.build_cpu"


class _Repo2DockerGone(Exception):
    """The repo2docker image, found before, is no longer on the engine."""


class ContainerMixin:
    """Build containers (part of ``DockerBuilder``): uses its traits, ``docker``
    client, ``log`` and ``_repo2docker_found``."""

    def _container_name(self, uid):
        return f"{self.container_prefix}{uid}"

    # -- what it runs ----------------------------------------------------------

    def _staging_name(self, uid):
        """A new image name for one build of ``uid``, that repo2docker has never seen."""
        return f"{self.container_prefix.lower()}{uid}:{uuid.uuid4().hex[:12]}"

    def _command(self, request, staging_name=None):
        files = request.source == "files"
        cmd = [
            "jupyter-repo2docker",
            "--no-run",
            # A local directory has no ref: repo2docker refuses one.
            *([] if files else ["--ref", request.ref]),
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
        cmd += ["--", FILES_PATH if files else request.repo]
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

    def _builder_image(self, request):
        """The repo2docker image that builds ``request``: its own, else the default."""
        return request.builder_image or self.repo2docker_image

    def _check_labels(self, request):
        labels = {}
        if request.check_command:
            labels[CHECK_COMMAND_LABEL] = request.check_command
        if request.memory:
            labels[MEMORY_LABEL] = str(request.memory)
        if request.cpu:
            labels[CPU_LABEL] = f"{request.cpu:g}"
        return labels

    # -- creating it -----------------------------------------------------------

    async def _ensure_repo2docker_image(self, image):
        """Make sure the repo2docker image ``image`` is there; yields status events while pulling."""
        # The last one found is not asked for again (a request less per build).
        if image == self._repo2docker_found:
            return
        try:
            await self.docker.images.inspect(image)
            self._repo2docker_found = image
            return
        except aiodocker.DockerError as e:
            if e.status != 404:
                raise BuildError(f"Cannot use the Docker engine: {describe(e)}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise BuildError(
                f"Cannot reach the Docker engine at {self.docker_url}: {describe(e)}"
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
        except ENGINE_ERRORS as e:
            raise BuildError(
                f"The repo2docker image {image} is not present on the Docker engine "
                f"and pulling it failed: {describe(e)}"
            ) from e

    async def _start_container(self, request, staging, credential_store):
        """Create and start the build container; _Repo2DockerGone when the
        create finds no repo2docker image although it was found before.
        ``credential_store`` (a credential-store line, or None) is uploaded
        before it starts."""
        try:
            container = await self._create_container(request, staging)
        except aiodocker.DockerError as e:
            if e.status != 404 or self._repo2docker_found != self._builder_image(request):
                raise
            self._repo2docker_found = None
            raise _Repo2DockerGone() from e
        request.mark("container created")
        if credential_store is not None:
            await container.put_archive(CREDENTIALS_DIR, credentials.tar(credential_store))
        if request.source == "files":
            await container.put_archive(FILES_PARENT, files_tar(request.files or {}, FILES_DIR))
        await container.start()
        request.mark("container started")
        return container

    async def _create_container(self, request, staging):
        name = self._container_name(request.uid)
        config = {
            "Image": self._builder_image(request),
            "Cmd": _with_hook(self._command(request, staging)),
            "Env": self._environment(request),
            "Labels": {
                BUILD_LABEL: request.uid,
                IMAGE_NAME_LABEL: request.image_name,
                STAGING_NAME_LABEL: staging,
                **({VERSION_NUMBER_LABEL: str(request.number)} if request.number else {}),
                **self._check_labels(request),
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

    # -- finding, stopping and removing ----------------------------------------

    async def _find(self, uid):
        containers = await self.docker.containers.list(
            all=True, filters={"label": [f"{BUILD_LABEL}={uid}"]}
        )
        return containers[0] if containers else None

    async def _discard(self, uid):
        """Remove the build container of ``uid`` if there is one; never raises."""
        try:
            container = await self._find(uid)
        except ENGINE_ERRORS as e:
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


def files_tar(files, folder):
    """An uncompressed tar (bytes) of ``files`` (``{relative path: text}``,
    checked by service/files_source.py) under ``folder``, made in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        folders = {folder}
        for path in files:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                folders.add(f"{folder}/{'/'.join(parts[:depth])}")
        for name in sorted(folders):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            archive.addfile(info)
        for path, text in sorted(files.items()):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{folder}/{path}")
            info.size = len(data)
            # Executable, like a checked-out postBuild or start must be.
            info.mode = 0o755
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _with_hook(cmd):
    """``cmd`` run by a shell that first writes the post-checkout hook (see _HOOK).

    Writing it from the command line costs nothing; uploading it into the
    created container (like the credentials) costs a mount of its file
    system, about a tenth of a second. The hook's text is the shell's $0.
    """
    hook = f"{HOOKS_PATH}/post-checkout"
    script = f'mkdir -p {HOOKS_PATH} && printf "%s" "$0" > {hook} && chmod 755 {hook} && exec "$@"'
    return ["sh", "-c", script, _HOOK, *cmd]
