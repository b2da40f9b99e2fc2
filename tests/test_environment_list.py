"""The kept answer of GET api/environments is always what a fresh read gives.

After every kind of write (add, change, rebuild, delete), with queue moves,
with more writes than the store remembers, the pieces kept and updated per
environment join into exactly the answer a list made from scratch gives.
"""

import json
import random

from tljh_repo2docker.db import store
from tljh_repo2docker.service.environment_list import EnvironmentList


async def add(sessions, number):
    env = await store.create_environment(
        sessions, uid=f"uid-{number}", name=f"env-{number}", image_name=f"p/env-{number}:HEAD",
        repo="https://example.org/r", ref="HEAD", node_selector={}, build_args={},
    )
    return env.uid


async def fresh(sessions, positions, admin):
    return await EnvironmentList(sessions).body(positions, admin)


async def assert_same(listing, sessions, positions):
    for admin in (True, False):
        kept = await listing.body(positions, admin)
        assert kept == await fresh(sessions, positions, admin)
        json.loads(kept)


async def test_kept_list_follows_every_write(sqlite_sessions):
    sessions = sqlite_sessions
    uids = [await add(sessions, n) for n in range(40)]
    listing = EnvironmentList(sessions)
    await assert_same(listing, sessions, {})
    rng = random.Random(7)
    number = 40
    for step in range(60):
        action = rng.choice(["add", "build", "delete", "rebuild", "queue", "finish"])
        positions = {}
        if action == "add":
            uids.append(await add(sessions, number))
            number += 1
        elif action == "build" and uids:
            uid = rng.choice(uids)
            await store.update_environment(
                sessions, uid, status=store.BUILT, image_id=f"sha256:{step}", size=step
            )
        elif action == "delete" and uids:
            uid = uids.pop(rng.randrange(len(uids)))
            await store.delete_environment(sessions, uid)
        elif action == "finish" and uids:
            # the manager stores a build's result with its last log lines
            uid = rng.choice(uids)
            env = await store.get_environment(sessions, uid)
            await store.append_log(
                sessions, uid, [(env.last_event_id + 1, "built", "done")],
                fields={"status": store.BUILT, "image_id": f"sha256:f{step}"},
            )
        elif action == "rebuild" and uids:
            await store.start_rebuild(sessions, rng.choice(uids))
        elif uids:
            positions = {uid: n for n, uid in enumerate(rng.sample(uids, min(3, len(uids))), 1)}
        await assert_same(listing, sessions, positions)
    # users see only built ones
    users = json.loads(await listing.body({}, admin=False))["environments"]
    built = [e for e in await store.list_environments(sessions) if e.image_id is not None]
    assert [e["uid"] for e in users] == [e.uid for e in built]


async def test_more_writes_than_remembered_reads_everything_again(sqlite_sessions, monkeypatch):
    sessions = sqlite_sessions
    for n in range(5):
        await add(sessions, n)
    listing = EnvironmentList(sessions)
    await listing.body({}, True)
    changes = store._changes[sessions]
    monkeypatch.setattr(changes, "log", type(changes.log)(changes.log, maxlen=3))
    for n in range(5, 10):
        await add(sessions, n)
    assert store.changed_since(sessions, listing.version) is None
    await assert_same(listing, sessions, {})
    assert len(json.loads(await listing.body({}, True))["environments"]) == 10


async def test_a_list_nothing_changed_is_not_read_again(sqlite_sessions, monkeypatch):
    sessions = sqlite_sessions
    await add(sessions, 1)
    listing = EnvironmentList(sessions)
    first = await listing.body({}, True)

    async def no_reads(*args, **kwargs):
        raise AssertionError("read again")

    monkeypatch.setattr(store, "list_environments", no_reads)
    monkeypatch.setattr(store, "environments_by_uid", no_reads)
    assert await listing.body({}, True) is first


