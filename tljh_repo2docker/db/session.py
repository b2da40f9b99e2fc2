"""Engine and session set-up, and running the migrations at start-up."""

import importlib.util
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ..paths import ALEMBIC

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


def _current_revision(connection):
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection, cfg):
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade_db(engine):
    """Bring the database to the newest revision; back up a SQLite file first."""
    cfg = alembic_config()
    async with engine.connect() as conn:
        current = await conn.run_sync(_current_revision)
    head = head_revision()
    if current == head:
        return
    url = engine.url
    if url.get_backend_name() == "sqlite" and current is not None and url.database:
        path = Path(url.database)
        if path.exists():
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            backup = path.with_name(f"{path.name}.bak-{stamp}")
            shutil.copy2(path, backup)
            log.info("Backed up %s to %s before upgrading the database", path, backup)
    log.info("Upgrading the database from %s to %s", current or "empty", head)
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, cfg)
