"""All queries. Handlers and the build manager call these; nothing else uses SQL.

Every function takes the ``async_sessionmaker`` first and opens its own short
session, so no session outlives one call.
"""

import asyncio
import collections
import functools
import time
from datetime import datetime, timezone

from sqlalchemy import Integer, case, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError

from ..access import normalise as normalise_sharing
from .models import Environment, LogLine, Version, utcnow

# Statuses of an environment.
QUEUED = "queued"
BUILDING = "building"
BUILT = "built"
FAILED = "failed"
CANCELLED = "cancelled"
IN_PROGRESS = (QUEUED, BUILDING)
STATUSES = (QUEUED, BUILDING, BUILT, FAILED, CANCELLED)


def _uncancellable(func):
    """Run a query to its end even when the calling task is cancelled.

    Cancelling a task in the middle of a transaction (a build cancelled
    while it writes its status, a log flush stopped when its build ends, an
    SSE client leaving) can leave the aiosqlite connection holding SQLite's
    write lock until it is garbage collected: every other write then waits
    ``busy_timeout`` and fails with "database is locked". The caller still
    gets its CancelledError, once the query is done.
    """

    @functools.wraps(func)
    async def wrapper(*args, **kwargs):
        task = asyncio.ensure_future(func(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            while not task.done():
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    pass
            if not task.cancelled():
                task.exception()  # retrieved: the cancel is what the caller gets
            raise

    return wrapper


class _Changes:
    """The writes that changed API models in one database: a count, and which uids."""

    #: How many writes are remembered; a reader further behind loads everything.
    KEPT = 10_000

    def __init__(self):
        self.version = 0
        self.log = collections.deque(maxlen=self.KEPT)  # (version, uid)


_changes = {}


def version(sessions):
    """A number that changes after every write that changes what as_dict() shows.

    Lets a reader reuse what it made from the environments until the next
    such write. Read it *before* querying: a write that lands in between
    then only costs a second query, never a stale answer. Writes that go
    around this module are not seen.
    """
    changes = _changes.get(sessions)
    return changes.version if changes else 0


def changed_since(sessions, since):
    """The uids written after version ``since``, or None when that is no longer known."""
    changes = _changes.get(sessions)
    if changes is None or changes.version == since:
        return set()
    if since > changes.version or not changes.log or changes.log[0][0] > since + 1:
        return None
    return {uid for number, uid in changes.log if number > since}


def _changed(sessions, uid):
    changes = _changes.setdefault(sessions, _Changes())
    changes.version += 1
    changes.log.append((changes.version, uid))


class NameTaken(Exception):
    """Another environment already has this display name."""


def _iso(value):
    if value is None:
        return None
    # SQLite hands back naive datetimes; they were stored as UTC. (Formatting
    # a naive one directly is twice as fast, which shows with 10,000 rows.)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat() + "Z"


def as_dict(env: Environment, *, position=None, admin=True, summary=None):
    """The API model of an environment. ``admin=False`` leaves out what only
    admins and the owner see (build arguments, error, queue position).
    ``summary``: one line on its current version (service/packages.py)."""
    model = {
        "uid": env.uid,
        "name": env.name,
        "image_name": env.image_name,
        "repo": env.repo,
        "ref": env.ref,
        "provider": env.provider,
        "status": env.status,
        "memory": env.memory,
        "cpu": env.cpu,
        "machine_profile": env.machine_profile,
        "node_selector": env.node_selector or {},
        "created": _iso(env.created),
        "started": _iso(env.started),
        "finished": _iso(env.finished),
        "size": env.size,
        "image_id": env.image_id,
        "commit": env.commit,
        "owner": env.owner,
        "sharing": normalise_sharing(env.sharing),
        "auto_rebuild": bool(env.auto_rebuild),
        "rebuild_on": env.rebuild_on or "any",
        "builder_image": env.builder_image,
        "summary": summary,
        "source": env.source or "git",
    }
    if env.source == "image":
        model["image"] = env.repo
    if admin:
        model.update(
            {
                "build_args": env.build_args or {},
                "error": env.error,
                "position": position,
                "build_number": env.build_number,
                # what the ref poller last saw (refwatch.py); the webhook's
                # secret and its hash are never shown
                "remote_commit": env.remote_commit,
                "remote_checked": _iso(env.remote_checked),
                "remote_error": env.remote_error,
                "webhook": env.webhook_secret_hash is not None,
                "check_command": env.check_command,
            }
        )
    return model


@_uncancellable
async def create_environment(sessions, **fields) -> Environment:
    env = Environment(
        status=QUEUED,
        queued=utcnow(),
        build_number=1,
        source_lines=0,
        last_event_id=0,
        **fields,
    )
    async with sessions() as session:
        session.add(env)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            raise NameTaken(fields.get("name")) from None
    _changed(sessions, env.uid)
    return env


@_uncancellable
async def name_taken(sessions, name) -> bool:
    async with sessions() as session:
        found = await session.scalar(
            select(Environment.id).where(func.lower(Environment.name) == name.lower())
        )
    return found is not None


@_uncancellable
async def image_name_taken(sessions, image_name) -> bool:
    async with sessions() as session:
        found = await session.scalar(
            select(Environment.id).where(Environment.image_name == image_name)
        )
    return found is not None


@_uncancellable
async def get_environment(sessions, uid) -> Environment | None:
    async with sessions() as session:
        return await session.scalar(select(Environment).where(Environment.uid == uid))


@_uncancellable
async def find_environment(sessions, uid_or_name) -> Environment | None:
    """An environment by uid, else by display name (case-insensitive), else by
    image name (what tljh-repo2docker 3.x's clients send)."""
    env = await get_environment(sessions, uid_or_name)
    if env is not None:
        return env
    async with sessions() as session:
        env = await session.scalar(
            select(Environment).where(func.lower(Environment.name) == uid_or_name.lower())
        )
        if env is None:
            env = await session.scalar(
                select(Environment)
                .where(Environment.image_name == uid_or_name)
                .order_by(Environment.id)
                .limit(1)
            )
        return env


@_uncancellable
async def list_environments(sessions, statuses=None) -> list[Environment]:
    query = select(Environment).order_by(Environment.created, Environment.id)
    if statuses is not None:
        query = query.where(Environment.status.in_(statuses))
    async with sessions() as session:
        return list((await session.scalars(query)).all())


@_uncancellable
async def environments_by_uid(sessions, uids) -> list[Environment]:
    """The environments among ``uids`` that exist (in no particular order)."""
    found = []
    uids = list(uids)
    async with sessions() as session:
        for start in range(0, len(uids), 500):  # bounded IN lists
            chunk = uids[start:start + 500]
            found += (await session.scalars(select(Environment).where(Environment.uid.in_(chunk)))).all()
    return found


@_uncancellable
async def access_rules(sessions) -> dict:
    """``{uid: (owner, sharing)}`` of the built environments (what a spawner checks)."""
    query = select(Environment.uid, Environment.owner, Environment.sharing).where(
        Environment.image_id.is_not(None)
    )
    async with sessions() as session:
        return {uid: (owner, sharing) for uid, owner, sharing in (await session.execute(query)).all()}


@_uncancellable
async def owner_usage(sessions, owner) -> tuple[int, int, int]:
    """``(environments, builds queued or running, bytes of built images)`` of ``owner``."""
    async with sessions() as session:
        row = (
            await session.execute(
                select(
                    func.count(Environment.id),
                    func.sum(Environment.status.in_(IN_PROGRESS).cast(Integer)),
                    func.sum(Environment.size),
                ).where(Environment.owner == owner)
            )
        ).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


_answered = {}  # sessions -> time.monotonic() of the last ping that answered


@_uncancellable
async def ping(sessions, fresh_for=0.0) -> None:
    """A trivial query: raises if the database cannot be used (for health checks).

    ``fresh_for`` (seconds): skip the query when a ping answered less than
    that long ago (a busy list answers from memory: one query per second, not
    per request, says whether the database still answers).
    """
    if fresh_for > 0:
        answered = _answered.get(sessions)
        if answered is not None and time.monotonic() - answered < fresh_for:
            return
    async with sessions() as session:
        await session.execute(text("SELECT 1"))
    _answered[sessions] = time.monotonic()


@_uncancellable
async def count_environments(sessions) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count(Environment.id)))


