"""Pushing built images to the registry their name designates.

With ``DockerBuilder.push`` on, a build is pushed once it has its name and
before it is reported built (see :meth:`.images.ImagesMixin._publish`): the
name ``127.0.0.1:5000/tljh-r2d/env:ref`` goes to the registry at
``127.0.0.1:5000`` (Docker's rule: a first part with a ``.`` or a ``:``, or
``localhost``, is a registry; other names go to Docker Hub). The engine
pushes; its stream of per-layer progress is condensed into a few lines of
the build's log (:class:`PushProgress`). A push that fails fails the build,
and the environment's name points at its previous image again.

The registry's credentials (``registry_username``, ``registry_password``)
go to the engine only in the ``X-Registry-Auth`` header of the push request:
never into a log line, a label or an error message (each is scrubbed of
them too, in case the engine or registry repeats them).
"""

import asyncio
import base64
import json
import re
import time

import aiodocker
import aiohttp

from ...contract import split_reference
from ..base import LOG, STATUS, BuildEvent
from . import credentials
from .engine import UID_LABEL, describe

#: Where a name without a registry host is pushed.
DEFAULT_REGISTRY = "docker.io"
#: Seconds between two lines about the bytes a push has sent.
PROGRESS_INTERVAL = 10

_DIGEST_RE = re.compile(r"\bdigest: (sha256:[0-9a-f]{64})\b")
# What the engine says of a layer on its way; only the ends are shown.
_UNDER_WAY = {"Preparing", "Waiting", "Pushing"}
_EXISTS = "Layer already exists"


def registry_of(image_name):
    """The registry host ``image_name`` is pushed to (Docker's rule)."""
    first, sep, _ = image_name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return DEFAULT_REGISTRY


def _size(count):
    return f"{count / 1e6:.1f} MB"


def _layers(count):
    return f"{count} layer{'' if count == 1 else 's'}"


def config_file_credentials(path, registry):
    """``(username, password)`` for ``registry`` in a Docker client config file
    (``{"auths": {"<registry>": {"auth": base64("user:password")}}}``, or
    ``username``/``password`` fields; as in a Kubernetes secret of type
    ``kubernetes.io/dockerconfigjson``). Empty strings when it has none.

    Raises ValueError naming the file (never its content) when it cannot be read.
    """
    try:
        with open(path) as f:
            auths = (json.load(f) or {}).get("auths") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(
            f"DockerBuilder.registry_config_file {path} cannot be read ({e.__class__.__name__})"
        ) from None
    names = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DEFAULT_REGISTRY:
        names += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    for name in names:
        entry = auths.get(name) or auths.get(name + "/")
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ValueError(
                    f"DockerBuilder.registry_config_file {path}: the auth of {registry} is not "
                    "base64 of user:password"
                ) from None
            return username, password
        return entry.get("username") or "", entry.get("password") or ""
    return "", ""


class PushFailed(Exception):
    """A push failed; the message names the registry and holds no secret."""


class PushProgress:
    """The engine's push stream as a few lines for the build's log.

    :meth:`feed` takes one item of the stream and gives the lines to show
    (often none): one per layer uploaded, with its size; a line about the
    bytes sent every :data:`PROGRESS_INTERVAL` seconds while layers go up;
    any message the engine has for a layer beyond its progress ("Retrying
    in 5 seconds"). :meth:`summary` counts the layers at the end.
    ``digest`` is the manifest's digest once the engine gave it.
    """

    def __init__(self, interval=PROGRESS_INTERVAL, clock=time.monotonic):
        self.digest = None
        self.pushed = {}  # layer: bytes
        self.existing = set()  # already in the registry, or mounted from another repository
        self._sizes = {}  # layer: (sent, total)
        self._interval = interval
        self._clock = clock
        self._last = clock()

    def feed(self, item):
        aux = item.get("aux") or {}
        if isinstance(aux, dict) and aux.get("Digest"):
            self.digest = aux["Digest"]
            return []
        status = str(item.get("status") or "").strip()
        layer = item.get("id")
        if not layer:
            # "The push refers to repository [...]" (said by us already),
            # "<tag>: digest: sha256:... size: N" (said by us at the end).
            match = _DIGEST_RE.search(status)
            if match and self.digest is None:
                self.digest = match.group(1)
            return []
        if status == "Pushing":
            detail = item.get("progressDetail") or {}
            if detail.get("total"):
                self._sizes[layer] = (detail.get("current") or 0, detail["total"])
            return self._progress()
        if status in _UNDER_WAY:
            return []
        if status == "Pushed":
            self.pushed[layer] = self._sizes.pop(layer, (0, 0))[1]
            size = f" ({_size(self.pushed[layer])})" if self.pushed[layer] else ""
            return [f"layer {layer}: pushed{size}"]
        if status == _EXISTS or status.startswith("Mounted from"):
            self.existing.add(layer)
            self._sizes.pop(layer, None)
            return []
        return [f"layer {layer}: {status}"]

    def _progress(self):
        now = self._clock()
        if now - self._last < self._interval or not self._sizes:
            return []
        self._last = now
        sent = sum(current for current, _ in self._sizes.values())
        total = sum(total for _, total in self._sizes.values())
        return [
            f"pushing: {_layers(len(self.pushed))} done, {len(self._sizes)} under way "
            f"({_size(sent)} of {_size(total)} sent)"
        ]

    def summary(self):
        sent = sum(self.pushed.values())
        parts = [_layers(len(self.pushed)) + " pushed" + (f" ({_size(sent)})" if sent else "")]
        if self.existing:
            parts.append(f"{_layers(len(self.existing))} already in the registry")
        return ", ".join(parts)


