"""Versions without a hub: the migration that made them, and the edge cases of
history and rollback (which version is current, server counts when the engine
or the hub cannot tell, rollback on a backend whose images are named per
commit). The database is real (SQLite, made by the migrations); builder and
hub are small fakes, only for the cases a real one cannot be made to show.
"""

import asyncio
import sqlite3

import pytest

from tljh_repo2docker.service import version_history as versions
from tljh_repo2docker.builds.base import Builder, BuildError
from tljh_repo2docker.db import store
from tljh_repo2docker.db.session import alembic_config, make_engine, make_sessionmaker, upgrade_db
from tljh_repo2docker.hub_client import HubError


async def test_upgrade_from_0004_gives_a_built_environment_one_version(tmp_path):
    from alembic import command

    path = tmp_path / "db.sqlite"
    await asyncio.to_thread(command.upgrade, alembic_config(f"sqlite:///{path}"), "0004")
    conn = sqlite3.connect(path)
    insert = (
        "insert into environments (uid, name, image_name, repo, ref, provider, status, "
        "node_selector, build_args, private, created, finished, build_number, source_lines, "
        "last_event_id, image_id, \"commit\", size, owner) values "
        "(?, ?, ?, 'https://example.org/r', 'main', 'git', ?, '{}', '{}', 0, "
        "'2026-01-01 00:00:00', '2026-01-02 00:00:00', ?, 0, 3, ?, ?, ?, 'ann')"
    )
    conn.execute(insert, ("u1", "built", "p/built:main", "built", 4, "sha256:aa", "c0ffee", 123))
    conn.execute(insert, ("u2", "failed", "p/failed:main", "failed", 1, None, None, None))
    conn.commit()
    conn.close()

    engine = make_engine(f"sqlite:///{path}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    try:
        (version,) = await store.list_versions(sessions, "u1")
        assert (version.number, version.image_name, version.image_id) == (4, "p/built:main", "sha256:aa")
        assert (version.commit, version.size, version.built_by, version.reason) == (
            "c0ffee", 123, "ann", "upgrade"
        )
        assert store.version_dict(version)["built_at"] == "2026-01-02T00:00:00Z"
        assert await store.list_versions(sessions, "u2") == []
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "is required"),
        ({"version": "3"}, "must be an integer"),
        ({"version": True}, "must be an integer"),
        ({"version": 2.0}, "must be an integer"),
        ({"version": [1]}, "must be an integer"),
        ({"version": 0}, "no version 0"),
        ({"version": -1}, "no version -1"),
        ({"version": 2**80}, "no version"),
    ],
)
def test_bad_version_ids_are_refused(body, message):
    with pytest.raises(ValueError, match=message):
        versions.parse_version_id(body)


class NoEngine(Builder):
    """A backend that cannot see containers (as BinderHub on Kubernetes)."""

    def __init__(self, users=None, fail=False):
        super().__init__()
        self.users, self.fail = users, fail

    async def image_users(self):
        if self.fail:
            raise OSError("engine away")
        return self.users


class Hub:
    def __init__(self, servers=(), error=None):
        self.servers, self.error = list(servers), error

    async def active_servers(self):
        if self.error:
            raise self.error
        return self.servers


async def built(sessions, uid, image_name, versions_made):
    """An environment built ``len(versions_made)`` times; the last is current."""
    await store.create_environment(
        sessions, uid=uid, name=uid, image_name=image_name, repo="https://example.org/r",
        ref="main", node_selector={}, build_args={}, owner="ann",
    )
    for number, (name, image_id) in enumerate(versions_made, 1):
        await store.add_version(
            sessions, uid, number=number, image_name=name, image_id=image_id,
            commit=f"c{number}", built_at=store.now(), size=number * 100, built_by="ann",
        )
    await store.update_environment(
        sessions, uid, status=store.BUILT, image_name=versions_made[-1][0],
        image_id=versions_made[-1][1], build_number=len(versions_made),
    )
    return await store.get_environment(sessions, uid)


async def test_only_the_newest_version_with_the_image_is_current(sqlite_sessions):
    # A rebuild that changed nothing can give the same image id twice.
    env = await built(sqlite_sessions, "same", "p/same:main", [("a", "sha256:1"), ("b", "sha256:1")])
    history = await versions.history(
        sqlite_sessions, NoEngine(users={"sha256:1": 2}), Hub(), env, manages=True
    )
    assert [(v["number"], v["current"], v["servers"]) for v in history] == [
        (2, True, 2), (1, False, 2)
    ]
    assert history[0]["built_by"] == "ann"
    history = await versions.history(
        sqlite_sessions, NoEngine(users={}), Hub(), env, manages=False
    )
    assert {v["built_by"] for v in history} == {None}


