"""The one interface every build backend implements.

A backend turns a :class:`BuildRequest` into an image and reports what happens
as :class:`BuildEvent` objects. Everything above the interface (the queue, the
log fan-out to SSE clients, persistence, recovery after a restart) lives once,
in :mod:`tljh_repo2docker.builds.manager` and the modules it uses
(:mod:`~tljh_repo2docker.builds.buildlog`, ``finishing``, ``recovery``),
and is the same for every backend.
"""

import hashlib
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from traitlets.config import LoggingConfigurable

#: Phases of a build event.
LOG = "log"  # one line of build output
STATUS = "status"  # the build moved on (queued, building, ...); message says how
BUILT = "built"  # final: the image exists
FAILED = "failed"  # final: the build failed; message says why
CANCELLED = "cancelled"  # final: stopped on request
FINAL_PHASES = frozenset({BUILT, FAILED, CANCELLED})


@dataclass
class BuildEvent:
    phase: str
    message: str
    #: On the final ``built`` event: the image built (a backend like BinderHub
    #: chooses the name itself), its id, size in bytes and the resolved commit.
    image_name: str | None = None
    image_id: str | None = None
    size: int | None = None
    commit: str | None = None
    #: On the final event, when the image was checked before going live: the
    #: check's result, ``{"status": "passed" | "failed" | "skipped", "message": ...}``.
    #: A ``failed`` event with a check and an ``image_id`` is a version that
    #: failed its check (recorded, never current).
    check: dict | None = None
    #: What is inside the image (``{"build_pack", "python", "r", "repo2docker"}``)
    #: and its packages (``[{"name", "version", "manager"}]``); None: unknown.
    inside: dict | None = None
    packages: list | None = None
    #: The builder that made it: its image reference and id.
    builder_image: str | None = None
    builder_image_id: str | None = None
    #: On ``log`` events: where the backend's output stands just after this
    #: line, as an opaque string. The manager stores it in the same
    #: transaction as the line, and after a restart gives the stored one
    #: back to :meth:`Builder.attach`, which goes on just after it.
    cursor: str | None = field(default=None, repr=False)

    @property
    def final(self):
        return self.phase in FINAL_PHASES


@dataclass
class BuildRequest:
    uid: str
    repo: str
    ref: str
    #: The image reference to build (``name:tag``).
    image_name: str
    #: Labels to put on the image (metadata of the environment).
    labels: dict[str, str] = field(default_factory=dict)
    build_args: dict[str, str] = field(default_factory=dict)
    #: Repository provider for backends that need one (BinderHub: gh, gl, git, ...).
    provider: str = "git"
    #: The number of the version this build makes (the environment's build
    #: number); None when unknown.
    number: int | None = None
    #: The owner's own check, run in the new image after the built-in one
    #: (a shell command line; None: none).
    check_command: str | None = None
    #: The environment's limits, which the check applies like the spawner.
    memory: str | None = None
    cpu: float | None = None
    #: The builder (repo2docker image) to build with; None: the backend's default.
    builder_image: str | None = None
    #: Where it comes from: ``"git"`` (``repo`` at ``ref``), ``"files"``
    #: (``files``, handed to the builder with no network fetch) or
    #: ``"image"`` (``repo`` is an existing image's reference, checked and
    #: tagged instead of built).
    source: str = "git"
    #: For ``"files"``: ``{relative path: text}``.
    files: dict[str, str] | None = field(default=None, repr=False)
    #: Credentials for a private repository. Used for the clone and then
    #: forgotten: never logged, stored, labelled or put on a command line.
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    #: Where the time of this build goes (see :class:`Timeline`); a backend
    #: marks its own steps in it. Not part of what is built.
    timeline: "Timeline | None" = field(default=None, repr=False, compare=False)

    @property
    def has_credentials(self):
        return bool(self.username or self.password)

    def mark(self, point):
        if self.timeline is not None:
            self.timeline.mark(point)


