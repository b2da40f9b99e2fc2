"""The database layer on every supported backend: SQLite, PostgreSQL and MySQL/MariaDB.

The servers are found through ``TLJH_R2D_TEST_POSTGRES_URL`` and
``TLJH_R2D_TEST_MYSQL_URL`` (defaults: what ``./dev setup`` creates). The user
must be allowed to create databases: each test gets its own throw-away
database, named after the configured one plus a random suffix. A server that
does not answer fails the tests under ``CI=true`` and skips them elsewhere.
"""

import asyncio
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from tests.helpers.databases import _server_db
from tljh_repo2docker.db import store
from tljh_repo2docker.db.models import Base
from tljh_repo2docker.db.session import (
    alembic_config,
    head_revision,
    make_engine,
    make_sessionmaker,
    upgrade_db,
)


REVISIONS = ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
async def db_url(request, tmp_path):
    """The URL of a fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    url, drop = await _server_db(request.param)
    try:
        yield url
    finally:
        await drop()


@pytest.fixture
async def sessions(db_url):
    engine = make_engine(db_url)
    await upgrade_db(engine)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def _tables(db_url):
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _revision(db_url):
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )
    finally:
        await engine.dispose()


async def _diff(db_url):
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
    finally:
        await engine.dispose()


async def _alembic(db_url, verb, revision):
    # The alembic env runs its own event loop: keep it off this one.
    await asyncio.to_thread(getattr(command, verb), alembic_config(db_url), revision)


# --- migrations -----------------------------------------------------------------


async def test_upgrade_empty_database_to_head(db_url):
    assert await _tables(db_url) == set()
    engine = make_engine(db_url)
    await upgrade_db(engine)
    await upgrade_db(engine)  # a second start changes nothing
    await engine.dispose()
    assert {"environments", "log_lines", "alembic_version"} <= await _tables(db_url)
    assert await _revision(db_url) == head_revision()


async def test_models_and_migrations_agree(db_url):
    engine = make_engine(db_url)
    await upgrade_db(engine)
    await engine.dispose()
    diff = await _diff(db_url)
    assert diff == [], diff


async def test_downgrade_and_upgrade_from_each_revision(db_url):
    assert REVISIONS[-1] == head_revision(), "add the new revision to REVISIONS"
    await _alembic(db_url, "upgrade", "head")
    await _alembic(db_url, "downgrade", "base")
    assert await _tables(db_url) <= {"alembic_version"}
    for revision in REVISIONS:
        await _alembic(db_url, "upgrade", revision)
        assert await _revision(db_url) == revision
        await _alembic(db_url, "upgrade", "head")
        assert await _revision(db_url) == head_revision()
        await _alembic(db_url, "downgrade", "base")
        assert await _revision(db_url) is None
    await _alembic(db_url, "upgrade", "head")
    diff = await _diff(db_url)
    assert diff == [], diff


# --- store ----------------------------------------------------------------------


def _fields(uid, name, **extra):
    fields = dict(
        uid=uid, name=name, image_name=f"tljh-r2d/{uid}:HEAD", repo="https://example.org/r",
        ref="HEAD", build_args={}, node_selector={},
    )
    fields.update(extra)
    return fields


async def test_store_round_trip(sessions):
    env = await store.create_environment(
        sessions, **_fields("u1", "Python Env", build_args={"A": "1"}, node_selector={"k": "v"},
                            owner="alice", memory="2G", cpu=1.5)
    )
    assert env.status == store.QUEUED and env.build_number == 1
    await store.create_environment(sessions, **_fields("u2", "Other"))

    # Display names are unique regardless of case.
    assert await store.name_taken(sessions, "python env")
    assert await store.name_taken(sessions, "PYTHON ENV")
    assert not await store.name_taken(sessions, "python")
    with pytest.raises(store.NameTaken):
        await store.create_environment(sessions, **_fields("u3", "Python Env"))
    assert await store.image_name_taken(sessions, "tljh-r2d/u1:HEAD")

    assert (await store.find_environment(sessions, "u1")).name == "Python Env"
    assert (await store.find_environment(sessions, "python ENV")).uid == "u1"
    assert await store.find_environment(sessions, "nope") is None
    assert await store.get_environment(sessions, "nope") is None

    got = await store.get_environment(sessions, "u1")
    assert got.build_args == {"A": "1"} and got.node_selector == {"k": "v"}
    assert got.cpu == 1.5 and got.memory == "2G" and got.private is False
    other = await store.get_environment(sessions, "u2")
    assert other.build_args == {} and other.node_selector == {}

    assert [e.uid for e in await store.list_environments(sessions)] == ["u1", "u2"]
    assert await store.count_environments(sessions) == 2

    big = 5 * 1024**3
    error = "x" * 20000 + " ünïcödé ✓"
    await store.update_environment(
        sessions, "u1", status=store.FAILED, error=error, size=big, commit="a" * 40
    )
    got = await store.get_environment(sessions, "u1")
    assert got.status == store.FAILED and got.error == error and got.size == big
    assert [e.uid for e in await store.list_environments(sessions, [store.FAILED])] == ["u1"]
    assert [e.uid for e in await store.list_environments(sessions, store.IN_PROGRESS)] == ["u2"]

    await store.append_log(sessions, "u1", [(1, "log", "one"), (2, "log", "two")], source_lines=2)
    rebuilt = await store.start_rebuild(sessions, "u1")
    assert rebuilt.status == store.QUEUED and rebuilt.build_number == 2 and rebuilt.error is None
    assert await store.read_log(sessions, "u1") == []
    got = await store.get_environment(sessions, "u1")
    assert got.build_number == 2 and got.source_lines == 0 and got.last_event_id == 2
    assert got.started is None and got.finished is None
    assert await store.start_rebuild(sessions, "nope") is None

    await store.append_log(sessions, "u1", [(3, "log", "three")])
    await store.delete_environment(sessions, "u1")
    await store.delete_environment(sessions, "u1")  # already gone: no error
    assert await store.get_environment(sessions, "u1") is None
    assert await store.read_log(sessions, "u1") == []
    assert await store.count_environments(sessions) == 1
    await store.ping(sessions)


async def test_times_come_back_in_utc(sessions):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    await store.create_environment(sessions, **_fields("u", "n"))
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    # Not UTC on purpose: must be stored as the same instant.
    finished = datetime(2026, 1, 2, 5, 34, 5, tzinfo=timezone(timedelta(hours=2)))
    await store.update_environment(sessions, "u", started=started, finished=finished)
    model = store.as_dict(await store.get_environment(sessions, "u"))
    assert model["started"] == "2026-01-02T03:04:05Z"
    assert model["finished"] == "2026-01-02T03:34:05Z"
    created = datetime.fromisoformat(model["created"].replace("Z", "+00:00"))
    assert before <= created <= after, (before, created, after)
    env = await store.get_environment(sessions, "u")
    assert env.created.tzinfo is not None and env.created.utcoffset() == timedelta(0)


async def test_log_is_bounded_with_head_and_tail(sessions):
    await store.create_environment(sessions, **_fields("u", "n"))
    for start in range(1, 101, 10):
        events = [(i, "log", f"line {i}") for i in range(start, start + 10)]
        await store.append_log(sessions, "u", events, source_lines=start + 9, head=5, tail=20)
    ids = [e[0] for e in await store.read_log(sessions, "u")]
    assert ids == [1, 2, 3, 4, 5] + list(range(81, 101))
    assert [e[0] for e in await store.read_log(sessions, "u", after=90)] == list(range(91, 101))
    env = await store.get_environment(sessions, "u")
    assert env.source_lines == 100 and env.last_event_id == 100


async def test_concurrent_writers_and_readers(sessions):
    writers, batches, per_batch, readers = 5, 200, 3, 20
    uids = [f"w{i}" for i in range(writers)]
    for uid in uids:
        await store.create_environment(sessions, **_fields(uid, uid))
    done = asyncio.Event()

    async def write(uid):
        for b in range(batches):
            first = b * per_batch + 1
            events = [(i, "log", f"{uid} line {i}") for i in range(first, first + per_batch)]
            await store.append_log(sessions, uid, events, source_lines=first + per_batch - 1)

    async def read(n):
        reads = 0
        while not done.is_set() or reads < 5:
            uid = uids[n % writers]
            events = await store.read_log(sessions, uid)
            ids = [e[0] for e in events]
            assert ids == list(range(1, len(ids) + 1))  # a prefix: never a hole
            assert len(await store.list_environments(sessions)) == writers
            reads += 1
            await asyncio.sleep(0.05)  # many readers at once, not a busy loop
        return reads

    t0 = time.monotonic()
    reading = [asyncio.ensure_future(read(n)) for n in range(readers)]
    try:
        await asyncio.gather(*(write(uid) for uid in uids))
    finally:
        done.set()
    counts = await asyncio.gather(*reading)
    assert all(c >= 5 for c in counts)
    total = batches * per_batch
    for uid in uids:
        events = await store.read_log(sessions, uid)
        assert [e[0] for e in events] == list(range(1, total + 1))
        assert events[-1][2] == f"{uid} line {total}"
        env = await store.get_environment(sessions, uid)
        assert env.last_event_id == total and env.source_lines == total
    assert time.monotonic() - t0 < 120


# --- the service against a database that does not answer --------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_start_without_database_server_serves_503_and_says_why(tmp_path, scheme):
    """A database server that is not up (yet) does not stop the service: JupyterHub
    would not start. It serves 503 naming the database and keeps trying."""
    url = f"{scheme}://someone:s3cret-pw@127.0.0.1:{_free_port()}/x"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tljh_repo2docker", f"--port={port}", f"--db_url={url}",
         "--retry_interval=0.5"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/services/tljh_repo2docker/"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(base + "health", timeout=5)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert health.status_code == 503
        body = health.json()
        assert body["database"].startswith("failed: ") and "database" in body["message"]
        api = httpx.get(base + "api/environments", timeout=5)
        assert api.status_code == 503 and api.json()["message"].startswith("The database is not available")
        time.sleep(1.5)  # a few retries
        assert proc.poll() is None
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "Traceback" not in out, out
    assert "s3cret-pw" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("[E")]
    assert len(errors) == 1, out  # said once, not at every retry
    assert "db_url" in errors[0] and "127.0.0.1" in errors[0], out


# --- the database lost while the service runs: API answers 503, not 500 ---------


async def test_api_answers_503_when_the_database_is_unavailable(tmp_path):
    import logging
    import types

    import httpx
    from tornado import web
    from tornado.httpserver import HTTPServer

    from tljh_repo2docker.handlers.base import DATABASE_UNAVAILABLE, APIHandler

    unreachable = {
        # SQLite: the file cannot be opened (sqlalchemy OperationalError).
        "sqlite": make_engine(f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}"),
        # A server that refuses connections (OSError from the driver, via SQLAlchemy).
        "postgresql": make_engine(f"postgresql://u:p@127.0.0.1:{_free_port()}/x"),
        "mysql": make_engine(f"mysql://u:p@127.0.0.1:{_free_port()}/x"),
    }

    class Probe(APIHandler):
        async def prepare(self):
            pass

        async def get(self, kind):
            if kind == "bug":
                raise ValueError("a plain bug stays a 500")
            if kind == "oserror":
                raise ConnectionResetError("not from the database layer: stays a 500")
            await store.count_environments(make_sessionmaker(unreachable[kind]))

    app = web.Application(
        [(r"/api/(\w+)", Probe)],
        tljh_app=types.SimpleNamespace(log=logging.getLogger("test"), max_body_size=1 << 20),
    )
    server = HTTPServer(app)
    port = _free_port()
    server.listen(port, "127.0.0.1")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for kind in unreachable:
                r = await client.get(f"/api/{kind}")
                assert r.status_code == 503, (kind, r.text)
                assert r.json() == {"status": 503, "message": DATABASE_UNAVAILABLE}
                assert r.headers["Content-Type"].startswith("application/json")
            for kind in ("bug", "oserror"):
                r = await client.get(f"/api/{kind}")
                assert r.status_code == 500, (kind, r.text)
                assert r.json()["status"] == 500
    finally:
        server.stop()
        for engine in unreachable.values():
            await engine.dispose()


async def test_rows_before_0004_stay_shared_with_everyone(db_url):
    """Environments stored before sharing existed (3.x's, adopted, admins') keep everyone."""
    from sqlalchemy import text

    await _alembic(db_url, "upgrade", "0003")
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "insert into environments (uid, name, image_name, repo, ref, provider, status, "
                    "node_selector, build_args, private, owner, created, build_number, source_lines, "
                    "last_event_id) values ('old1', 'Old', 'tljh-r2d/old:HEAD', 'https://example.org/r', "
                    "'HEAD', 'git', 'built', '{}', '{}', false, 'teacher', '2026-01-01 00:00:00', 1, 0, 0)"
                )
            )
    finally:
        await engine.dispose()
    await _alembic(db_url, "upgrade", "head")
    engine = make_engine(db_url)
    try:
        sessions = make_sessionmaker(engine)
        env = await store.get_environment(sessions, "old1")
        assert env.sharing == {"everyone": True, "users": [], "groups": []}
        assert store.as_dict(env)["sharing"]["everyone"] is True
    finally:
        await engine.dispose()


async def test_sharing_and_owner_usage(sessions):
    shared = {"everyone": False, "users": ["ann"], "groups": ["team"]}
    await store.create_environment(sessions, **_fields("s1", "One", owner="ann", sharing=shared))
    await store.create_environment(sessions, **_fields("s2", "Two", owner="ann"))
    await store.create_environment(sessions, **_fields("s3", "Three", owner="ben"))
    await store.update_environment(sessions, "s1", status=store.BUILT, image_id="sha256:1", size=3 * 1024**3)
    await store.update_environment(sessions, "s3", status=store.BUILT, image_id="sha256:3", size=10)
    assert await store.owner_usage(sessions, "ann") == (2, 1, 3 * 1024**3)  # s2 is queued
    assert await store.owner_usage(sessions, "nobody") == (0, 0, 0)
    rules = await store.access_rules(sessions)
    assert set(rules) == {"s1", "s3"}  # built ones only
    assert rules["s1"] == ("ann", shared)
    await store.update_environment(sessions, "s1", sharing={"everyone": True, "users": [], "groups": []})
    assert (await store.get_environment(sessions, "s1")).sharing["everyone"] is True
