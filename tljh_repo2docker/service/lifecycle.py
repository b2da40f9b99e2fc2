"""Queueing a rebuild of an environment: the one path for every reason.

A user's ``POST api/environments/{uid}/rebuild``, the ref poller
(ref_watcher.py) and the push webhook (handlers/webhooks.py) all come here, so
the checks a rebuild passes (nothing queued yet, credentials of a private
repository, the owner's quotas and fair queue) are made once.
"""

from .. import contract
from ..builds.base import BuildRequest
from ..db import store
from .disk_usage import Disk
from ..errors import Conflict, DiskFull, FieldError, NotFound

#: Why a build runs (stored with the version it makes).
REQUEST, POLL, WEBHOOK = "request", "poll", "webhook"


class AlreadyBuilding(Conflict):
    """The environment is queued or building already (409)."""

    def __init__(self):
        super().__init__("The environment is already queued or building")


class NeedsCredentials(FieldError):
    """A private repository: its credentials are never stored, so the service
    cannot rebuild it without someone giving them again."""

    def __init__(self):
        super().__init__(
            "password", "this repository is private: give the credentials again to rebuild"
        )


def build_request(env, credentials=(None, None), image_prefix=""):
    """What the build backend needs to build ``env``; ``image_prefix`` (the
    service's) goes into the image's labels, marking it as this hub's."""
    username, password = credentials
    return BuildRequest(
        uid=env.uid,
        repo=env.repo,
        ref=env.ref,
        image_name=env.image_name,
        labels=contract.image_labels(env, image_prefix),
        build_args=dict(env.build_args or {}),
        provider=env.provider,
        username=username,
        password=password,
    )


async def refuse_when_disk_full(app):
    """507 when the engine's disk has less free space than ``min_free_disk``."""
    reason = await Disk.for_app(app).refusal()
    if reason:
        raise DiskFull(reason)


async def _owner_is_admin(app, owner):
    """Whether the environment's owner is a hub admin (whose builds no quota limits)."""
    if not owner:
        return True  # environments of no one (3.x's, adopted) are the admins'
    return await app.hub_client.is_admin(owner)


async def queue_rebuild(
    app, env, *, requested_by=None, reason=REQUEST, credentials=(None, None),
    check_quota=None, fields=None,
):
    """Queue ``env`` (a stored Environment) to be built again; the queued Environment.

    ``requested_by``: the user who asked, None for the service itself
    (poll, webhook). ``check_quota``: whether the owner's quotas apply
    (default: unless the owner is an admin, as when the owner asks).
    ``fields``: more columns written with the queued state (what the poller
    or the webhook saw). Raises AlreadyBuilding, NeedsCredentials, 507 when
    the disk is under ``min_free_disk``, or the quotas' FieldError; nothing
    is stored then.
    """
    builds = app.build_manager
    if builds.is_active(env.uid):
        raise AlreadyBuilding()
    username, password = credentials
    if env.private and not password:
        raise NeedsCredentials()
    await refuse_when_disk_full(app)
    if check_quota is None:
        check_quota = not await _owner_is_admin(app, env.owner)
    # Usage is the owner's: counted and changed under the owner's lock, so
    # two rebuilds at once cannot both take their last free place.
    async with app.quotas.lock(env.owner or ""):
        if builds.is_active(env.uid):
            raise AlreadyBuilding()
        if check_quota:
            await app.quotas.check_usage(app.sessions, env.owner or "")
        queued = await store.start_rebuild(
            app.sessions, env.uid, requested_by=requested_by, reason=reason, fields=fields
        )
        if queued is None:
            raise NotFound(f"No environment with uid {env.uid!r}")
        await builds.submit(queued, build_request(queued, (username, password), app.image_prefix))
    app.log.info(
        "Rebuild of %s queued (%s, by %s)", env.uid, reason, requested_by or "the service"
    )
    return queued
