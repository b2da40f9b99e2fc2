"""Environments from an existing image: taken, labelled, checked and published.

:class:`ImportMixin` is the part of
:class:`~tljh_repo2docker.builds.docker.DockerBuilder` that makes a version
of an environment whose ``source`` is ``"image"`` (``request.repo`` is the
image's reference) without repo2docker:

1. the image is found on the engine; a reference that names a registry
   (``registry.example.org/team/image:tag``) is pulled first, every time,
   so that a rebuild takes what the reference points at now (progress in the
   build's log); a reference without a registry host is one of the engine's
   own images and is never pulled;
2. a small image ``FROM <its id>`` with this hub's labels (the request's:
   ``contract.image_labels``) is made through the engine's build API, from
   an in-memory context, under the build's staging name: ``docker tag``
   cannot add labels, and the labels are what makes an image one of this
   hub's environments (adoption, disk, the spawners). The image's own labels
   are kept under ours; no layer is copied; each hub gets its own image id;
3. it is checked and published exactly like a built image
   (:meth:`~.follow.FollowMixin._check_and_publish`): a single-user server
   must come up in it, then it gets the environment's name (and is pushed
   with ``push`` on).

The final event's ``commit`` is the id of the image taken (``sha256:...``):
a re-pull that finds the same id has nothing new (service/image_source.py).
The request's ``ref``, when it is such an id (a rebuild of a version), is
used instead of the reference.

An import has no build container: it runs in the service's task, and a
cancel (the task cancelled, then :meth:`DockerBuilder.cancel`) stops it
where it is and removes what it made. A service that stops during an import
cannot follow it again: the build is then marked failed by the recovery, and
what it left (its check's containers, found by ``running()``, and its image
under a staging name) is removed by ``attach()``.
"""

import contextlib
import re
import time

import aiodocker

from ..base import BUILT, CANCELLED, FAILED, LOG, STATUS, BuildEvent
from .check import CheckSpec
from .engine import ENGINE_ERRORS, UID_LABEL, describe, from_image_context, shielded
from .push import DEFAULT_REGISTRY, registry_of

#: Labels of an imported image: where it came from.
SOURCE_IMAGE_LABEL = "tljh_repo2docker.source_image"
SOURCE_IMAGE_ID_LABEL = "tljh_repo2docker.source_image_id"

_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
#: Seconds between two lines about a pull's progress.
_PULL_PROGRESS_INTERVAL = 10


def names_registry(reference):
    """Whether ``reference`` names a registry host (Docker's rule), so it is pulled."""
    return registry_of(reference) != DEFAULT_REGISTRY or reference.startswith(f"{DEFAULT_REGISTRY}/")


class PullFailed(Exception):
    """A pull did not give the image; the message says why, for people."""


