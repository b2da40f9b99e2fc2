"""The Docker backend: repo2docker runs in a container next to the service.

Each build is one container, ``{container_prefix}{uid}``, made from
``repo2docker_image`` with the engine's socket mounted, so repo2docker builds
the image on the same engine that JupyterHub spawns from. It builds into a
staging name unique to the build, and only a successful build gets the
environment's image name. The commit that was built is read from the log.
Credentials for private repositories never reach the container's command
line, environment or labels.

The modules, each one part of :class:`DockerBuilder`:

==================  ==========================================================
``builder``         ``DockerBuilder``: its settings, build / attach / cancel
``container``       the build container: command, environment, create, remove
``follow``          following a container to its result; the engine's loss
``logreader``       the container's log lines and the cursor after each one
``images``          naming the result, versions (``repo:tag--vN``), deleting,
                    disk use, adoption
``credentials``     private repositories' credentials: split, scrub, upload
``imported``        environments from an existing image: taken, labelled,
                    checked and published instead of built
``push``            pushing built images to their registry (``push``)
``registry``        deleting pushed images from their registry (Registry API v2)
``engine``          label names, the engine's errors, small helpers
==================  ==========================================================

The names below are those other modules, tests and configuration files
import from ``tljh_repo2docker.builds.docker``.
"""

from .builder import DockerBuilder
from .container import BUILD_TMPFS_PATH, HOOKS_DIR, HOOKS_PATH
from .credentials import CREDENTIALS_DIR, CREDENTIALS_FILE, CREDENTIALS_PATH
from .engine import (
    BUILD_LABEL,
    DOCKER_SOCKET,
    IMAGE_NAME_LABEL,
    LEGACY_LABEL,
    STAGING_NAME_LABEL,
    UID_LABEL,
)
from ...contract import VERSION_TAG, is_version_reference, version_reference
from .logreader import LogReader

__all__ = [
    "BUILD_LABEL",
    "BUILD_TMPFS_PATH",
    "CREDENTIALS_DIR",
    "CREDENTIALS_FILE",
    "CREDENTIALS_PATH",
    "DOCKER_SOCKET",
    "DockerBuilder",
    "HOOKS_DIR",
    "HOOKS_PATH",
    "IMAGE_NAME_LABEL",
    "LEGACY_LABEL",
    "LogReader",
    "STAGING_NAME_LABEL",
    "UID_LABEL",
    "VERSION_TAG",
    "is_version_reference",
    "version_reference",
]
