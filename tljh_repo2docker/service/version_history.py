"""An environment's versions: its history (with which is current and how many
servers use each) and rollback to an earlier one.

Every successful build is a version (``db.models.Version``, recorded by the
build manager). The *current* version is the one whose image id the
environment holds: new servers start from it. A rollback makes an earlier
version current again (``Builder.make_current``); running servers keep the
image they run. A version whose image failed its check (``check.status``
"failed") is in the history, never current: a rollback to it is refused.

How many servers use a version: the Docker backend counts the containers of
each image (any state: a stopped server's container needs its image to start
again). A backend that cannot see containers (BinderHub on Kubernetes)
counts the hub's running and starting servers whose ``user_options`` name
the version's image. When neither can be asked, the count is ``None``
(unknown), never a guess.
"""

import asyncio
import logging

from ..builds.base import BuildError
from ..db import store
from ..hub_client import HubError

log = logging.getLogger(__name__)


class RollbackError(Exception):
    """A rollback that cannot be done: ``status`` and a message for the user."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def failed_check(version):
    """Whether ``version``'s image failed the check made before it could go live."""
    return (version.check or {}).get("status") == "failed"


def current_version_id(env, versions):
    """The id of ``env``'s current version among ``versions`` (newest first):
    the newest one with the environment's image id that did not fail its
    check (a rebuild to the same image that failed, say a new check command,
    leaves the version that passed current), or None."""
    if env.image_id is None:
        return None
    for version in versions:
        if version.image_id == env.image_id and not failed_check(version):
            return version.id
    return None


async def server_counts(builder, hub, versions):
    """``{version id: servers}`` for ``versions``; a count is None when unknown."""
    try:
        users = await builder.image_users()
    except Exception as e:
        log.warning("Cannot count the containers of each image: %s", e)
        return {v.id: None for v in versions}
    if users is not None:
        return {v.id: users.get(v.image_id, 0) for v in versions}
    try:
        servers = await hub.active_servers()
    except HubError as e:
        # Without the list:users scope (or with the hub away) nobody can
        # tell: say unknown rather than 0.
        log.warning("Cannot list the hub's servers to count them per version: %s", e.message)
        return {v.id: None for v in versions}
    by_image = {}
    for _user, _name, server in servers:
        image = (server.get("user_options") or {}).get("image")
        if image:
            by_image[image] = by_image.get(image, 0) + 1
    return {v.id: by_image.get(v.image_name, 0) for v in versions}


async def history(sessions, builder, hub, env, *, manages):
    """The API models of ``env``'s versions, newest first.

    ``built_by`` (a user name) is shown only to those who manage the
    environment, as ``as_dict`` keeps owner-only fields for them.
    """
    versions = await store.list_versions(sessions, env.uid)
    current = current_version_id(env, versions)
    counts = await server_counts(builder, hub, versions) if versions else {}
    models = []
    for version in versions:
        model = store.version_dict(
            version, current=version.id == current, servers=counts.get(version.id)
        )
        if not manages:
            model["built_by"] = None
        # how many packages it holds (None: not known); the list itself is
        # versions/{id}/packages
        model["package_count"] = len(version.packages) if isinstance(version.packages, list) else None
        models.append(model)
    return models


def parse_version_id(body):
    """The ``version`` of a rollback request: a positive integer, else a
    ValueError naming what is wrong."""
    if "version" not in body:
        raise ValueError("is required: the id of one of the environment's versions")
    value = body["version"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer: the id of one of the environment's versions")
    if value < 1 or value > 2**63 - 1:
        raise ValueError(f"no version {value} of this environment")
    return value


async def rollback(sessions, builder, env, version_id):
    """Make version ``version_id`` of ``env`` current; returns the Version.

    Raises RollbackError: 404 for a version that is not ``env``'s, 400 for
    one whose image failed its check, 409 when its image is gone (the row is
    then removed: it cannot come back) or the backend cannot point the
    environment at it.
    """
    version = await store.get_version(sessions, env.uid, version_id)
    if version is None:
        raise RollbackError(404, f"version: no version {version_id} of this environment")
    if failed_check(version):
        raise RollbackError(
            400,
            f"version: version {version.number} failed its check, so servers cannot start "
            f"from it ({version.check.get('message') or 'no reason recorded'}); "
            "choose a version that passed, or fix the repository and rebuild",
        )
    image = version.image_id or version.image_name
    try:
        exists = await builder.image_exists(image)
    except Exception as e:
        raise RollbackError(
            409, f"Cannot check the image of version {version.number}: {e}"
        ) from None
    if not exists:
        await store.delete_versions(sessions, env.uid, [version.id])
        log.warning(
            "Version %d of %s: its image %s is gone; removed from the history",
            version.number, env.uid, version.image_name,
        )
        raise RollbackError(
            409,
            f"version: the image of version {version.number} is gone from the engine "
            "(removed outside this service); it was taken out of the history",
        )
    async with _locks.setdefault(env.uid, asyncio.Lock()):
        env = await store.get_environment(sessions, env.uid) or env
        try:
            name = await builder.make_current(version.image_name, version.image_id, env.image_name)
        except BuildError as e:
            raise RollbackError(409, e.message) from None
        if not await store.make_version_current(sessions, env.uid, version, name):
            # A build was queued in between: put the name back where it was.
            if env.image_id:
                try:
                    await builder.make_current(env.image_name, env.image_id, env.image_name)
                except BuildError as e:
                    log.warning("Could not restore the image of %s: %s", env.uid, e.message)
            raise RollbackError(
                409, "A build of the environment started: roll back once it has ended"
            )
    return version


# One rollback at a time per environment: the engine's tag and the database
# must name the same version. (One small lock per environment rolled back.)
_locks = {}