@_uncancellable
async def update_environment(sessions, uid, *, version=None, **fields) -> None:
    """Change fields of environment ``uid``; ``version`` (the fields of a
    Version) is recorded in the same transaction."""
    async with sessions() as session:
        await session.execute(update(Environment).where(Environment.uid == uid).values(**fields))
        if version is not None:
            await _add_version(session, uid, version)
        await session.commit()
    _changed(sessions, uid)


@_uncancellable
async def delete_environment(sessions, uid) -> None:
    async with sessions() as session:
        env_id = await session.scalar(select(Environment.id).where(Environment.uid == uid))
        if env_id is None:
            return
        await session.execute(delete(LogLine).where(LogLine.environment_id == env_id))
        await session.execute(delete(Version).where(Version.environment_id == env_id))
        await session.execute(delete(Environment).where(Environment.id == env_id))
        await session.commit()
    _changed(sessions, uid)


@_uncancellable
async def start_rebuild(
    sessions, uid, *, requested_by=None, reason="request", fields=None
) -> Environment | None:
    """Queue an environment again and clear its previous log, in one transaction.

    ``requested_by`` (a user name, None for the service itself) and
    ``reason`` ("request", "poll", "webhook") go into the version it makes;
    ``fields``: more columns to write in the same transaction.
    """
    async with sessions() as session:
        env = await session.scalar(select(Environment).where(Environment.uid == uid))
        if env is None:
            return None
        await session.execute(delete(LogLine).where(LogLine.environment_id == env.id))
        env.status = QUEUED
        env.queued = utcnow()
        env.started = None
        env.finished = None
        env.error = None
        env.build_number += 1
        env.source_lines = 0
        env.source_cursor = None
        env.requested_by = requested_by
        env.build_reason = reason
        for name, value in (fields or {}).items():
            setattr(env, name, value)
        await session.commit()
    _changed(sessions, uid)
    return env


