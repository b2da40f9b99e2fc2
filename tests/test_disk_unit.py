"""Edge cases of tljh_repo2docker/disk.py without Docker: what plan() picks, sizes, settings,
and the build manager's start check (a queued build under min_free_disk fails before the
backend is asked). The real engine is tests/test_disk.py's."""

import asyncio
from types import SimpleNamespace

import pytest
from traitlets import TraitError

from tljh_repo2docker.app import TljhRepo2Docker
from tljh_repo2docker.builds.base import BUILT, Builder, BuildEvent
from tljh_repo2docker.builds.manager import BuildManager
from tljh_repo2docker.db import store
from tljh_repo2docker.service.disk_usage import Disk, parse_size, plan

PREFIX = "hub-a/"


def env(uid, image_id, image_name=None):
    return SimpleNamespace(uid=uid, image_id=image_id, image_name=image_name or f"{PREFIX}{uid}:HEAD")


def version(id, number, image_id, image_name=None, size=None):
    return SimpleNamespace(
        id=id, number=number, image_id=image_id, image_name=image_name or f"n:v{number}", size=size
    )


def image(size, shared=0, tags=(), labels=None, containers=0):
    return {
        "size": size,
        "shared_size": shared,
        "tags": list(tags),
        "labels": labels or {},
        "containers": containers,
        "created": 0,
    }


def usage(images, cache=()):
    return {"images": images, "layers_size": 0, "build_cache": list(cache)}


def test_plan_keeps_newest_current_and_used_versions():
    e = env("u1", "i4")
    versions = {
        "u1": [
            version(4, 4, "i4", "n:v4"),
            version(3, 3, "i3", "n:v3"),
            version(2, 2, "i2", "n:v2"),
            version(1, 1, "i1", "n:v1"),
        ]
    }
    images = {
        "i4": image(100, 40, ["n:v4", "n:HEAD"]),
        "i3": image(100, 40, ["n:v3"]),
        "i2": image(100, 40, ["n:v2"]),
        "i1": image(100, 40, ["n:v1"]),
    }
    result = plan([e], versions, usage(images), {"i1": 1}, keep=2, image_prefix=PREFIX, max_age=0)
    assert [(v.number, size, frees) for _, v, size, frees in result.versions] == [(2, 100, 60)]
    assert result.frees == 60
    # keep=1: version 3 goes too; the current one (4) is never removed, even past keep.
    result = plan([e], versions, usage(images), {}, keep=1, image_prefix=PREFIX, max_age=0)
    assert [v.number for _, v, _, _ in result.versions] == [3, 2, 1]
    old_current = env("u1", "i1")
    result = plan([old_current], versions, usage(images), {}, keep=1, image_prefix=PREFIX, max_age=0)
    assert [v.number for _, v, _, _ in result.versions] == [3, 2]


def test_plan_removes_nothing_when_image_users_are_unknown():
    e = env("u1", "i3")
    versions = {"u1": [version(3, 3, "i3"), version(2, 2, "i2"), version(1, 1, "i1")]}
    result = plan([e], versions, None, None, keep=1, image_prefix=PREFIX, max_age=0)
    assert result.versions == [] and result.dangling == [] and result.frees == 0


def test_an_image_with_another_name_is_only_untagged_and_frees_nothing():
    e = env("u1", "i3")
    versions = {"u1": [version(3, 3, "i3"), version(2, 2, "i2"), version(1, 1, "i1")]}
    images = {
        "i3": image(100, 0, ["n:v3"]),
        "i2": image(100, 0, ["n:v2", "someone/else:kept"]),
        "i1": image(100, 0, ["n:v1"]),
    }
    result = plan([e], versions, usage(images), {}, keep=1, image_prefix=PREFIX, max_age=0)
    assert [(v.number, frees) for _, v, _, frees in result.versions] == [(2, 0), (1, 100)]
    # Two versions of one image (the same build twice) free it once.
    versions = {"u1": [version(3, 3, "i3"), version(2, 2, "i1", "n:v2"), version(1, 1, "i1")]}
    images = {"i3": image(100, 0, ["n:v3"]), "i1": image(70, 0, ["n:v2", "n:v1"])}
    result = plan([e], versions, usage(images), {}, keep=1, image_prefix=PREFIX, max_age=0)
    assert result.frees == 70


