"""The access rule, sharing input, builders' limits, the fair queue and the spawner's filter, without a hub.

The same rule (tljh_repo2docker/access.py) serves the service and the
spawners; tests/test_sharing.py checks it end to end through a real hub.
"""

from types import SimpleNamespace

import pytest

from tests.helpers.fakes import FakeDocker, env_labels, spawner_maker
from tljh_repo2docker import TLJH_R2D_ADMIN_SCOPE
from tljh_repo2docker.access import EVERYONE, PRIVATE, Access, SharingError, Viewer, parse_sharing
from tljh_repo2docker.db import store
from tljh_repo2docker.handlers.base import FieldError
from tljh_repo2docker.spawners.docker import Repo2DockerSpawner
from tljh_repo2docker.spawners.mixin import EnvironmentRefused

SHARED = {"everyone": False, "users": ["friend"], "groups": ["team"]}


@pytest.mark.parametrize(
    "viewer, uses, manages",
    [
        (Viewer("owner"), True, True),
        (Viewer("friend"), True, False),
        (Viewer("member", frozenset({"other", "team"})), True, False),
        (Viewer("stranger", frozenset({"other"})), False, False),
        (Viewer("root", admin=True), True, True),
    ],
)
def test_access_rule(viewer, uses, manages):
    access = Access("owner", SHARED)
    assert access.allows(viewer) is uses
    assert access.manages(viewer) is manages
    assert access.shows(viewer, built=True) is uses
    # an environment not built yet exists only for its owner and admins
    assert access.shows(viewer, built=False) is manages


def test_everyone_and_legacy_rows():
    assert Access("owner", EVERYONE).allows(Viewer("anyone"))
    # rows from before sharing existed (NULL): everyone, as in 3.x
    assert Access(None, None).allows(Viewer("anyone"))
    assert not Access(None, None).manages(Viewer("anyone"))
    assert not Access("owner", PRIVATE).allows(Viewer("anyone"))


def test_parse_sharing_cleans_and_keeps_what_is_left_out():
    current = {"everyone": False, "users": ["a"], "groups": ["g"]}
    assert parse_sharing({"users": [" b ", "b", "a"]}, current) == {
        "everyone": False, "users": ["a", "b"], "groups": ["g"],
    }
    assert parse_sharing({"everyone": True}, current)["groups"] == ["g"]
    with pytest.raises(SharingError) as e:
        parse_sharing({"users": ["ok", "bad\nname"]})
    assert e.value.field == "sharing.users"
    with pytest.raises(SharingError) as e:
        parse_sharing({"groups": ["g"] * 1001})
    assert e.value.field == "sharing.groups"


def _app(**config):
    from tljh_repo2docker.app import TljhRepo2Docker
    from tljh_repo2docker.service.quotas import Quotas

    app = TljhRepo2Docker(machine_profiles=config.pop("machine_profiles", []))
    return Quotas(parent=app, **config)


def test_builder_limits_without_profiles():
    quotas = _app(max_memory="2G", max_cpu=1)
    fields = {"memory": None, "cpu": None, "machine_profile": None}
    assert quotas.check_request(fields, {}) == {"memory": "2G", "cpu": 1, "machine_profile": None}
    with pytest.raises(FieldError) as e:
        quotas.check_request({**fields, "memory": "3G"}, {"memory": "3G"})
    assert e.value.field == "memory" and e.value.status_code == 403
    assert "Quotas.max_memory" in e.value.log_message
    with pytest.raises(FieldError) as e:
        quotas.check_request({**fields, "cpu": 1.5}, {"cpu": 1.5})
    assert e.value.field == "cpu"