@_uncancellable
async def auto_rebuild_environments(sessions) -> list[Environment]:
    """Environments to check for a moved ref (refwatch.py): auto_rebuild on,
    built at least once, and not queued or building."""
    query = (
        select(Environment)
        .where(
            Environment.auto_rebuild.is_(True),
            Environment.image_id.is_not(None),
            Environment.status.not_in(IN_PROGRESS),
        )
        .order_by(Environment.id)
    )
    async with sessions() as session:
        return list((await session.scalars(query)).all())


@_uncancellable
async def append_log(
    sessions,
    uid,
    events,
    *,
    source_lines=None,
    source_cursor=None,
    head=0,
    tail=0,
    fields=None,
    version=None,
) -> None:
    """Store log events ``[(event_id, phase, message), ...]``.

    ``source_lines`` records how many lines of the backend's output are now
    stored, and ``source_cursor`` (when not None) where they end in it, in
    the same transaction as the events; so are ``fields`` of the environment
    (a build's result with its last events). When ``head``/``tail`` are set, the log keeps its first ``head``
    and last ``tail`` events; the middle is dropped (readers show a marker).
    """
    if not events:
        return
    async with sessions() as session:
        env_id = await session.scalar(select(Environment.id).where(Environment.uid == uid))
        if env_id is None:
            return
        session.add_all(
            LogLine(environment_id=env_id, event_id=event_id, phase=phase, message=message)
            for event_id, phase, message in events
        )
        values = {"last_event_id": events[-1][0]}
        if source_lines is not None:
            values["source_lines"] = source_lines
        if source_cursor is not None:
            values["source_cursor"] = source_cursor
        values.update(fields or {})
        await session.execute(update(Environment).where(Environment.id == env_id).values(**values))
        if version is not None:
            session.add(Version(environment_id=env_id, **version))
        # Event ids of an environment start at 1 and never repeat, so a log
        # whose last id is within head + tail holds no more lines than that:
        # no need to count them (one query less per write of a short log).
        if head and tail and events[-1][0] > head + tail:
            await _prune_log(session, env_id, head, tail)
        await session.commit()
    if fields:
        _changed(sessions, uid)


