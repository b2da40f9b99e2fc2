"""The database: migrations match the models, upgrades keep data and back up SQLite."""

import asyncio
import sqlite3
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from tljh_repo2docker.db import store
from tljh_repo2docker.db.models import Base
from tljh_repo2docker.db.session import (
    alembic_config,
    async_url,
    head_revision,
    make_engine,
    make_sessionmaker,
    upgrade_db,
)


async def test_migrations_match_models(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await upgrade_db(engine)
    await engine.dispose()
    sync = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with sync.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff


def test_downgrade_and_upgrade_again(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    tables = {
        row[0]
        for row in sqlite3.connect(tmp_path / "db.sqlite").execute(
            "select name from sqlite_master where type='table'"
        )
    }
    assert {"environments", "log_lines", "alembic_version"} <= tables


async def test_upgrade_keeps_data_and_backs_up(tmp_path):
    from alembic import command

    path = tmp_path / "db.sqlite"
    await asyncio.to_thread(command.upgrade, alembic_config(f"sqlite:///{path}"), "0001")
    conn = sqlite3.connect(path)
    conn.execute(
        "insert into environments (uid, name, image_name, repo, ref, provider, status, "
        "node_selector, build_args, private, created, build_number, source_lines, last_event_id) "
        "values ('u1', 'old', 'tljh-r2d/old:HEAD', 'https://example.org/r', 'HEAD', 'git', "
        "'built', '{}', '{}', 0, '2026-01-01 00:00:00', 1, 0, 3)"
    )
    conn.commit()
    conn.close()

    engine = make_engine(f"sqlite:///{path}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    env = await store.get_environment(sessions, "u1")
    assert env.name == "old" and env.status == "built"
    await engine.dispose()
    backups = list(tmp_path.glob("db.sqlite.bak-*"))
    assert len(backups) == 1
    version = sqlite3.connect(backups[0]).execute("select version_num from alembic_version").fetchone()
    assert version == ("0001",)
    version = sqlite3.connect(path).execute("select version_num from alembic_version").fetchone()
    assert version == (head_revision(),)


def test_service_starts_against_existing_database(tmp_path):
    """A second start on the same database neither fails nor loses anything."""
    path = tmp_path / "db.sqlite"
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tljh_repo2docker", "--port=0", f"--db_url=sqlite:///{path}"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            for line in proc.stdout:
                if "Serving" in line:
                    break
                assert "Error" not in line, line
        finally:
            proc.terminate()
            out = proc.communicate(timeout=20)[0]
        assert proc.returncode == 0, out
    assert not list(tmp_path.glob("*.bak-*"))


def test_async_url_conversion():
    assert str(async_url("sqlite:///x.sqlite")) == "sqlite+aiosqlite:///x.sqlite"
    assert async_url("sqlite:///x.sqlite").drivername == "sqlite+aiosqlite"


async def test_log_is_bounded_with_head_and_tail(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    await store.create_environment(
        sessions, uid="u", name="n", image_name="i:1", repo="r", ref="HEAD", build_args={},
        node_selector={},
    )
    for start in range(1, 101, 10):
        events = [(i, "log", f"line {i}") for i in range(start, start + 10)]
        await store.append_log(sessions, "u", events, source_lines=start + 9, head=5, tail=20)
    stored = await store.read_log(sessions, "u")
    ids = [e[0] for e in stored]
    assert ids[:5] == [1, 2, 3, 4, 5]
    assert ids[5:] == list(range(81, 101))
    env = await store.get_environment(sessions, "u")
    assert env.source_lines == 100 and env.last_event_id == 100
    await engine.dispose()