async def test_gzip_answer_is_the_plain_one_compressed_and_etags_follow_writes(sqlite_sessions):
    import asyncio
    import gzip

    sessions = sqlite_sessions
    for n in range(5):
        await add(sessions, n)
    listing = EnvironmentList(sessions)
    # Not compressed yet: None (the caller sends the plain answer), then ready.
    assert await listing.gzip_body({}, True) is None
    for _ in range(100):
        compressed = await listing.gzip_body({}, True)
        if compressed is not None:
            break
        await asyncio.sleep(0.01)
    assert gzip.decompress(compressed) == await listing.body({}, True)
    await listing.body({}, False)
    plain_tag, gzip_tag = listing.etag(True), listing.etag(True, gzipped=True)
    assert plain_tag != gzip_tag and plain_tag != listing.etag(False)
    await listing.body({}, True)
    assert listing.etag(True) == plain_tag  # nothing changed
    await add(sessions, 99)
    await listing.body({}, True)
    assert listing.etag(True) != plain_tag
    # A new process counts versions from 0 again: its tags differ.
    again = EnvironmentList(sessions)
    await again.body({}, True)
    assert again.etag(True) != listing.etag(True)
    # The compressed answer of an older version is never handed out.
    assert await listing.gzip_body({}, True) is None


def test_accept_encoding():
    from tljh_repo2docker.handlers.environments import _accepts_gzip

    assert _accepts_gzip("gzip, deflate, br")
    assert _accepts_gzip("deflate, gzip;q=0.5") and _accepts_gzip("*")
    assert not _accepts_gzip("") and not _accepts_gzip("identity") and not _accepts_gzip("br")
    assert not _accepts_gzip("gzip;q=0")


async def test_gzip_and_etags_are_per_user_and_kept_within_the_bounds(sqlite_sessions):
    import asyncio
    import gzip

    from tljh_repo2docker.access import Viewer

    sessions = sqlite_sessions
    for n, (owner, sharing) in enumerate(
        [("ann", {"everyone": False, "users": [], "groups": []}), ("bob", None), ("ann", None)]
    ):
        await store.create_environment(
            sessions, uid=f"u{n}", name=f"u{n}", image_name=f"p/u{n}:1", repo="r", ref="HEAD",
            owner=owner, sharing=sharing,
        )
        await store.update_environment(sessions, f"u{n}", status=store.BUILT, image_id="sha256:x")
    listing = EnvironmentList(sessions)
    ann, bob = Viewer("ann"), Viewer("bob")

    async def compressed(viewer):
        for _ in range(200):
            data = await listing.gzip_body({}, viewer)
            if data is not None:
                return data
            await asyncio.sleep(0.01)
        raise AssertionError("never compressed")

    for viewer in (ann, bob, True):
        assert gzip.decompress(await compressed(viewer)) == await listing.body({}, viewer)
    await listing.body({}, False)
    assert len({listing.etag(v) for v in (ann, bob, True, False)}) == 4
    assert listing.etag(ann, gzipped=True) != listing.etag(ann)
    # bob does not see ann's private u0, in either encoding
    assert b'"u0"' not in gzip.decompress(await compressed(bob))
    assert b'"u0"' in gzip.decompress(await compressed(ann))

    def accounted():
        return sum(len(b) for _, b in listing.bodies.values()) + sum(
            len(b) for _, b in listing.gzipped.values()
        )

    assert listing.kept_bytes == accounted()
    # Bounded: the answers (plain and compressed) of who asked longest ago go first.
    listing.KEPT_BODIES = 2
    await listing.body({}, Viewer("carol"))
    assert list(listing.bodies) == [ann, Viewer("carol")] and bob not in listing.gzipped
    assert set(listing.gzipped) <= set(listing.bodies)
    assert listing.kept_bytes == accounted()


async def test_ping_fresh_for_asks_the_database_at_most_that_often(sqlite_sessions, monkeypatch):
    import time

    asked = []

    def counting():
        asked.append(1)
        return sqlite_sessions()

    await store.ping(counting, fresh_for=60)
    await store.ping(counting, fresh_for=60)
    assert len(asked) == 1  # answered a moment ago: not asked again
    await store.ping(counting)
    assert len(asked) == 2  # a health check always asks
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 61)
    await store.ping(counting, fresh_for=60)
    assert len(asked) == 3  # the last answer is too old


async def test_ping_of_a_lost_database_raises_once_the_answer_is_old(tmp_path):
    import pytest

    from tljh_repo2docker.db.errors import database_unavailable
    from tljh_repo2docker.db.session import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}"))
    with pytest.raises(Exception) as raised:
        await store.ping(sessions, fresh_for=60)  # never answered: asked, and fails
    assert database_unavailable(raised.value)
