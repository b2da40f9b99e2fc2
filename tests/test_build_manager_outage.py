"""The BuildManager while its database is unavailable (unit tests, real SQLite).

A build goes on while the database is away: its log waits in memory (bounded
like the stored log), its start and its result wait too, and everything is
written once the database is back. ``tests/test_hub_databases.py`` does the
same end to end with a real PostgreSQL server that is stopped and started.
"""

import asyncio
import logging

import pytest
from sqlalchemy import exc as sa_exc

from tests.helpers.fakes import FlakySessions
from tljh_repo2docker.builds.base import BUILT, LOG, Builder, BuildEvent, BuildRequest
from tljh_repo2docker.builds.buildlog import DATABASE_AWAY_NOTICE
from tljh_repo2docker.builds.manager import BuildManager
from tljh_repo2docker.db import store
from tljh_repo2docker.db.errors import database_unavailable


class ScriptedBuilder(Builder):
    """Yields the events the test puts in ``events``; the build starts when iterated."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events = asyncio.Queue()
        self.started = asyncio.Event()

    async def build(self, request):
        self.started.set()
        while True:
            event = await self.events.get()
            yield event
            if event.final:
                return

    async def cancel(self, uid):
        pass


@pytest.fixture
async def setup(sqlite_sessions):
    """``(manager, builder, flaky sessions, environment)``, the build not yet submitted."""
    sessions = FlakySessions(sqlite_sessions)
    builder = ScriptedBuilder()
    manager = BuildManager(
        builder=builder,
        sessions=sessions,
        flush_interval=0.02,
        db_retry_interval=0.05,
        log_head_lines=3,
        log_tail_lines=5,
    )
    env = await store.create_environment(
        sqlite_sessions,
        uid="outage",
        name="outage",
        image_name="x/outage:main",
        repo="https://git.example.invalid/r.git",
        ref="main",
        node_selector={},
        build_args={},
    )
    yield manager, builder, sessions, env
    sessions.down = False
    await manager.close()


def request(env):
    return BuildRequest(uid=env.uid, repo=env.repo, ref=env.ref, image_name=env.image_name)


async def eventually(predicate, timeout=10):
    for _ in range(int(timeout / 0.02)):
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not reached")


async def stored_ids(sessions, uid):
    return [e[0] for e in await store.read_log(sessions, uid)]


async def test_log_and_result_wait_for_the_database(setup, sqlite_sessions, caplog):
    manager, builder, sessions, env = setup
    caplog.set_level(logging.INFO)
    await manager.submit(env, request(env))
    live = []

    async def follow():
        async for event in manager.subscribe(env.uid):
            live.append(event)

    follower = asyncio.ensure_future(follow())
    await builder.events.put(BuildEvent(LOG, "line 1"))
    # queued, building, line 1: stored while the database answers.
    await eventually(lambda: _len_is(sqlite_sessions, env.uid, 3))

    sessions.down = True
    for number in range(2, 5):
        await builder.events.put(BuildEvent(LOG, f"line {number}"))
    await builder.events.put(
        BuildEvent(BUILT, "done", image_id="sha256:abc", size=123, commit="c" * 40)
    )
    await eventually(lambda: sessions.refused > 10)
    # The build is over, but nothing about it could be stored, and the final
    # event waits until it is.
    got = await store.get_environment(sqlite_sessions, env.uid)
    assert got.status == store.BUILDING
    assert await stored_ids(sqlite_sessions, env.uid) == [1, 2, 3]
    # Live clients get events once they are stored (so that an id they saw
    # survives a kill of the service): lines 2-4 wait, and a notice without
    # an id says why.
    assert [e[2] for e in live] == ["queued (position 1)", "building", "line 1", DATABASE_AWAY_NOTICE]
    assert live[-1][0] is None
    assert manager.running_count == 1 and not follower.done()

    sessions.down = False
    await asyncio.wait_for(follower, 10)
    await eventually(lambda: manager.running_count == 0)
    got = await store.get_environment(sqlite_sessions, env.uid)
    assert got.status == store.BUILT and got.image_id == "sha256:abc" and got.size == 123
    assert got.last_event_id == 7 and got.source_lines == 4
    stored = await store.read_log(sqlite_sessions, env.uid)
    # head 3 + tail 5 hold all 7 events: nothing dropped, nothing twice.
    assert stored == [e for e in live if e[0] is not None]
    assert [e[0] for e in stored] == list(range(1, 8)) and stored[-1][1] == BUILT
    assert [e async for e in manager.subscribe(env.uid)] == stored

    messages = [r.getMessage() for r in caplog.records]
    down = [m for m in messages if m.startswith("The database is unavailable")]
    assert down and len(down) <= 3, down  # once per thing waiting, not once per attempt
    assert all("OperationalError" in m and "retrying every 0.05s" in m for m in down), down
    assert any(m.startswith("The database is back") for m in messages), messages
    assert not any(r.exc_info for r in caplog.records), "no tracebacks for an unavailable database"


async def _len_is(sessions, uid, n):
    return len(await stored_ids(sessions, uid)) == n


async def test_a_build_starts_only_once_its_start_is_stored(setup, sqlite_sessions):
    manager, builder, sessions, env = setup
    sessions.down = True
    await manager.submit(env, request(env))
    await eventually(lambda: sessions.refused > 5)
    assert not builder.started.is_set()
    sessions.down = False
    await asyncio.wait_for(builder.started.wait(), 10)
    got = await store.get_environment(sqlite_sessions, env.uid)
    assert got.status == store.BUILDING and got.started is not None
    await builder.events.put(BuildEvent(BUILT, "done", image_id="sha256:abc"))
    await eventually(lambda: manager.running_count == 0)
    assert (await store.get_environment(sqlite_sessions, env.uid)).status == store.BUILT


async def test_the_waiting_log_is_bounded_like_the_stored_one(setup, sqlite_sessions):
    manager, builder, sessions, env = setup
    await manager.submit(env, request(env))
    await builder.events.put(BuildEvent(LOG, "line 1"))
    await eventually(lambda: _len_is(sqlite_sessions, env.uid, 3))
    sessions.down = True
    for number in range(2, 1001):
        await builder.events.put(BuildEvent(LOG, f"line {number}"))
    await eventually(lambda: builder.events.empty())
    await asyncio.sleep(0.1)
    log = manager.build_logs[env.uid]
    # head 3 (already stored) + tail 5: never more than 5 lines wait.
    assert [e[2] for e in log.unstored()] == [f"line {n}" for n in range(996, 1001)]

    sessions.down = False
    await builder.events.put(BuildEvent(BUILT, "done"))
    await eventually(lambda: manager.running_count == 0)
    stored = await store.read_log(sqlite_sessions, env.uid)
    assert [e[2] for e in stored] == [
        "queued (position 1)", "building", "line 1",
        "line 997", "line 998", "line 999", "line 1000", "done",
    ]
    replay = [e async for e in manager.subscribe(env.uid)]
    assert replay[3] == (None, LOG, "... 995 log lines omitted ...")
    got = await store.get_environment(sqlite_sessions, env.uid)
    assert got.status == store.BUILT and got.source_lines == 1000 and got.last_event_id == 1003


async def test_other_errors_are_not_retried(setup, sqlite_sessions, monkeypatch):
    manager, builder, sessions, env = setup
    calls = []

    async def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("a bug")

    monkeypatch.setattr(store, "get_environment", broken)
    with pytest.raises(ValueError):
        await manager.build_logs.until_stored("x", lambda: store.get_environment(sessions, env.uid))
    assert calls == [1]


def test_what_counts_as_an_unavailable_database():
    import asyncpg

    refused = sa_exc.OperationalError("SELECT 1", None, ConnectionRefusedError())
    assert database_unavailable(refused)
    # PostgreSQL starting up or shutting down, as SQLAlchemy's asyncpg dialect
    # passes it on: a plain DBAPIError whose driver error has the SQLSTATE.
    starting = asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
    wrapped = sa_exc.DBAPIError("SELECT 1", None, _Coded("57P03"))
    assert starting.sqlstate == "57P03"
    assert database_unavailable(starting) and database_unavailable(wrapped)
    assert database_unavailable(sa_exc.DBAPIError("x", None, _Coded("08006")))
    # Bugs and data errors are not "unavailable": retrying would not help.
    assert not database_unavailable(sa_exc.IntegrityError("x", None, _Coded("23505")))
    assert not database_unavailable(sa_exc.DBAPIError("x", None, _Coded("42P01")))
    assert not database_unavailable(ValueError("x"))
    assert not database_unavailable(ConnectionResetError("not from the database layer"))


class _Coded(Exception):
    def __init__(self, sqlstate):
        super().__init__(sqlstate)
        self.sqlstate = sqlstate