def files_hash(files):
    """The "commit" of a build from files: a short content hash of ``files``
    (``{path: text}``), the same for the same files in any order."""
    digest = hashlib.sha256()
    for path in sorted(files or {}):
        name = path.encode("utf-8")
        text = files[path].encode("utf-8")
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(text).to_bytes(8, "big") + text)
    return digest.hexdigest()[:40]


class Timeline:
    """Moments of one build, for a debug line that says where its time goes.

    ``mark("container started")`` notes the time of a point (the first time
    only: a point reached again, like a database write retried, keeps its
    first moment). :meth:`summary` gives ``"submitted +0.0 ms, ..."``.
    """

    def __init__(self, first="submitted"):
        self.points = [(first, time.perf_counter())]
        self._seen = {first}

    def mark(self, point):
        if point not in self._seen:
            self._seen.add(point)
            self.points.append((point, time.perf_counter()))

    def summary(self):
        start = self.points[0][1]
        return ", ".join(f"{name} +{(at - start) * 1000:.1f} ms" for name, at in self.points)


class BuildError(Exception):
    """A backend operation failed; ``message`` is safe to show to the user."""

    def __init__(self, message, log_message=None):
        super().__init__(message)
        self.message = message
        self.log_message = log_message or message


class Builder(LoggingConfigurable):
    """Base class of the build backends. Configure subclasses with traitlets."""

    #: Whether the backend accepts credentials and build args.
    supports_credentials = True
    supports_build_args = True
    #: Where environments may come from with this backend (see BuildRequest.source).
    sources = ("git", "files", "image")
    #: Whether a build that was running when the service stopped, and that
    #: :meth:`attach` cannot follow, is queued again on start-up (instead of
    #: being marked failed). Right for a backend where asking again for the
    #: same build is cheap and joins the build still running.
    resubmit_on_recover = False
    #: How status lines about the backend name it.
    display_name = "the build backend"

    def build(self, request: BuildRequest) -> AsyncIterator[BuildEvent]:
        """Start a build and yield its events; the last one is final.

        Never raises for a build that fails: it yields a ``failed`` event with
        the reason. Closing the iterator early (or cancelling the task that
        consumes it) only stops *following* the build: the build goes on until
        :meth:`cancel` is called, so that a restarted service can re-attach.
        """
        raise NotImplementedError

    def attach(
        self, uid: str, skip_lines: int, cursor: str | None = None
    ) -> AsyncIterator[BuildEvent] | None:
        """Follow a build that was started before the service restarted.

        What is stored of its log ends at ``cursor``, the ``cursor`` of the
        last stored ``log`` event, or None when nothing carried one (then
        ``skip_lines`` counts the lines stored, as earlier versions recorded
        it). Nothing stored must be yielded again, and nothing after it
        left out: the manager only sends events to live clients once they
        are stored, so this is what makes a log exact across a restart.
        Returns None when there is nothing to re-attach to (the build
        vanished); the manager then marks it failed.
        """
        return None

    async def running(self) -> set[str]:
        """Uids of the builds this backend still runs (for recovery)."""
        return set()

    async def cancel(self, uid: str) -> str | None:
        """Stop a running build, leaving no partial image.

        May return a note for the build's log, for a backend that cannot stop
        the build itself (what goes on, and what becomes of its image).
        """
        raise NotImplementedError

    def unstartable(self, image_name: str) -> str | None:
        """Why servers cannot start from this backend's ``image_name``, or None.

        For a message before the hub is asked, rather than a spawner refusing
        the server after the start was accepted.
        """
        return None

    async def discard(self, uid: str) -> None:
        """Remove what is left of a build that the database says has ended
        (e.g. a container that could not be removed while the engine was
        away): stop it if it still runs, remove it and its unfinished image,
        never a built image."""

    async def image_exists(self, image_name: str) -> bool:
        """Whether the built image can still be used."""
        return True

    async def delete_image(self, image_name: str, image_id: str | None = None) -> list | None:
        """Remove a built image (no error if it is already gone).

        Raise BuildError if the image cannot be removed (for example because
        a container uses it). May return what the backend did (Docker: the
        engine's ``[{"Untagged": ...}, {"Deleted": <image id>}, ...]``).
        """

    #: Whether built images are pushed to a registry (that the backend can delete them from).
    pushes = False

    async def delete_pushed(self, image_names) -> tuple[list, list]:
        """Delete ``image_names`` from the registry they were pushed to.

        ``(deleted, left)``: the names gone from the registry, and
        ``[(name, reason)]`` of those left there (a registry that allows no
        deletes, one that cannot be reached). Nothing to do by default.
        """
        return [], []

    def version_name(self, image_name: str, number: int) -> str:
        """The reference that keeps build ``number`` of ``image_name`` once
        ``image_name`` moves on to a newer build (made by :meth:`keep_version`).

        The default suits a backend whose image names already differ per
        build (BinderHub names an image by its commit).
        """
        return image_name

    async def keep_version(self, image_name: str, image_id: str | None, number: int) -> str:
        """Make the reference :meth:`version_name` names (idempotent); returns it."""
        return self.version_name(image_name, number)

    async def image_references(self) -> set[str] | None:
        """Every image name (``repo:tag``) the backend holds; None if it cannot tell."""
        return None

    async def make_current(self, version_image: str, image_id: str | None, image_name: str) -> str:
        """Make a kept version the image that new servers start from (a rollback).

        Returns the name servers start by from now on: the Docker backend
        points ``image_name`` at the version's image and returns it; the
        default returns ``version_image`` (its own, per-commit name).
        """
        return version_image

    async def image_users(self) -> dict[str, int] | None:
        """How many containers (servers) use each image, by image id.

        None when the backend cannot see the containers (BinderHub on
        Kubernetes): callers then count the hub's servers instead.
        """
        return None

    async def disk_usage(self) -> dict | None:
        """What the backend's disk holds, for the disk report and prune (see
        :mod:`tljh_repo2docker.service.disk_usage`), or None when it cannot tell (BinderHub):

        ``{"images": {image id: {"size", "shared_size", "containers", "tags",
        "labels"}}, "layers_size": bytes of all layers (each counted once),
        "build_cache": [{"id", "size", "in_use", "shared", "last_used" (Unix
        time)}]}``.
        """
        return None

    async def disk_space(self) -> dict:
        """The file system images are stored on: ``{"path", "total", "used",
        "free", "note"}``; the numbers are None when unknown, and ``note``
        says why."""
        return {
            "path": None,
            "total": None,
            "used": None,
            "free": None,
            "note": f"{self.display_name} does not report the disk it stores images on",
        }

    async def prune_build_cache(self, older_than: float) -> dict:
        """Remove the build cache entries not in use and not used for
        ``older_than`` seconds; returns ``{"count", "size"}`` removed."""
        return {"count": 0, "size": 0}

    async def adoptable_images(self) -> list[dict]:
        """Images carrying our labels, for adopting ones missing from the database.

        Each item: ``{"image_name": ..., "image_id": ..., "size": ..., "labels": {...}}``.
        """
        return []

    async def adopt_image(self, image_name: str, labels: dict) -> dict | None:
        """Take over an existing image for an environment that has no image id yet.

        Used for environments converted from tljh-repo2docker 3.x. Returns
        ``{"image_id": ..., "size": ...}``, or None when the image is missing.
        A backend that cannot look at images takes the name as the id.
        """
        if not await self.image_exists(image_name):
            return None
        return {"image_id": image_name, "size": None}

    async def check(self) -> str:
        """Raise if the backend cannot be reached; return a short description."""
        return self.__class__.__name__

    async def close(self) -> None:
        """Release connections on shutdown."""