async def _prune_log(session, env_id, head, tail):
    count = await session.scalar(
        select(func.count(LogLine.id)).where(LogLine.environment_id == env_id)
    )
    if count <= head + tail:
        return
    ids = select(LogLine.event_id).where(LogLine.environment_id == env_id)
    first_dropped = await session.scalar(ids.order_by(LogLine.event_id).offset(head).limit(1))
    last_kept_tail = await session.scalar(
        ids.order_by(LogLine.event_id.desc()).offset(tail - 1).limit(1)
    )
    await session.execute(
        delete(LogLine).where(
            LogLine.environment_id == env_id,
            LogLine.event_id >= first_dropped,
            LogLine.event_id < last_kept_tail,
        )
    )


@_uncancellable
async def read_log(sessions, uid, after=0) -> list[tuple[int, str, str]]:
    """Stored log events with an id above ``after``, oldest first."""
    async with sessions() as session:
        env_id = await session.scalar(select(Environment.id).where(Environment.uid == uid))
        if env_id is None:
            return []
        rows = await session.execute(
            select(LogLine.event_id, LogLine.phase, LogLine.message)
            .where(LogLine.environment_id == env_id, LogLine.event_id > after)
            .order_by(LogLine.event_id)
        )
        return [tuple(row) for row in rows.all()]


# Versions: one row per successful build whose image still exists.


def version_dict(version: Version, *, current=False, servers=0):
    """The API model of a version (see openapi.yaml, Version)."""
    return {
        "id": version.id,
        "number": version.number,
        "image_name": version.image_name,
        "image_id": version.image_id,
        "commit": version.commit,
        "built_at": _iso(version.built_at),
        "size": version.size,
        "duration": version.duration,
        "built_by": version.built_by,
        "reason": version.reason,
        "check": version.check,
        "inside": version.inside,
        "builder": (
            {"image": version.builder_image, "image_id": version.builder_image_id}
            if version.builder_image
            else None
        ),
        "current": current,
        "servers": servers,
    }


def new_version(env: Environment, **fields) -> Version:
    """A Version row of ``env`` (not yet added to a session)."""
    return Version(environment_id=env.id, **fields)


@_uncancellable
async def add_version(sessions, uid, **fields) -> Version | None:
    """Record a version of environment ``uid``; None if the environment is gone."""
    async with sessions() as session:
        env = await session.scalar(select(Environment).where(Environment.uid == uid))
        if env is None:
            return None
        version = new_version(env, **fields)
        session.add(version)
        await session.commit()
    _changed(sessions, uid)
    return version


async def _add_version(session, uid, version):
    env_id = await session.scalar(select(Environment.id).where(Environment.uid == uid))
    if env_id is not None:
        session.add(Version(environment_id=env_id, **version))


@_uncancellable
async def list_versions(sessions, uid) -> list[Version]:
    """Versions of environment ``uid``, newest first."""
    async with sessions() as session:
        rows = await session.scalars(
            select(Version)
            .join(Environment, Environment.id == Version.environment_id)
            .where(Environment.uid == uid)
            .order_by(Version.number.desc(), Version.id.desc())
        )
        return list(rows.all())


@_uncancellable
async def all_versions(sessions) -> list[tuple[str, Version]]:
    """``(environment uid, version)`` of every version, newest first per environment."""
    async with sessions() as session:
        rows = await session.execute(
            select(Environment.uid, Version)
            .join(Environment, Environment.id == Version.environment_id)
            .order_by(Environment.uid, Version.number.desc(), Version.id.desc())
        )
        return [tuple(row) for row in rows.all()]


