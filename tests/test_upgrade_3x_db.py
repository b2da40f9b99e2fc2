"""The database of the published tljh-repo2docker 3.0.21, converted at start-up.

``tests/data/upstream-3.0.21/`` holds what 3.0.21 really left on a hub: its
SQLite file (revision ``ac1b4e7e52f3``, table ``images``), its cookie secret
(32 raw bytes) and, in ``state.json``, an image's labels and the servers'
user_options. Here its rows are converted on SQLite (also with the rows still
in the write-ahead log, as 3.x leaves them), PostgreSQL and MariaDB; the
backup holds every row; a failure changes nothing; a second start changes
nothing.
"""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from tljh_repo2docker.db import legacy, store
from tljh_repo2docker.db.session import (
    UpgradeError,
    head_revision,
    make_engine,
    make_sessionmaker,
    upgrade_db,
)
from tljh_repo2docker.secret import SecretFileError, read_secret_file

DATA = Path(__file__).parent / "data" / "upstream-3.0.21"
FIXTURE_DB = DATA / "tljh_repo2docker.sqlite"
REVISION_3X = "ac1b4e7e52f3"


def rows_3x():
    """The ``images`` rows 3.0.21 stored, as dicts."""
    con = sqlite3.connect(f"file:{FIXTURE_DB}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT uid, name, status, log, image_meta FROM images")]
    finally:
        con.close()


def schema_3x():
    """3.0.21's own CREATE TABLE statements."""
    con = sqlite3.connect(f"file:{FIXTURE_DB}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT sql FROM sqlite_master WHERE type = 'table'")]
    finally:
        con.close()