def test_dangling_images_of_this_hub_only():
    uid_label = "tljh_repo2docker.uid"
    prefix_label = "tljh_repo2docker.image_prefix"
    images = {
        "ours": image(50, 10, labels={uid_label: "gone", prefix_label: PREFIX}),
        "other-hub": image(50, 0, labels={uid_label: "gone", prefix_label: "hub-b/"}),
        "unlabelled": image(50, 0),
        "tagged": image(50, 0, ["x:y"], labels={uid_label: "gone", prefix_label: PREFIX}),
        "in-a-container": image(50, 0, labels={uid_label: "gone", prefix_label: PREFIX}, containers=1),
        "building": image(50, 0, labels={uid_label: "busy", prefix_label: PREFIX}),
        "recorded": image(50, 0, labels={uid_label: "u1", prefix_label: PREFIX}),
    }
    e = env("u1", "recorded")
    result = plan(
        [e], {"u1": [version(1, 1, "recorded")]}, usage(images), {}, keep=1,
        image_prefix=PREFIX, max_age=0, active={"busy"},
    )
    assert [d["id"] for d in result.dangling] == ["ours"]
    assert result.frees == 40


def test_build_cache_older_than_max_age_and_not_in_use():
    now = 1_000_000
    cache = [
        {"id": "a", "size": 10, "in_use": False, "shared": False, "last_used": now - 100},
        {"id": "b", "size": 20, "in_use": False, "shared": True, "last_used": now - 100},
        {"id": "c", "size": 40, "in_use": True, "shared": False, "last_used": now - 100},
        {"id": "d", "size": 80, "in_use": False, "shared": False, "last_used": now - 10},
    ]
    result = plan([], {}, usage({}, cache), {}, keep=1, image_prefix=PREFIX, max_age=50, now=now)
    assert result.build_cache == {"count": 2, "size": 10}


@pytest.mark.parametrize(
    "value, expected",
    [("10G", 10 * 1024**3), ("500M", 500 * 1024**2), ("1.5k", 1536), (0, 0), ("", 0), (4096, 4096),
     ("2TiB", 2 * 1024**4), ("1P", 1024**5)],
)
def test_min_free_disk_sizes(value, expected):
    assert parse_size(value) == expected
    assert TljhRepo2Docker(min_free_disk=value).min_free_disk == expected


@pytest.mark.parametrize("value", ["lots", "-1G", True, -5, "10 X"])
def test_min_free_disk_bad_values_name_the_setting(value):
    with pytest.raises(TraitError, match="min_free_disk"):
        TljhRepo2Docker(min_free_disk=value)


def test_keep_versions_is_at_least_one():
    with pytest.raises(TraitError):
        TljhRepo2Docker(keep_versions=0)
    assert TljhRepo2Docker().keep_versions == 3
    assert TljhRepo2Docker().min_free_disk == 1024**3


