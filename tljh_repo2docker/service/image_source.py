"""Environments registered from an existing image (``"image": "<reference>"``).

An image environment is not built with repo2docker: the builder takes the
image (pulled when its reference names a registry), gives it this hub's
labels, checks it like a build and publishes it (builds/docker/imported.py).
Stored: ``source`` "image", ``repo`` the reference, ``ref`` "".

This module checks a request's reference (:func:`parse`, called by
service/fields.py for the ``image`` branch: the common fields are checked
there) and says whether a re-pull found new content (:func:`content_id`,
:func:`unchanged_message`, used by service/lifecycle.py and the ref poller).

Which registries a reference may name: ``allowed_image_registries``. Empty
(the default): a reference without a registry host (one of the engine's own
images, never pulled) or one at the registry named by ``image_prefix``
(``127.0.0.1:5000/envs/`` -> ``127.0.0.1:5000``). Otherwise each entry is an
allowed registry host (``docker.io``, ``ghcr.io``, ``127.0.0.1:5000``), or
``*`` for any. A reference without a registry host is always allowed: it
names an image already on the engine (Docker Hub is named explicitly, as
``docker.io/library/python:3.12``).
"""

import asyncio
import re
from dataclasses import dataclass

from ..errors import FieldError

#: The setting that lists the registries references may name.
SETTING = "allowed_image_registries"
#: Where a reference's registry is Docker Hub by Docker's own rule.
DOCKER_HUB = "docker.io"
#: Longest reference accepted (Docker's name limit is 255; tag and digest come on top).
MAX_REFERENCE = 512
MAX_NAME = 255

_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
# Docker's reference grammar (distribution/reference), in parts.
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*"
    r"(?::[0-9]{1,5})?$"
)
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
#: An image id as the engine gives it (the content a version was made from).
IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")

#: Seconds a re-pull's look at what a reference points at may take (a
#: request waits for it); past it the build goes ahead and pulls.
LOOK_TIMEOUT = 120

#: Fields of a request that cannot apply to an image (nothing is built from a repository).
NOT_FOR_IMAGES = {
    "ref": "an image has no git reference: give the tag or digest in image",
    "username": "credentials are for private repositories, not images",
    "password": "credentials are for private repositories, not images",
    "buildargs": "nothing is built from an image: build arguments cannot apply",
    "build_args": "nothing is built from an image: build arguments cannot apply",
    "builder_image": "nothing is built from an image: there is no builder to choose",
    "provider": "an image is not a repository: providers do not apply",
}


@dataclass(frozen=True)
class Reference:
    """An image reference in parts: ``[registry/]path[:tag][@digest]``."""

    registry: str | None
    path: str
    tag: str | None
    digest: str | None

    def __str__(self):
        text = f"{self.registry}/{self.path}" if self.registry else self.path
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _is_registry(first):
    """Docker's rule: a first component with a ``.`` or ``:``, or ``localhost``,
    is a registry host; anything else is part of a name."""
    return "." in first or ":" in first or first == "localhost"


def split(reference):
    """The parts of ``reference``; ValueError with a sentence saying what is wrong."""
    if not isinstance(reference, str):
        raise ValueError("must be a string: an image reference such as myimage:tag")
    if not reference:
        raise ValueError("is required: an image reference such as myimage:tag")
    if len(reference) > MAX_REFERENCE:
        raise ValueError(f"is longer than {MAX_REFERENCE} characters")
    if _CONTROL.search(reference):
        raise ValueError("must not contain spaces or control characters")
    if reference.startswith("-"):
        raise ValueError("must not start with '-'")
    rest, _, digest = reference.partition("@")
    if "@" in digest:
        raise ValueError(f"{reference!r} is not an image reference (more than one '@')")
    if digest and not _DIGEST.match(digest):
        raise ValueError(f"{digest!r} is not a digest (like sha256:<64 hexadecimal digits>)")
    name, tag = rest, None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise ValueError(
                f"{tag!r} is not an image tag (letters, digits, '_', '.', '-'; at most 128)"
            )
    if not name:
        raise ValueError(f"{reference!r} is not an image reference: it has no name")
    if len(name) > MAX_NAME:
        raise ValueError(f"its name is longer than {MAX_NAME} characters")
    first, sep, remainder = name.partition("/")
    registry = None
    if sep and _is_registry(first):
        if not _HOST.match(first):
            raise ValueError(f"{first!r} is not a registry host (like registry.example.org:5000)")
        registry, name = first, remainder
    for component in name.split("/"):
        if not _COMPONENT.match(component):
            raise ValueError(
                f"{reference!r} is not an image reference: {component!r} must be lowercase "
                "letters and digits, with single '.', '_' or '-' between them"
            )
    return Reference(registry=registry, path=name, tag=tag, digest=digest or None)


