"""Engine and session set-up, and running the migrations at start-up."""

import asyncio
import importlib.util
import logging
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ..paths import ALEMBIC
from . import legacy

log = logging.getLogger(__name__)

# Async driver for each database scheme, and the extra that installs it.
ASYNC_DRIVERS = {
    "sqlite": ("aiosqlite", "aiosqlite", None),
    "postgresql": ("asyncpg", "asyncpg", "postgres"),
    "postgres": ("asyncpg", "asyncpg", "postgres"),
    "mysql": ("aiomysql", "aiomysql", "mysql"),
    "mariadb": ("aiomysql", "aiomysql", "mysql"),
}


# Seconds to wait for a database server to accept a connection.
CONNECT_TIMEOUT = 10


class DatabaseURLError(ValueError):
    pass


def async_url(db_url):
    """Turn ``sqlite:///x.sqlite``, ``postgresql://…`` or ``mysql://…`` into an async URL.

    Raises DatabaseURLError with a message for the operator when the scheme is
    unknown or its driver is not installed.
    """
    try:
        url = make_url(db_url)
    except ArgumentError:
        raise DatabaseURLError(f"db_url: {redact(db_url)!r} is not a database URL") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ASYNC_DRIVERS:
        known = "sqlite, postgresql, mysql"
        raise DatabaseURLError(f"db_url: unknown database scheme {backend!r} (use {known})")
    default_driver, module, extra = ASYNC_DRIVERS[backend]
    driver = driver or default_driver
    if driver in {"pysqlite", "psycopg2", "pymysql", "mysqldb"}:
        driver = default_driver
    if driver == default_driver and importlib.util.find_spec(module) is None:
        hint = f" (pip install 'tljh-repo2docker[{extra}]')" if extra else ""
        raise DatabaseURLError(f"db_url: the {backend} driver {module} is not installed{hint}")
    backend = "postgresql" if backend == "postgres" else backend
    backend = "mysql" if backend == "mariadb" else backend
    return url.set(drivername=f"{backend}+{driver}")


def redact(db_url):
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def make_engine(db_url):
    url = async_url(db_url)
    kwargs = {}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        # Fail in seconds, not minutes, when the server does not answer.
        timeout_arg = {"asyncpg": "timeout", "aiomysql": "connect_timeout"}.get(url.get_driver_name())
        if timeout_arg:
            kwargs["connect_args"] = {timeout_arg: CONNECT_TIMEOUT}
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            # WAL lets readers go on while a build writes its log.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def make_sessionmaker(engine):
    # expire_on_commit=False: rows are turned into API models after the commit,
    # and an expired attribute would need another (implicit, sync) round trip,
    # which async sessions cannot do.
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url=None):
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", str(url).replace("%", "%%"))
    return cfg


def head_revision():
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions():
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


class UpgradeError(Exception):
    """The database cannot be brought up to date; the message says what to do."""


def _current_revision(connection):
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection, cfg, version_table=None):
    cfg.attributes["connection"] = connection
    if version_table:
        cfg.attributes["version_table"] = version_table
    command.upgrade(cfg, "head")


def _inspect(connection):
    """``(current revision, whether it is a 3.x database)``."""
    current = _current_revision(connection)
    return current, legacy.is_3x(connection, current)


async def upgrade_db(engine):
    """Bring the database to the newest revision, backing up a SQLite file first.

    A database of the published 3.x is converted (see :mod:`.legacy`).
    Raises :class:`UpgradeError` for a database this version cannot use.
    """
    async with engine.connect() as conn:
        current, from_3x = await conn.run_sync(_inspect)
    head = head_revision()
    if current == head and not from_3x:
        return
    if current is not None and not from_3x and current not in known_revisions():
        raise UpgradeError(
            f"the database is at revision {current!r}, which this version "
            f"({head}) does not know: it was made by a newer tljh-repo2docker. "
            "Install that version again, or restore a backup of the database"
        )
    if current is not None or from_3x:
        await backup(engine)
    if from_3x:
        await _convert_3x(engine, current)
        return
    log.info("Upgrading the database from %s to %s", current or "empty", head)
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, alembic_config())


async def _convert_3x(engine, current):
    head = head_revision()
    log.info(
        "Converting the database of tljh-repo2docker 3.x (revision %s) to this version (%s)",
        current, head,
    )

    def convert(connection):
        rows = legacy.read_rows(connection)
        legacy.drop_partial_conversion(connection)
        _upgrade(connection, alembic_config(), version_table=legacy.UPGRADE_VERSION_TABLE)
        legacy.convert_rows(connection, rows)
        # Last: from here on the database is ours.
        if "alembic_version" not in set(inspect(connection).get_table_names()):
            connection.execute(
                text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
            )
        connection.execute(text("DELETE FROM alembic_version"))
        connection.execute(
            text("INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": head}
        )
        connection.execute(text(f"DROP TABLE {legacy.UPGRADE_VERSION_TABLE}"))
        return len(rows)

    try:
        async with engine.begin() as conn:
            count = await conn.run_sync(convert)
    except legacy.LegacyDatabaseError as e:
        raise UpgradeError(
            f"cannot convert the tljh-repo2docker 3.x database: {e}. Nothing was changed in "
            "3.x's table; fix that row or move the database aside"
        ) from None
    log.info("Converted %d environments of tljh-repo2docker 3.x; its table 'images' is kept", count)


async def backup(engine):
    """Keep a copy of the database as it is now, before it is changed.

    SQLite: a complete copy ``<file>.bak-<UTC time>`` made with SQLite's
    online backup API, which reads through the write-ahead log (``-wal``),
    where rows may still wait that a copy of the main file alone would miss.
    Other databases are left to their own backups: the upgrade from 3.x
    never changes or drops 3.x's table, and other upgrades are one
    transaction where the server allows it.
    """
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        log.info("Upgrading %s: back it up with the database's own tools", url.get_backend_name())
        return None
    path = Path(url.database)
    if not path.exists():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.bak-{stamp}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.bak-{stamp}-{number}")

    def copy():
        # Not read-only: a reader of a WAL database must be able to make its
        # shared-memory index when the writer left none.
        source = sqlite3.connect(path, timeout=30)
        try:
            dest = sqlite3.connect(target)
            try:
                source.backup(dest)
                # A self-contained file: no -wal needed beside it.
                dest.execute("PRAGMA journal_mode=DELETE")
            finally:
                dest.close()
        finally:
            source.close()

    await asyncio.to_thread(copy)
    log.info("Backed up %s to %s before upgrading the database", path, target)
    return target
