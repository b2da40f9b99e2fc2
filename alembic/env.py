"""Alembic environment.

The service passes its own connection in ``config.attributes["connection"]``
(see tljh_repo2docker/db/session.py); the ``alembic`` command line opens one
from ``sqlalchemy.url``.
"""

import asyncio

from alembic import context

from tljh_repo2docker.db.models import Base
from tljh_repo2docker.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def run_with_connection(connection):
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # Converting a 3.x database records the revision elsewhere until the
        # end (see tljh_repo2docker/db/legacy.py).
        version_table=config.attributes.get("version_table", "alembic_version"),
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url():
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    async with engine.begin() as conn:
        await conn.run_sync(run_with_connection)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run_with_connection(config.attributes["connection"])
else:
    asyncio.run(run_from_url())