@_uncancellable
async def current_version(sessions, env: Environment) -> Version | None:
    """The version ``env`` (a stored Environment) starts from: the one whose
    image it holds (None before its first build, or for a version not recorded)."""
    if env.image_id is None:
        return None
    async with sessions() as session:
        return await session.scalar(
            select(Version)
            .where(Version.environment_id == env.id, Version.image_id == env.image_id)
            .order_by(Version.number.desc(), Version.id.desc())
            .limit(1)
        )


def _package_count(dialect, column):
    """SQL for the length of a JSON array column (NULL when it is not an
    array), or None when the dialect has no such function here."""
    if dialect == "sqlite":
        return case((func.json_type(column) == "array", func.json_array_length(column)), else_=None)
    if dialect == "postgresql":
        return case((func.json_typeof(column) == "array", func.json_array_length(column)), else_=None)
    if dialect in ("mysql", "mariadb"):
        return case((func.json_type(column) == "ARRAY", func.json_length(column)), else_=None)
    return None


@_uncancellable
async def current_version_facts(sessions, uids=None) -> dict:
    """``{uid: (inside, package count)}`` of the current versions of the
    environments ``uids`` (None: all), in one query per 500 uids; the count
    is counted by the database where it can (no package list is loaded)."""
    found = {}
    async with sessions() as session:
        dialect = session.bind.dialect.name
        count = _package_count(dialect, Version.packages)
        columns = [Environment.uid, Version.inside, count if count is not None else Version.packages]
        query = (
            select(*columns)
            .join(Environment, Environment.id == Version.environment_id)
            .where(Environment.image_id.is_not(None), Version.image_id == Environment.image_id)
            .order_by(Version.number, Version.id)
        )
        uids = None if uids is None else list(uids)
        chunks = [None] if uids is None else [uids[i:i + 500] for i in range(0, len(uids), 500)]
        for chunk in chunks:
            rows = await session.execute(
                query if chunk is None else query.where(Environment.uid.in_(chunk))
            )
            for uid, inside, packages in rows.all():
                if count is None:
                    packages = len(packages) if isinstance(packages, list) else None
                found[uid] = (inside, packages)  # the newest number wins
    return found


@_uncancellable
async def get_version(sessions, uid, version_id) -> Version | None:
    async with sessions() as session:
        return await session.scalar(
            select(Version)
            .join(Environment, Environment.id == Version.environment_id)
            .where(Environment.uid == uid, Version.id == version_id)
        )


@_uncancellable
async def make_version_current(sessions, uid, version: Version, image_name) -> bool:
    """Point environment ``uid`` at ``version`` (a rollback), unless a build
    was queued meanwhile; returns whether it did."""
    async with sessions() as session:
        result = await session.execute(
            update(Environment)
            .where(Environment.uid == uid, Environment.status.not_in(IN_PROGRESS))
            .values(
                image_name=image_name,
                image_id=version.image_id,
                commit=version.commit,
                size=version.size,
                status=BUILT,
                error=None,
                # An environment from files: its files are the version's again.
                **({"files": version.files} if version.files is not None else {}),
            )
        )
        await session.commit()
    _changed(sessions, uid)
    return result.rowcount > 0


@_uncancellable
async def set_version_image(sessions, uid, version_id, image_name) -> None:
    """Give version ``version_id`` of ``uid`` another image reference (its own tag)."""
    async with sessions() as session:
        await session.execute(
            update(Version).where(Version.id == version_id).values(image_name=image_name)
        )
        await session.commit()
    _changed(sessions, uid)


@_uncancellable
async def delete_versions(sessions, uid, version_ids) -> None:
    if not version_ids:
        return
    async with sessions() as session:
        await session.execute(delete(Version).where(Version.id.in_(list(version_ids))))
        await session.commit()
    _changed(sessions, uid)


def now():
    return datetime.now(timezone.utc)