class PushMixin:
    """Pushing (part of ``DockerBuilder``): uses its ``push``,
    ``registry_username``, ``registry_password``, ``push_timeout``,
    ``docker`` client and ``log``."""

    def _registry_credentials(self, registry=None):
        """``(username, password)`` for ``registry``: the settings, else its
        entry in ``registry_config_file`` (empty strings: anonymous)."""
        if self.registry_username or self.registry_password or not self.registry_config_file:
            return self.registry_username, self.registry_password
        return config_file_credentials(self.registry_config_file, registry)

    def _registry_auth(self, registry=None):
        """What the engine sends to the registry (None: push anonymously)."""
        username, password = self._registry_credentials(registry)
        if not (username or password):
            return None
        return {"username": username, "password": password}

    def _registry_secrets(self, registry=None):
        """The strings that must never be shown, longest first."""
        username, password = self._registry_credentials(registry)
        found = set(credentials.secrets(username, password))
        if password:
            pair = f"{username}:{password}".encode()
            found.add(base64.b64encode(pair).decode())
            header = json.dumps(self._registry_auth(registry)).encode()
            found.add(base64.urlsafe_b64encode(header).decode())
        return sorted(found, key=len, reverse=True)

    async def _push(self, image_name, progress, uid=None):
        """Push ``image_name``; yield the build log's events about it.

        ``progress`` (a :class:`PushProgress`) holds the digest afterwards.
        Raises :class:`PushFailed`, with a message that names the registry.
        """
        registry = registry_of(image_name)
        repository, tag = split_reference(image_name)
        try:
            secrets = self._registry_secrets(registry)
        except ValueError as e:  # registry_config_file unreadable: says which, never its content
            self.log.error("Build %s: pushing to %s failed: %s", uid or "-", registry, e)
            raise PushFailed(f"pushing to {registry} failed: {e}") from None
        started = time.monotonic()
        yield BuildEvent(STATUS, f"pushing to {registry}")
        yield BuildEvent(LOG, f"Pushing {image_name}")
        self.log.info("Build %s: pushing %s", uid or "-", image_name)
        reason = None
        stream = None
        try:
            if self.registry_password and not self.registry_username:
                raise ValueError(
                    "DockerBuilder.registry_password is set but "
                    "DockerBuilder.registry_username is not"
                )
            stream = self.docker.images.push(
                repository, tag=tag, auth=self._registry_auth(registry), stream=True
            )
            deadline = time.monotonic() + self.push_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise asyncio.TimeoutError()
                try:
                    item = await asyncio.wait_for(stream.__anext__(), left)
                except StopAsyncIteration:
                    break
                for line in progress.feed(item):
                    yield BuildEvent(LOG, credentials.scrub(line, secrets))
        except asyncio.TimeoutError:
            reason = (
                f"it did not finish within {self.push_timeout:g} s (DockerBuilder.push_timeout)"
            )
        except aiodocker.DockerError as e:
            reason = describe(e)
        except (aiohttp.ClientError, OSError, ValueError) as e:
            reason = describe(e)
        finally:
            if stream is not None:
                await stream.aclose()
        if reason is None and progress.digest is None:
            reason = "the Docker engine reported no digest for the image"
        if reason is not None:
            message = credentials.scrub(f"pushing to {registry} failed: {reason}", secrets)
            self.log.error("Build %s: %s", uid or "-", message)
            raise PushFailed(message)
        yield BuildEvent(LOG, progress.summary())
        yield BuildEvent(LOG, f"Pushed {image_name}, digest {progress.digest}")
        self.log.info(
            "Build %s: pushed %s as %s@%s in %.1f s",
            uid or "-", image_name, repository, progress.digest, time.monotonic() - started,
        )

    async def _push_now(self, image_name):
        """Push ``image_name`` outside a build (versions, rollbacks); its digest.

        Raises :class:`PushFailed`.
        """
        progress = PushProgress(interval=float("inf"))
        async for event in self._push(image_name, progress):
            self.log.debug("Pushing %s: %s", image_name, event.message)
        return progress.digest

    async def _image_id(self, name):
        """The id of image ``name``, or None if there is none."""
        try:
            return (await self.docker.images.inspect(name))["Id"]
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise

    async def _previous_image(self, image_name, new_id, uid):
        """The image ``image_name`` names before a build of ``uid`` takes it.

        When it already names the new image ``new_id`` (the service was
        stopped while it pushed it), the environment's newest other image.
        """
        current = await self._image_id(image_name)
        if current != new_id or not uid:
            return current
        images = await self.docker.images.list(filters={"label": [f"{UID_LABEL}={uid}"]})
        others = [image for image in images if image["Id"] != new_id]
        if not others:
            return None
        return max(others, key=lambda image: image.get("Created") or 0)["Id"]

    async def _put_name_back(self, image_name, previous):
        """Point ``image_name`` at image ``previous`` again (remove the name when None)."""
        if previous is None:
            await self._untag(image_name)
            return
        repository, tag = split_reference(image_name)
        try:
            await self.docker.images.tag(previous, repository, tag=tag)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            self.log.error("Could not point %s at its previous image again: %s", image_name, e)
        else:
            self.log.info("%s names its previous image %s again", image_name, previous[:19])