async def load_3x(url, rows):
    """Make ``url`` a 3.x database holding ``rows`` (3.x's schema and revision)."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
            )
            await conn.execute(text(f"INSERT INTO alembic_version VALUES ('{REVISION_3X}')"))
            await conn.execute(
                text(
                    "CREATE TABLE images (uid VARCHAR(36), name VARCHAR(4096) NOT NULL, "
                    "status VARCHAR(8) NOT NULL, log TEXT, image_meta TEXT NOT NULL)"
                )
            )
            for row in rows:
                await conn.execute(
                    text("INSERT INTO images VALUES (:uid, :name, :status, :log, :image_meta)"), row
                )
    finally:
        await engine.dispose()


async def converted(url):
    """Upgrade ``url`` and return ``(environments, {uid: log events})``."""
    engine = make_engine(url)
    try:
        await upgrade_db(engine)
        sessions = make_sessionmaker(engine)
        envs = await store.list_environments(sessions)
        logs = {env.uid: await store.read_log(sessions, env.uid) for env in envs}
        return envs, logs
    finally:
        await engine.dispose()


def assert_converted_like_3x(envs, logs, rows):
    """Every 3.x row is an environment with its uid, name, image, limits, owner and log."""
    assert len(envs) == len(rows)
    by_uid = {env.uid: env for env in envs}
    for row in rows:
        meta = json.loads(row["image_meta"])
        env = by_uid[row["uid"]]
        assert env.name == meta["display_name"]
        assert env.image_name == row["name"]  # kept as 3.x named it, without our prefix
        assert env.status == "built" and env.image_id is None  # found on the engine later
        assert env.repo == meta["repo"] and env.ref == meta["ref"]
        assert env.owner == meta["owner"] and env.provider == "git"
        assert env.node_selector == {} and env.build_args == {}
        assert env.created.strftime("%d/%m/%Y") == meta["creation_date"]
        lines = row["log"].splitlines()
        assert [m for _, _, m in logs[env.uid]] == lines
        assert [i for i, _, _ in logs[env.uid]] == list(range(1, len(lines) + 1))
        assert env.last_event_id == len(lines) and env.source_lines == len(lines)
    one = next(e for e in envs if e.name == "upg-one")
    two = next(e for e in envs if e.name == "upg-two")
    # 3.x stored memory in GB as text ("1") and the CPUs as text ("0.5"); "" is no limit.
    assert (one.memory, one.cpu) == ("1G", 0.5)
    assert (two.memory, two.cpu) == (None, None)


async def test_fixture_is_3x():
    rows = rows_3x()
    assert len(rows) == 2
    con = sqlite3.connect(f"file:{FIXTURE_DB}?mode=ro", uri=True)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(REVISION_3X,)]
    con.close()


async def test_sqlite_file_of_3x_is_converted_with_a_complete_backup(tmp_path):
    db = tmp_path / "tljh_repo2docker.sqlite"
    shutil.copy(FIXTURE_DB, db)
    db.chmod(0o644)
    envs, logs = await converted(f"sqlite:///{db}")
    assert_converted_like_3x(envs, logs, rows_3x())

    # 3.x's table is kept as it was, next to ours
    con = sqlite3.connect(db)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
    assert [dict(zip(("uid", "name", "status", "log", "image_meta"), r))
            for r in con.execute("SELECT uid, name, status, log, image_meta FROM images")] == rows_3x()
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert legacy.UPGRADE_VERSION_TABLE not in tables
    con.close()

    # the backup is a 3.x database with every row: copied back, 3.x finds its data
    backups = sorted(tmp_path.glob("tljh_repo2docker.sqlite.bak-*"))
    assert len(backups) == 1
    bak = sqlite3.connect(backups[0])
    assert bak.execute("SELECT version_num FROM alembic_version").fetchall() == [(REVISION_3X,)]
    assert bak.execute("SELECT count(*) FROM images").fetchone() == (2,)
    assert [r[0] for r in bak.execute("SELECT sql FROM sqlite_master WHERE type = 'table'")] == schema_3x()
    assert bak.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one self-contained file
    bak.close()


async def test_second_start_changes_nothing(tmp_path):
    db = tmp_path / "tljh_repo2docker.sqlite"
    shutil.copy(FIXTURE_DB, db)
    db.chmod(0o644)
    first, first_logs = await converted(f"sqlite:///{db}")
    second, second_logs = await converted(f"sqlite:///{db}")
    assert [(e.uid, e.name, e.status) for e in first] == [(e.uid, e.name, e.status) for e in second]
    assert first_logs == second_logs
    assert len(list(tmp_path.glob("*.bak-*"))) == 1  # nothing to back up the second time


def make_wal_3x(directory):
    """A 3.x database as 3.x leaves it: WAL mode, its rows still in ``-wal``.

    The writer is still open (as 3.x's process is when the package is
    replaced): the files are copied from under it.
    """
    live = directory / "live"
    live.mkdir()
    writer = sqlite3.connect(live / "tljh_repo2docker.sqlite", isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    for statement in schema_3x():
        writer.execute(statement)
    writer.execute(f"INSERT INTO alembic_version VALUES ('{REVISION_3X}')")
    for row in rows_3x():
        writer.execute("INSERT INTO images VALUES (:uid, :name, :status, :log, :image_meta)", row)
    state = directory / "state"
    state.mkdir()
    for name in ("tljh_repo2docker.sqlite", "tljh_repo2docker.sqlite-wal"):
        shutil.copy(live / name, state / name)
    writer.close()
    return state / "tljh_repo2docker.sqlite"


async def test_rows_still_in_the_wal_file_are_converted_and_backed_up(tmp_path):
    db = make_wal_3x(tmp_path)
    assert (db.parent / "tljh_repo2docker.sqlite-wal").stat().st_size > 0
    # What a plain copy of the main file would hold: not the rows.
    plain = tmp_path / "plain-copy.sqlite"
    shutil.copy(db, plain)
    con = sqlite3.connect(plain)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "images" not in tables or con.execute("SELECT count(*) FROM images").fetchone() == (0,)
    con.close()

    envs, logs = await converted(f"sqlite:///{db}")
    assert_converted_like_3x(envs, logs, rows_3x())
    (backup,) = db.parent.glob("tljh_repo2docker.sqlite.bak-*")
    assert not Path(f"{backup}-wal").exists()
    bak = sqlite3.connect(backup)
    assert bak.execute("SELECT count(*) FROM images").fetchone() == (2,)
    assert bak.execute("SELECT version_num FROM alembic_version").fetchall() == [(REVISION_3X,)]
    bak.close()


async def test_a_failed_conversion_leaves_3x_data_as_it_was_and_the_next_start_converts(
    tmp_path, monkeypatch
):
    db = tmp_path / "tljh_repo2docker.sqlite"
    shutil.copy(FIXTURE_DB, db)
    db.chmod(0o644)
    real = legacy.convert_rows

    def half_then_fail(connection, rows, now=None):
        real(connection, rows[:1], now)
        raise legacy.LegacyDatabaseError("the second row is unreadable")

    monkeypatch.setattr(legacy, "convert_rows", half_then_fail)
    engine = make_engine(f"sqlite:///{db}")
    with pytest.raises(UpgradeError) as failure:
        await upgrade_db(engine)
    await engine.dispose()
    assert "3.x" in str(failure.value) and "unreadable" in str(failure.value)
    con = sqlite3.connect(db)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(REVISION_3X,)]
    assert con.execute("SELECT count(*) FROM images").fetchone() == (2,)
    con.close()

    monkeypatch.setattr(legacy, "convert_rows", real)
    envs, logs = await converted(f"sqlite:///{db}")
    assert_converted_like_3x(envs, logs, rows_3x())


async def test_interrupted_conversion_on_a_server_without_transactional_ddl_is_redone(tmp_path):
    """MySQL commits each CREATE TABLE at once: a conversion stopped half-way leaves
    our tables beside 3.x's revision. The next start drops them and converts again."""
    db = tmp_path / "tljh_repo2docker.sqlite"
    shutil.copy(FIXTURE_DB, db)
    db.chmod(0o644)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE environments (id INTEGER PRIMARY KEY, uid VARCHAR(64))")
    con.execute("INSERT INTO environments (uid) VALUES ('half-made')")
    con.execute(f"CREATE TABLE {legacy.UPGRADE_VERSION_TABLE} (version_num VARCHAR(32))")
    con.commit()
    con.close()
    envs, logs = await converted(f"sqlite:///{db}")
    assert_converted_like_3x(envs, logs, rows_3x())


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
async def test_3x_database_on_a_server_is_converted(kind):
    from tests.helpers.databases import _server_db

    url, drop = await _server_db(kind)
    try:
        rows = rows_3x()
        # 3.x's MySQL/PostgreSQL rows look the same; one more, in the middle of
        # a build when 3.x stopped, with build args as 3.x kept them.
        meta = {"display_name": "upg-three", "repo": "https://example.org/three", "ref": "v1",
                "creation_date": "02/11/2026", "owner": "bob", "cpu_limit": "2",
                "mem_limit": "0.5", "node_selector": {"gpu": "yes"},
                "buildargs": "PY=3.11\nMODE=fast", "provider": "git"}
        building = {"uid": "3" * 32, "name": "upg-three:v1", "status": "building",
                    "log": "Picked Git content provider.\n", "image_meta": json.dumps(meta)}
        await load_3x(url, rows + [building])
        envs, logs = await converted(url)
        assert_converted_like_3x([e for e in envs if e.uid != building["uid"]],
                                 logs, rows)
        three = next(e for e in envs if e.uid == building["uid"])
        assert three.status == "failed" and "rebuild" in three.error
        assert (three.memory, three.cpu) == ("0.5G", 2.0)
        assert three.node_selector == {"gpu": "yes"}
        assert three.build_args == {"PY": "3.11", "MODE": "fast"}
        # 3.x's table stays as it was
        engine = make_engine(url)
        async with engine.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM images"))
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        await engine.dispose()
        assert count == 3 and version == head_revision()
        # idempotent
        again, _ = await converted(url)
        assert sorted(e.uid for e in again) == sorted(e.uid for e in envs)
    finally:
        await drop()


async def test_database_of_a_newer_version_is_refused_with_what_to_do(tmp_path):
    db = tmp_path / "x.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    con.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    con.commit()
    con.close()
    engine = make_engine(f"sqlite:///{db}")
    with pytest.raises(UpgradeError) as e:
        await upgrade_db(engine)
    await engine.dispose()
    assert "newer" in str(e.value) and "9999_from_the_future" in str(e.value)


def test_cookie_secret_of_3x_is_read_as_it_is(tmp_path):
    raw = (DATA / "tljh_repo2docker_cookie_secret").read_bytes()
    assert len(raw) == 32
    assert read_secret_file(DATA / "tljh_repo2docker_cookie_secret") == raw
    ours = tmp_path / "hex"
    ours.write_text(raw.hex() + "\n")
    assert read_secret_file(ours) == raw
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(SecretFileError, match="fewer than"):
        read_secret_file(short)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(SecretFileError, match="cannot read"):
        read_secret_file(folder)
    with pytest.raises(FileNotFoundError):
        read_secret_file(tmp_path / "missing")