def test_builders_choose_a_profile_when_there_are_some():
    quotas = _app(machine_profiles=[{"label": "Small", "cpu": 8, "memory": 64}])
    with pytest.raises(FieldError) as e:
        quotas.check_request({"memory": "1G", "cpu": None, "machine_profile": None}, {"memory": "1G"})
    assert e.value.field == "machine_profile" and "Small" in e.value.log_message
    # none chosen: the first profile
    chosen = quotas.check_request({"memory": None, "cpu": None, "machine_profile": None}, {})
    assert chosen == {"memory": "64G", "cpu": 8.0, "machine_profile": "Small"}
    # a profile is what the admin offers: taken as it is, whatever max_memory says
    fields = {"memory": "64G", "cpu": 8.0, "machine_profile": "Small"}
    assert quotas.check_request(fields, {"machine_profile": "Small"}) == fields


def test_queue_starts_the_owner_with_fewest_builds_first():
    from tljh_repo2docker.builds.manager import BuildManager

    manager = BuildManager.__new__(BuildManager)  # only the queue's bookkeeping
    manager._queue = {"a2": None, "a3": None, "b1": None}
    manager._running = {"a1": None}
    manager._owners = {"a1": "ann", "a2": "ann", "a3": "ann", "b1": "ben"}
    manager._last_start = {"ann": 1}
    assert manager._next_queued() == "b1"  # ann has one running, ben none
    manager._running = {}
    assert manager._next_queued() == "b1"  # none running: ben's turn, ann started last
    manager._running = {"a1": None, "b0": None}
    manager._owners["b0"] = "ben"
    manager._last_start = {"ann": 1, "ben": 2}
    assert manager._next_queued() == "a2"  # even, and ann's turn: her oldest


# -- the spawner: who may use what, from the service's database -------------------------


@pytest.fixture
async def spawner_with_db(sqlite_sessions, tmp_path):
    """A Repo2DockerSpawner (fake engine) reading the service's SQLite database."""
    fake = FakeDocker()
    make = spawner_maker(fake, Repo2DockerSpawner, environment_access=Repo2DockerSpawner.environment_access)
    db_url = f"sqlite:///{tmp_path / 'service.sqlite'}"

    async def add(uid, owner, sharing, built=True):
        image = f"{uid}:1"
        fake.add_image(image, env_labels(uid=uid, image=image, owner=owner, display_name=uid))
        await store.create_environment(
            sqlite_sessions, uid=uid, name=uid, image_name=image, repo="r", ref="HEAD",
            owner=owner, sharing=sharing,
        )
        if built:
            await store.update_environment(sqlite_sessions, uid, status="built", image_id="sha256:x")
        return image

    def spawner(name, groups=(), admin=False, roles=()):
        s = make(db_url=db_url)
        s.user = SimpleNamespace(
            name=name, id=2, url=f"/user/{name}/", base_url=f"/user/{name}/",
            groups=[SimpleNamespace(name=g, roles=[]) for g in groups], admin=admin, roles=list(roles),
        )
        return s

    return SimpleNamespace(add=add, spawner=spawner, fake=fake)


async def test_spawner_offers_and_starts_only_usable(spawner_with_db):
    s = spawner_with_db
    shared = await s.add("shared", "owner", SHARED)
    private = await s.add("private", "owner", PRIVATE)
    await s.add("public", "admin", EVERYONE)
    # an image the database does not know, built since sharing exists: its owner's only
    s.fake.add_image(
        "stray:1",
        env_labels(uid="stray", image="stray:1", owner="owner", display_name="stray", access="database"),
    )
    admin_role = SimpleNamespace(scopes=[TLJH_R2D_ADMIN_SCOPE])
    cases = {
        ("owner", ()): {"shared", "private", "public", "stray"},
        ("friend", ()): {"shared", "public"},
        ("member", ("team",)): {"shared", "public"},
        ("stranger", ("other",)): {"public"},
    }
    for (name, groups), expected in cases.items():
        offered = {i["uid"] for i in await s.spawner(name, groups).list_images()}
        assert offered == expected, name
    for kwargs in ({"admin": True}, {"roles": [admin_role]}):
        offered = {i["uid"] for i in await s.spawner("root", **kwargs).list_images()}
        assert offered == {"shared", "private", "public", "stray"}
    # forged user_options: refused before anything is made
    spawner = s.spawner("stranger", ("other",))
    for image in (shared, private):
        spawner.user_options = {"image": image}
        with pytest.raises(EnvironmentRefused, match="may not start"):
            await spawner.choose_environment()
    assert not s.fake.created
    spawner = s.spawner("member", ("team",))
    spawner.user_options = {"image": shared}
    assert (await spawner.choose_environment()).uid == "shared"


