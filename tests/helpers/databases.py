"""The shared database servers of the tests: PostgreSQL and MySQL/MariaDB.

They are found through ``TLJH_R2D_TEST_POSTGRES_URL`` and
``TLJH_R2D_TEST_MYSQL_URL`` (defaults: what ``./dev setup`` creates).
``_server_db(kind)`` creates a throw-away database on one of them and returns
its URL with a coroutine function that drops it; a server that does not answer
fails the test under ``CI=true`` and skips it elsewhere.
"""

import asyncio
import os
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tljh_repo2docker.db.session import async_url, redact

IN_CI = os.environ.get("CI", "").lower() == "true"

SERVER_URLS = {
    "postgresql": os.environ.get(
        "TLJH_R2D_TEST_POSTGRES_URL", "postgresql://tljh_r2d:tljh_r2d@127.0.0.1:5432/tljh_r2d_test"
    ),
    "mysql": os.environ.get(
        "TLJH_R2D_TEST_MYSQL_URL", "mysql://tljh_r2d:tljh_r2d@127.0.0.1:3306/tljh_r2d_test"
    ),
}


def need(reason):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the database tests must run)")
    pytest.skip(reason)


def _admin_engine(kind):
    try:
        url = async_url(SERVER_URLS[kind])
    except ValueError as e:  # driver not installed
        need(str(e))
    return url, create_async_engine(url, isolation_level="AUTOCOMMIT")


async def _server_db(kind):
    """Create a uniquely named database on the server; returns (url, drop coroutine fn)."""
    base, admin = _admin_engine(kind)
    name = f"{base.database}_{uuid.uuid4().hex[:12]}"
    try:
        async with asyncio.timeout(10):
            async with admin.connect() as conn:
                await conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as e:  # noqa: BLE001 - any failure means "no usable server"
        await admin.dispose()
        need(f"{kind} test server {redact(SERVER_URLS[kind])} is not usable: "
             f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    async def drop():
        try:
            async with admin.connect() as conn:
                force = " WITH (FORCE)" if kind == "postgresql" else ""
                await conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        finally:
            await admin.dispose()

    url = make_url(SERVER_URLS[kind]).set(database=name)
    return url.render_as_string(hide_password=False), drop