def registry_of_prefix(image_prefix):
    """The registry host that ``image_prefix`` names, or None (a local prefix)."""
    first, sep, _ = (image_prefix or "").partition("/")
    return first.lower() if sep and _is_registry(first) else None


def allowed_registries(app):
    """The registry hosts references may name (lowercase), or ``{"*"}`` for any."""
    configured = [r.strip().lower() for r in getattr(app, SETTING, None) or [] if r.strip()]
    if configured:
        return set(configured)
    own = registry_of_prefix(getattr(app, "image_prefix", ""))
    return {own} if own else set()


def check_registry(ref, app):
    """FieldError naming ``image`` when ``ref`` (a :class:`Reference`) names a
    registry that is not allowed."""
    if ref.registry is None:
        return
    allowed = allowed_registries(app)
    if "*" in allowed or ref.registry.lower() in allowed:
        return
    if getattr(app, SETTING, None):
        which = f"the allowed ones are: {', '.join(sorted(allowed))}"
    elif allowed:
        which = f"only the engine's own images and {next(iter(allowed))} (image_prefix) are allowed"
    else:
        which = "only the engine's own images are allowed"
    raise FieldError(
        "image",
        f"the registry {ref.registry} is not allowed ({which}): an administrator can add it "
        f"to the setting {SETTING}",
    )


def check_reference(reference, app):
    """The checked reference (a string) of a request's ``image``; FieldError naming ``image``."""
    if isinstance(reference, str):
        reference = reference.strip()
    try:
        ref = split(reference)
    except ValueError as e:
        raise FieldError("image", str(e)) from None
    check_registry(ref, app)
    prefix = getattr(app, "image_prefix", "") or ""
    if prefix and str(ref).startswith(prefix):
        raise FieldError(
            "image",
            f"{reference} is the image of one of this hub's environments (image_prefix "
            f"{prefix}): share that environment, or register another image",
        )
    return str(ref)


def _given(value):
    return value not in (None, "", {}, [])


def parse(body, app, builder):
    """The source fields of a POST body with ``image``: ``{"source": "image",
    "repo": <reference>, "ref": ""}``. Raises FieldError naming ``image``, or
    a field that cannot apply to an image. The common fields (name, limits,
    sharing, auto_rebuild, check_command) are service/fields.py's."""
    sources = getattr(builder, "sources", ("git", "files", "image"))
    if "image" not in sources:
        raise FieldError(
            "image", f"{getattr(builder, 'display_name', 'this backend')} cannot use existing images"
        )
    for field, reason in NOT_FOR_IMAGES.items():
        if _given(body.get(field)):
            raise FieldError(field, reason)
    if body.get("rebuild_on") not in (None, "any"):
        raise FieldError(
            "rebuild_on",
            'an image environment is pulled again when its reference points at new '
            'content: only "any" applies',
        )
    return {"source": "image", "repo": check_reference(body.get("image"), app), "ref": ""}


def default_name(reference):
    """A name for an environment registered from ``reference`` when none is
    given: the last part of its path (``ghcr.io/org/tools:1`` -> ``tools``)."""
    try:
        return split(reference).path.rsplit("/", 1)[-1]
    except ValueError:
        return reference


# -- re-pulling ---------------------------------------------------------------


def same_content(version_commit, image_id):
    """Whether a version made from ``version_commit`` (its source image's id)
    holds the content ``image_id`` (both ``sha256:...``)."""
    if not version_commit or not image_id:
        return False
    return version_commit.strip().lower() == image_id.strip().lower()


async def content_id(builder, reference, log=None, image_name=None):
    """The id of the image ``reference`` points at now (pulled again when it
    names a registry), or None when the backend cannot tell (the build then
    goes ahead: a failed look never skips a build). ``image_name``: the
    environment's (the registry it is pushed to gets the credentials)."""
    look = getattr(builder, "image_content_id", None)
    if look is None:
        return None
    try:
        return await asyncio.wait_for(look(reference, image_name=image_name), LOOK_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - a failed look builds; says why in the log
        if log is not None:
            log.info("Cannot tell what %s points at (pulling it in the build): %s", reference, e)
        return None


def unchanged_message(reference, image_id):
    """What a re-pull that found the current version's content answers."""
    return (
        f"The image {reference} is unchanged ({image_id[:19]}): nothing to pull "
        '(give "force": true to make a new version anyway)'
    )