async def test_spawner_without_the_database_file(tmp_path):
    """A SQLite file that is not there holds nothing: images built since sharing
    exists go to their owner only, older ones (3.x's) to everyone, as before."""
    fake = FakeDocker()
    make = spawner_maker(fake, Repo2DockerSpawner, environment_access=Repo2DockerSpawner.environment_access)
    fake.add_image("mine:1", env_labels(uid="m", image="mine:1", owner="alice", access="database"))
    fake.add_image("theirs:1", env_labels(uid="t", image="theirs:1", owner="bob", access="database"))
    fake.add_image("old:1", env_labels(uid="o", image="old:1", owner="bob"))
    spawner = make(db_url=f"sqlite:///{tmp_path / 'missing.sqlite'}")
    spawner.user.admin = False
    assert {i["uid"] for i in await spawner.list_images()} == {"m", "o"}
    assert not (tmp_path / "missing.sqlite").exists()


async def test_kept_list_per_user_follows_sharing(sqlite_sessions):
    """The kept list filters per user, and a change of sharing (one write) counts at once."""
    import json

    from tljh_repo2docker.service.environment_list import EnvironmentList

    sessions = sqlite_sessions
    for uid, owner, sharing, built in [
        ("e1", "owner", SHARED, True),
        ("e2", "owner", PRIVATE, True),
        ("e3", "other", EVERYONE, True),
        ("e4", "owner", EVERYONE, False),  # not built: its owner's only
    ]:
        await store.create_environment(
            sessions, uid=uid, name=uid, image_name=f"{uid}:1", repo="r", ref="HEAD",
            owner=owner, sharing=sharing,
        )
        if built:
            await store.update_environment(sessions, uid, status="built", image_id="sha256:x")
    listing = EnvironmentList(sessions)

    async def uids(viewer, positions=None):
        body = json.loads(await listing.body(positions or {}, viewer))
        return [e["uid"] for e in body["environments"]]

    member = Viewer("member", frozenset({"team"}))
    assert await uids(Viewer("owner")) == ["e1", "e2", "e3", "e4"]
    assert await uids(member) == ["e1", "e3"]
    assert await uids(Viewer("stranger")) == ["e3"]
    assert await uids(Viewer("root", admin=True)) == ["e1", "e2", "e3", "e4"]
    # the owner sees their own builds' queue position; others never do
    body = json.loads(await listing.body({"e4": 1}, Viewer("owner")))
    assert body["environments"][3]["position"] == 1
    await store.update_environment(sessions, "e1", sharing=PRIVATE)
    assert await uids(member) == ["e3"]
    assert await uids(Viewer("member", frozenset())) == ["e3"]


async def test_spawner_refuses_when_the_database_cannot_be_read(tmp_path):
    """A database named but unreadable: nothing is offered or started on trust of
    user_options, and the user reads why in one line (issue 25)."""
    from tornado.web import HTTPError

    fake = FakeDocker()
    make = spawner_maker(fake, Repo2DockerSpawner, environment_access=Repo2DockerSpawner.environment_access)
    fake.add_image("old:1", env_labels(uid="o", image="old:1", owner="bob"))
    (tmp_path / "folder.sqlite").mkdir()  # a folder where the database file should be
    spawner = make(db_url=f"sqlite:///{tmp_path / 'folder.sqlite'}", user_options={"image": "old:1"})
    spawner.user.admin = False
    with pytest.raises(HTTPError) as info:
        await spawner.list_images()
    assert info.value.status_code == 503
    message = info.value.jupyterhub_message
    assert "database cannot be read" in message and "\n" not in message
    with pytest.raises(HTTPError):
        await spawner.start()
    assert fake.created == []