class ImportMixin:
    """Imports of existing images (part of ``DockerBuilder``): uses its
    ``docker`` client, ``log``, staging names, check and publishing steps."""

    async def _pull(self, reference, uid=None, image_name=None):
        """Pull ``reference``; yield its progress as log events. Raises PullFailed.

        The registry credentials (``registry_username``...) go only to the
        registry that ``image_name`` is pushed to, with ``push`` on."""
        registry = registry_of(reference)
        auth = None
        secrets = []
        if self.push and image_name and registry == registry_of(image_name):
            try:
                auth = self._registry_auth(registry)
                secrets = self._registry_secrets(registry) if auth else []
            except ValueError as e:  # registry_config_file unreadable: says which, never its content
                raise PullFailed(f"Cannot pull {reference}: {e}") from None
        yield BuildEvent(STATUS, f"pulling {reference}")
        self.log.info("Build %s: pulling %s", uid or "-", reference)
        layers = set()
        last = time.monotonic()
        error = None
        stream = None
        try:
            stream = self.docker.images.pull(reference, auth=auth, stream=True)
            async for item in stream:
                if item.get("error"):
                    error = item.get("error")
                    break
                status = str(item.get("status") or "").strip()
                layer = item.get("id")
                if status in ("Pull complete", "Already exists") and layer:
                    layers.add(layer)
                    if status == "Pull complete":
                        yield BuildEvent(LOG, f"layer {layer}: pulled")
                elif status in ("Downloading", "Extracting", "Waiting", "Pulling fs layer",
                                "Verifying Checksum", "Download complete"):
                    if time.monotonic() - last >= _PULL_PROGRESS_INTERVAL:
                        last = time.monotonic()
                        yield BuildEvent(LOG, f"pulling: {len(layers)} layers done")
                elif status:
                    yield BuildEvent(LOG, _scrub(status, secrets))
        except aiodocker.DockerError as e:
            error = describe(e)
        except ENGINE_ERRORS as e:
            error = describe(e)
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        if error is not None:
            raise PullFailed(_scrub(f"Cannot pull {reference}: {error}", secrets))

    async def _inspect_source(self, reference):
        """The engine's inspection of ``reference``, or None when it has no such image."""
        try:
            return await self.docker.images.inspect(reference)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise

    async def image_content_id(self, reference, image_name=None):
        """The id of the image ``reference`` points at now: pulled again when
        it names a registry; None when there is no such image. PullFailed
        when the pull fails. ``image_name``: the environment's (see _pull)."""
        if names_registry(reference):
            async for event in self._pull(reference, image_name=image_name):
                self.log.debug("Pulling %s: %s", reference, event.message)
        image = await self._inspect_source(reference)
        return image["Id"] if image else None

    async def _import(self, request):
        """The events of an import of ``request.repo`` (see the module's text)."""
        uid = request.uid
        reference = request.repo
        source = request.ref if _IMAGE_ID.match(request.ref or "") else reference
        staging = self._staging_name(uid)
        started = time.monotonic()
        final = None
        try:
            yield BuildEvent(STATUS, f"taking the existing image {source}")
            if source == reference and names_registry(reference):
                try:
                    async for event in self._pull(reference, uid, request.image_name):
                        yield event
                except PullFailed as e:
                    self.log.warning("Build %s: %s", uid, e)
                    final = BuildEvent(FAILED, str(e))
            if final is None:
                try:
                    image = await self._inspect_source(source)
                except ENGINE_ERRORS as e:
                    image = None
                    final = BuildEvent(FAILED, f"Cannot inspect the image {source}: {describe(e)}")
                if final is None and image is None:
                    final = BuildEvent(FAILED, _missing(source))
            if final is None:
                source_id = image["Id"]
                yield BuildEvent(LOG, f"Taking {source} ({source_id})")
                labels = {
                    **request.labels,
                    UID_LABEL: uid,
                    SOURCE_IMAGE_LABEL: reference,
                    SOURCE_IMAGE_ID_LABEL: source_id,
                }
                try:
                    await self._label(source_id, staging, labels)
                except ENGINE_ERRORS as e:
                    final = BuildEvent(
                        FAILED, f"Cannot label the image {source} for this hub: {describe(e)}"
                    )
                except ValueError as e:
                    final = BuildEvent(FAILED, f"Cannot label the image {source}: {e}")
            if final is None:
                request.mark("image labelled")
                yield BuildEvent(LOG, f"Labelled it for this hub as {staging}")
                spec = CheckSpec(
                    command=request.check_command, memory=request.memory, cpu=request.cpu
                )
                steps = self._check_and_publish(
                    uid, request.image_name, staging, source_id, request.mark, request.number,
                    spec, [], None, (None, None),
                )  # fmt: skip
                async with contextlib.aclosing(steps) as events:
                    async for event in events:
                        if event.final:
                            final = event
                            continue
                        yield event
                if final is None:
                    final = BuildEvent(FAILED, "The check of the image ended without a result")
                if uid in self._cancelled:
                    final = BuildEvent(CANCELLED, "Build cancelled")
        except BaseException:
            # Cancelled (or stopped following): an import cannot be followed
            # again, so what it made goes now.
            await shielded(self._remove_checks(uid))
            await shielded(self._remove_staging(uid, staging))
            raise
        if final.phase != BUILT:
            await self._remove_staging(uid, staging)
        self.log.info(
            "Build %s: import of %s %s after %.1f s",
            uid, source, final.phase, time.monotonic() - started,
        )
        yield final

    async def _remove_import_leftovers(self, uid):
        """Remove the images an import of ``uid`` left under staging names
        (a service stopped during it); never the environment's images."""
        staging = f"{self._container_name(uid).lower()}:"
        try:
            images = await self.docker.images.list(filters={"label": [f"{UID_LABEL}={uid}"]})
        except ENGINE_ERRORS as e:
            self.log.warning("Could not look for the leftover images of build %s: %s", uid, e)
            return
        for image in images:
            for tag in image.get("RepoTags") or []:
                if tag.startswith(staging):
                    await self._remove_staging(uid, tag)

    async def _label(self, image_id, tag, labels):
        """Make image ``tag``: ``FROM image_id`` with ``labels`` (no layer copied)."""
        context = from_image_context(image_id)
        answer = await self.docker.images.build(
            fileobj=context, encoding="identity", tag=tag, labels=labels, rm=True, forcerm=True
        )
        for item in answer if isinstance(answer, list) else []:
            if isinstance(item, dict) and item.get("error"):
                raise ValueError(str(item["error"]).strip())


def _missing(reference):
    if names_registry(reference):
        return f"The image {reference} is not on the Docker engine after the pull"
    return (
        f"The image {reference} is not on the Docker engine: a reference without a "
        "registry host names one of the engine's own images (to pull one, name its "
        "registry, such as docker.io/library/python:3.12)"
    )


def _scrub(text, secrets):
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