class FullDiskBuilder(Builder):
    """A backend whose disk has 1000 bytes free; records whether a build was asked for."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.asked = []

    async def build(self, request):
        self.asked.append(request.uid)
        yield BuildEvent(BUILT, "built", image_name=request.image_name, image_id="sha256:x")

    async def disk_space(self):
        return {"path": "/data", "total": 10_000, "used": 9_000, "free": 1000, "note": None}

    async def cancel(self, uid):
        return None


async def test_a_queued_build_that_starts_on_a_full_disk_fails_with_the_message(sqlite_sessions):
    app = SimpleNamespace(min_free_disk=5000, log=TljhRepo2Docker().log)
    builder = FullDiskBuilder()
    app.builder = builder
    disk = Disk(app, builder=builder, log=app.log)
    manager = BuildManager(builder=builder, sessions=sqlite_sessions, start_check=disk.refusal)
    env = await store.create_environment(
        sqlite_sessions, uid="a" * 32, name="full", image_name="p/full:HEAD",
        repo="https://example.org/r", ref="HEAD", node_selector={}, build_args={},
    )
    from tljh_repo2docker.service.lifecycle import build_request

    await manager.submit(env, build_request(env))
    for _ in range(200):
        stored = await store.get_environment(sqlite_sessions, env.uid)
        if stored.status == "failed":
            break
        await asyncio.sleep(0.05)
    assert stored.status == "failed"
    assert "min_free_disk" in stored.error and "5000 bytes" in stored.error
    assert "1000 bytes" in stored.error
    assert builder.asked == []
    assert await store.list_versions(sqlite_sessions, env.uid) == []
    # With room, the same manager builds.
    app.min_free_disk = 500
    env = await store.start_rebuild(sqlite_sessions, env.uid)
    await manager.submit(env, build_request(env))
    for _ in range(200):
        stored = await store.get_environment(sqlite_sessions, env.uid)
        if stored.status == "built":
            break
        await asyncio.sleep(0.05)
    assert stored.status == "built" and builder.asked == [env.uid]
    await manager.close()


async def test_unknown_free_space_never_refuses():
    logged = []
    log = SimpleNamespace(warning=lambda *args: logged.append(args))
    app = SimpleNamespace(min_free_disk=10**18, log=log, builder=Builder())
    disk = Disk(app, builder=app.builder, log=log)
    assert await disk.refusal() is None
    assert await disk.refusal() is None
    assert len(logged) == 1 and "min_free_disk" in logged[0][0]


def test_disk_settings_through_tljh_config():
    from tljh_repo2docker import tljh_config

    config = tljh_config.service_config(
        {"keep_versions": "5", "min_free_disk": "20G", "build_cache_max_age": 3600}
    )
    app = TljhRepo2Docker(config=config)
    assert (app.keep_versions, app.min_free_disk, app.build_cache_max_age) == (5, 20 * 1024**3, 3600)
    with pytest.raises(ValueError, match="min_free_disk"):
        tljh_config.service_config({"min_free_disk": "lots"})


async def test_report_and_prune_on_a_backend_without_an_engine(sqlite_sessions):
    """The BinderHub backend (the base Builder): versions with their recorded sizes, engine
    figures null, nothing removed (which servers use an image is unknown); still a valid answer."""
    app = SimpleNamespace(
        keep_versions=1, min_free_disk=1024**3, build_cache_max_age=60, image_prefix="",
        log=TljhRepo2Docker().log, builder=Builder(), sessions=sqlite_sessions,
    )
    env = await store.create_environment(
        sqlite_sessions, uid="b" * 32, name="bh", image_name="registry/bh:c2",
        repo="https://example.org/r", ref="HEAD", node_selector={}, build_args={},
    )
    await store.update_environment(sqlite_sessions, env.uid, image_id="registry/bh:c2", status="built")
    for number, commit in ((1, "c1"), (2, "c2")):
        await store.add_version(
            sqlite_sessions, env.uid, number=number, image_name=f"registry/bh:{commit}",
            image_id=f"registry/bh:{commit}", commit=commit, size=1000 * number,
        )
    disk = Disk(app, builder=app.builder, sessions=app.sessions, log=app.log)
    report = await disk.report()
    [listed] = report["environments"]
    assert [(v["number"], v["size"], v["current"], v["servers"], v["removable"], v["present"])
            for v in listed["versions"]] == [
        (2, 2000, True, None, False, None),
        (1, 1000, False, None, False, None),
    ]
    assert listed["size"] == 3000
    assert report["disk"] == {"path": None, "total": None, "used": None, "free": None}
    assert report["build_cache"]["size"] is None and report["dangling"]["count"] is None
    assert report["reclaimable"] == 0 and report["notes"]
    answer = await disk.prune()
    assert answer["freed"] == 0 and answer["removed"]["versions"] == []
    assert len(await store.list_versions(sqlite_sessions, env.uid)) == 2
    assert await disk.refusal() is None


def test_human_sizes():
    from tljh_repo2docker.service.disk_usage import human_size

    assert [human_size(n) for n in (None, 512, 1536, 3 * 1024**3, 1024**5)] == [
        "unknown", "512 B", "1.5 KiB", "3.0 GiB", "1.0 PiB",
    ]