async def test_servers_per_version_from_the_hub_when_the_engine_cannot_tell(sqlite_sessions):
    env = await built(
        sqlite_sessions, "bh", "bh/r:c2", [("bh/r:c1", "c1"), ("bh/r:c2", "c2")]
    )
    servers = [
        ("ann", "one", {"user_options": {"image": "bh/r:c1", "environment": "bh"}}),
        ("bob", "two", {"user_options": {"image": "bh/r:c1"}}),
        ("cy", "three", {"user_options": {"image": "bh/r:c2"}}),
        ("dee", "", {"user_options": {}}),
    ]
    history = await versions.history(
        sqlite_sessions, NoEngine(users=None), Hub(servers), env, manages=True
    )
    assert [(v["image_name"], v["servers"]) for v in history] == [("bh/r:c2", 1), ("bh/r:c1", 2)]
    # Neither the engine nor the hub can tell: unknown, not zero.
    for builder, hub in (
        (NoEngine(users=None), Hub(error=HubError(403, "no list:users"))),
        (NoEngine(fail=True), Hub(servers)),
    ):
        history = await versions.history(sqlite_sessions, builder, hub, env, manages=True)
        assert [v["servers"] for v in history] == [None, None]


async def test_rollback_on_a_backend_naming_images_per_commit(sqlite_sessions):
    """BinderHub: the version's own name becomes the environment's (Builder's default)."""
    env = await built(
        sqlite_sessions, "bh2", "bh/r:c2", [("bh/r:c1", "c1"), ("bh/r:c2", "c2")]
    )
    v2, v1 = await store.list_versions(sqlite_sessions, "bh2")
    version = await versions.rollback(sqlite_sessions, NoEngine(), env, v1.id)
    assert version.id == v1.id
    env = await store.get_environment(sqlite_sessions, "bh2")
    assert (env.image_name, env.image_id, env.commit, env.size) == ("bh/r:c1", "c1", "c1", 100)
    history = await versions.history(sqlite_sessions, NoEngine(users={}), Hub(), env, manages=True)
    assert [v["current"] for v in history] == [False, True]
    # another environment's version is not this one's
    other = await built(sqlite_sessions, "bh3", "bh/o:c1", [("bh/o:c1", "o1")])
    with pytest.raises(versions.RollbackError) as e:
        await versions.rollback(sqlite_sessions, NoEngine(), other, v2.id)
    assert e.value.status == 404 and e.value.message.startswith("version: ")


async def test_a_backend_that_cannot_restore_leaves_the_environment_as_it_was(sqlite_sessions):
    class Refusing(NoEngine):
        async def make_current(self, version_image, image_id, image_name):
            raise BuildError("Cannot restore image x: engine said no")

    env = await built(sqlite_sessions, "rf", "p/rf:main", [("p/rf:main--v1", "i1"), ("p/rf:main--v2", "i2")])
    _, v1 = await store.list_versions(sqlite_sessions, "rf")
    with pytest.raises(versions.RollbackError) as e:
        await versions.rollback(sqlite_sessions, Refusing(), env, v1.id)
    assert e.value.status == 409 and "engine said no" in e.value.message
    assert (await store.get_environment(sqlite_sessions, "rf")).image_id == "i2"


async def test_a_build_queued_during_the_rollback_wins(sqlite_sessions):
    """The rollback's write is refused once a build is queued; the name is put back."""
    calls = []

    class Racing(NoEngine):
        async def make_current(self, version_image, image_id, image_name):
            calls.append(image_id)
            if len(calls) == 1:  # a rebuild is asked for while the tag moves
                await store.start_rebuild(sqlite_sessions, "race", requested_by="ann")
            return image_name

    env = await built(sqlite_sessions, "race", "p/race:main", [("p/race:main--v1", "i1"), ("p/race:main--v2", "i2")])
    _, v1 = await store.list_versions(sqlite_sessions, "race")
    with pytest.raises(versions.RollbackError) as e:
        await versions.rollback(sqlite_sessions, Racing(), env, v1.id)
    assert e.value.status == 409 and "build" in e.value.message
    assert calls == ["i1", "i2"]  # moved, then put back
    env = await store.get_environment(sqlite_sessions, "race")
    assert (env.status, env.image_id) == (store.QUEUED, "i2")
