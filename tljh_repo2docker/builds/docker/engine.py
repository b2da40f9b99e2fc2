"""What the Docker backend's modules share: label names, the engine's errors, small helpers.

Labels are how the backend finds its builds and images again after the
service restarted: a build container carries :data:`BUILD_LABEL` (its uid),
the image it makes and its staging name; an environment's image carries
:data:`UID_LABEL`.
"""

import asyncio
import datetime
import io
import re
import tarfile
import time

import aiodocker
import aiohttp

from ... import contract

#: Container label holding the build's uid; also marks the container as ours.
BUILD_LABEL = "tljh_repo2docker.build"
#: Container label holding the image the build makes (for attach()).
IMAGE_NAME_LABEL = "tljh_repo2docker.build_image"
#: Container label holding the staging name repo2docker builds into.
STAGING_NAME_LABEL = "tljh_repo2docker.build_staging"
#: Container label holding the number of the version the build makes (for attach()).
VERSION_NUMBER_LABEL = "tljh_repo2docker.build_number"
#: Image label that marks an environment's image (see adoptable_images()).
UID_LABEL = contract.UID_LABEL
#: The label every image of tljh-repo2docker 3.x carries (it has no uid label).
LEGACY_LABEL = contract.IMAGE_NAME_LABEL

DOCKER_SOCKET = "/var/run/docker.sock"

#: What a call to the engine raises when it fails or cannot reach it.
ENGINE_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError)
# aiodocker's status of a DockerError when the engine cannot be reached at all.
NO_CONNECTION = 900


def describe(error):
    """The message of an engine's (or the connection's) error, for people."""
    if isinstance(error, aiodocker.DockerError):
        return error.message
    return str(error) or error.__class__.__name__


def option(cmd, flag):
    """The value after ``flag`` in a command list, or None."""
    cmd = list(cmd or [])
    for index, item in enumerate(cmd[:-1]):
        if item == flag:
            return cmd[index + 1]
    return None


def timestamp(text):
    """Seconds since the epoch for a Docker time stamp (RFC 3339, nanoseconds)."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$", text or "")
    if not match:
        return 0.0
    seconds, fraction, zone = match.groups()
    zone = "+00:00" if zone in ("", "Z") else zone
    moment = datetime.datetime.fromisoformat(seconds + zone)
    return moment.timestamp() + float(f"0.{fraction or 0}")


def container_name(container):
    """A listed container's name (without the leading ``/``), else its short id."""
    try:
        return container["Names"][0].lstrip("/")
    except (KeyError, IndexError, TypeError):
        return container.id[:12]


async def shielded(coro):
    """Run clean-up to its end even if the calling task is being cancelled."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def forget(task):
    """Stop ``task`` if it still runs; an error it ended with is no one's business."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def from_image_context(image_id):
    """A build context (an in-memory tar) whose Dockerfile is only
    ``FROM image_id``: built with labels, it makes an image of the same
    layers (nothing copied) that carries them."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {image_id}\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    return context
