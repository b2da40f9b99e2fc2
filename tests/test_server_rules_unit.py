"""The servers' rules without a hub (service/servers.py): names, the start's
decisions, the list's entries and why a start failed.

The database is real (SQLite, made by the migrations); the hub and the engine
are small fakes that answer what a test needs.
"""

import asyncio
import collections
import logging
from datetime import datetime, timezone

import pytest

from tljh_repo2docker.access import Viewer
from tljh_repo2docker.db import store
from tljh_repo2docker.errors import Conflict, FieldError, NotFound
from tljh_repo2docker.service import servers as rules

LOG = logging.getLogger("test_server_rules_unit")


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test its own memory of why containers exited."""
    monkeypatch.setattr(rules, "_exit_reasons", collections.OrderedDict())
    return rules._exit_reasons


async def add_env(sessions, name, *, image_id="sha256:current", owner=None, sharing=None, **fields):
    env = await store.create_environment(
        sessions, uid=f"uid-{name}", name=name, image_name=f"img/{name}:main",
        repo="https://example.org/r", ref="main", node_selector={}, build_args={},
        owner=owner, sharing=sharing,
    )
    await store.update_environment(
        sessions, env.uid, status=fields.pop("status", store.BUILT), image_id=image_id, **fields
    )
    return await store.get_environment(sessions, env.uid)


class FakeHub:
    def __init__(self, failures=None, display_names=True):
        self.failures = failures or {}
        self.display_names = display_names
        self.asked = []

    async def spawn_failure(self, user, server_name):
        self.asked.append((user, server_name))
        return self.failures.get((user, server_name))

    async def has_display_names(self):
        return self.display_names


class FakeHomes:
    """The engine: containers by id, exit statuses from its events."""

    def __init__(self, available=True, containers=None, exit_code=None):
        self.available = available
        self.containers = containers or {}
        self.exit_code = exit_code
        self.watched = 0
        self.exit_queries = []

    def watch_deaths(self):
        self.watched += 1

    async def container(self, ref):
        return self.containers.get(ref)

    async def exit_reason(self, info):
        return f"exited with status {info['State']['ExitCode']}: {info['Log']}"

    async def exit_status(self, since, **match):
        self.exit_queries.append((since, match))
        return self.exit_code


def url_for(server_name):
    return f"/hub/user/ann/{server_name}/"


def hub_server(**fields):
    return {"ready": False, "pending": None, "user_options": {}, "state": {}, **fields}


# -- names ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "Data.Lab", "x_y-9", "9lives", "a" * 63])
def test_valid_names_are_returned_as_they_are(name):
    assert rules.check_server_name(name) == name


@pytest.mark.parametrize("missing", [None, "", 0, ["a"]])
def test_a_missing_name_is_required(missing):
    with pytest.raises(FieldError) as e:
        rules.check_server_name(missing)
    assert (e.value.status_code, e.value.field, e.value.log_message) == (400, "name", "name: is required")


@pytest.mark.parametrize("bad", ["-a", ".hidden", "a/b", "a b", "é", "a" * 64])
def test_invalid_names_say_what_a_name_may_hold(bad):
    with pytest.raises(FieldError) as e:
        rules.check_server_name(bad)
    assert e.value.status_code == 400 and e.value.field == "name"
    assert e.value.reason.startswith(f"{bad!r} is not a valid server name: use up to 63 letters")


@pytest.mark.parametrize(
    "name, slug",
    [
        ("analysis", "analysis"),
        ("a" * 30, "a" * 30),
        ("Data.Lab", "data-lab-9e457c77"),
    ],
)
def test_slugs(name, slug):
    assert rules.slug_for(name) == slug


def test_a_name_without_letters_gets_a_generic_slug():
    slug = rules.slug_for("2024")
    assert slug.startswith("server-") and len(slug) == len("server-") + 8


def test_long_names_are_cut_to_jupyterhub_6s_length_and_keep_a_hash():
    slug = rules.slug_for("a-very-long-server-name-for-the-lab")
    assert len(slug) <= 30 and slug.startswith("a-very-long-server-na")
    assert slug != rules.slug_for("a-very-long-server-name-for-the-lab2")


async def test_the_hubs_name_is_a_slug_only_for_jupyterhub_6():
    assert await rules.hub_server_name(FakeHub(display_names=True), "Data.Lab") == "data-lab-9e457c77"
    assert await rules.hub_server_name(FakeHub(display_names=False), "Data.Lab") == "Data.Lab"


def test_the_handlers_module_still_offers_the_rules_it_held():
    from tljh_repo2docker.handlers import servers as handlers

    assert handlers.check_server_name is rules.check_server_name
    assert handlers.slug_for is rules.slug_for
    assert handlers._reason is rules._reason and handlers._escape is rules._escape


# -- the start's decisions ----------------------------------------------------


@pytest.mark.parametrize("environment", [None, "", "   ", 3])
async def test_a_start_needs_an_environment(sqlite_sessions, environment):
    with pytest.raises(FieldError) as e:
        await rules.find_built(sqlite_sessions, environment, Viewer("ann"))
    assert (e.value.status_code, e.value.log_message) == (400, "environment: is required")


async def test_an_unknown_environment_is_not_found(sqlite_sessions):
    with pytest.raises(FieldError) as e:
        await rules.find_built(sqlite_sessions, "nope", Viewer("ann"))
    assert e.value.status_code == 404 and e.value.field == "environment"
    assert e.value.log_message == "environment: no environment named 'nope'"


async def test_an_environment_the_user_may_not_use_does_not_exist_for_them(sqlite_sessions):
    await add_env(sqlite_sessions, "secret", owner="bob", sharing={"everyone": False})
    with pytest.raises(FieldError) as e:
        await rules.find_built(sqlite_sessions, "secret", Viewer("ann"))
    assert e.value.status_code == 404
    assert e.value.log_message == "environment: no environment named 'secret'"
    # its owner and admins start from it
    assert (await rules.find_built(sqlite_sessions, "secret", Viewer("bob"))).name == "secret"
    assert (await rules.find_built(sqlite_sessions, "secret", Viewer("x", admin=True))).name == "secret"


async def test_a_start_finds_the_environment_by_name_uid_or_image_with_spaces_around(sqlite_sessions):
    env = await add_env(sqlite_sessions, "lab")
    for given in ("lab", " LAB ", env.uid, env.image_name):
        assert (await rules.find_built(sqlite_sessions, given, Viewer("ann"))).uid == env.uid


async def test_an_environment_not_built_yet_conflicts(sqlite_sessions):
    await add_env(sqlite_sessions, "building", image_id=None, status=store.BUILDING)
    with pytest.raises(FieldError) as e:
        await rules.find_built(sqlite_sessions, "building", Viewer("ann"))
    assert e.value.status_code == 409
    assert "'building' is not built yet (status: building)" in e.value.log_message


async def test_the_backends_refusal_conflicts(sqlite_sessions):
    await add_env(sqlite_sessions, "lab")
    asked = []

    def unstartable(image_name):
        asked.append(image_name)
        return "its image was removed"

    with pytest.raises(FieldError) as e:
        await rules.find_built(sqlite_sessions, "lab", Viewer("ann"), unstartable=unstartable)
    assert asked == ["img/lab:main"]
    assert e.value.status_code == 409
    assert e.value.log_message == "environment: 'lab' cannot be started: its image was removed"


async def test_an_image_awaiting_adoption_is_unavailable_until_the_recovery(sqlite_sessions):
    await add_env(sqlite_sessions, "converted", image_id=None)
    recovered = asyncio.Event()
    with pytest.raises(FieldError) as e:
        await rules.find_built(
            sqlite_sessions, "converted", Viewer("ann"), recovered, wait=0.05,
            backend_problem=lambda: "Docker does not answer",
        )
    assert e.value.status_code == 503 and e.value.headers == {"Retry-After": "5"}
    assert "the build backend cannot be used yet: Docker does not answer" in e.value.log_message


def test_only_a_stopped_server_is_replaced():
    rules.check_replaceable(None, "lab")
    rules.check_replaceable({"status": "stopped"}, "lab")
    for status in ("running", "spawn", "stop"):
        with pytest.raises(Conflict) as e:
            rules.check_replaceable({"status": status}, "lab")
        assert e.value.status_code == 409 and e.value.field is None
        assert e.value.log_message == "name: the server 'lab' is already running"


def test_a_missing_server_is_not_found_unless_its_name_is_impossible():
    server = {"name": "lab"}
    assert rules.check_found(server, "lab") is server
    with pytest.raises(NotFound) as e:
        rules.check_found(None, "lab")
    assert (e.value.status_code, e.value.log_message) == (404, "You have no server named 'lab'")
    with pytest.raises(FieldError) as e:
        rules.check_found(None, "a b")
    assert e.value.status_code == 400 and e.value.field == "name"


def test_servers_are_found_by_display_name_before_the_hubs_name():
    servers = [
        {"name": "Data.Lab", "server_name": "lab"},
        {"name": "lab", "server_name": "lab-2"},
    ]
    assert rules.find_server(servers, "lab")["server_name"] == "lab-2"
    assert rules.find_server(servers, "Data.Lab")["server_name"] == "lab"
    assert rules.find_server(servers, "lab-2")["name"] == "lab"
    assert rules.find_server(servers, "other") is None


# -- tljh-repo2docker 3.x's body ---------------------------------------------


def test_3x_bodies_are_told_by_their_fields():
    assert rules.is_3x_body({"imageName": "x"}) and rules.is_3x_body({"userName": "ann"})
    assert not rules.is_3x_body({"name": "lab", "environment": "x"})


@pytest.mark.parametrize("user", [None, "", "ann"])
def test_a_3x_body_becomes_ours(user):
    body = {"imageName": "img/lab:main", "serverName": "lab"}
    if user is not None:
        body["userName"] = user
    assert rules.body_of_3x(body, "ann") == {"name": "lab", "environment": "img/lab:main"}


def test_a_3x_body_starts_servers_only_for_its_sender():
    with pytest.raises(FieldError) as e:
        rules.body_of_3x({"imageName": "x", "userName": "bob"}, "ann")
    assert (e.value.status_code, e.value.field) == (403, "userName")
    assert e.value.reason == "servers can only be started for yourself (leave userName out)"


def test_a_3x_body_with_other_fields_names_the_first():
    with pytest.raises(FieldError) as e:
        rules.body_of_3x({"imageName": "x", "zeta": 1, "name": "lab"}, "ann")
    assert (e.value.status_code, e.value.field) == (400, "name")


# -- why a start failed -------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "  Error ", "Internal Server Error", "bad gateway"])
def test_the_hubs_generic_words_say_nothing(reason):
    assert rules.says_nothing(reason)


def test_a_real_reason_says_something():
    assert not rules.says_nothing("image not found")


def test_hub_times_are_read_as_unix_time():
    expected = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert rules._timestamp("2026-01-02T03:04:05Z") == expected
    assert rules._timestamp("2026-01-02T04:04:05+01:00") == expected
    assert rules._timestamp("yesterday") is None
    assert rules._timestamp("") is None and rules._timestamp(None) is None


def test_the_memory_of_exit_reasons_is_bounded_and_forgets(monkeypatch, fresh_memory):
    monkeypatch.setattr(rules, "_EXIT_REASONS_KEPT", 2)
    assert rules._remember(("ann", "a"), "one") == "one"
    rules._remember(("ann", "b"), "two")
    rules._remember(("ann", "a"), "one again")  # the newest again
    rules._remember(("ann", "c"), "three")
    assert list(fresh_memory.items()) == [(("ann", "a"), "one again"), (("ann", "c"), "three")]
    rules.forget("ann", "a")
    rules.forget("ann", "never")  # nothing to forget
    assert list(fresh_memory) == [("ann", "c")]


# -- the list's entries --------------------------------------------------------


@pytest.mark.parametrize(
    "fields, status",
    [
        ({"ready": True, "pending": "stop"}, "running"),
        ({"pending": "spawn"}, "spawn"),
        ({"pending": "stop"}, "stop"),
        ({}, "stopped"),
    ],
)
def test_a_servers_status(fields, status):
    assert rules.status_of(hub_server(**fields)) == status


async def test_the_list_reads_the_hubs_model_with_the_environments(sqlite_sessions):
    env = await add_env(sqlite_sessions, "lab")
    old = await add_env(sqlite_sessions, "old")
    model = {
        "servers": {
            "": hub_server(ready=True),  # the default server is not listed
            "data-lab-9e457c77": hub_server(
                display_name="Data.Lab", ready=True, started="2026-01-01T00:00:00Z",
                last_activity="2026-01-01T01:00:00Z",
                user_options={"environment": env.uid, "image": env.image_name},
            ),
            # started under 3.x: only the image's name
            "legacy": hub_server(user_options={"image": old.image_name}),
            "gone": hub_server(user_options={"image": "somewhere/else:1"}),
        }
    }
    hub, homes = FakeHub(), FakeHomes(available=False)
    listed, options = await rules.UserServers(
        "ann", sessions=sqlite_sessions, hub=hub, homes=homes, log=LOG
    ).read(model, url_for)
    assert homes.watched == 1
    by_name = {s["name"]: s for s in listed}
    assert sorted(by_name) == ["Data.Lab", "gone", "legacy"]
    assert by_name["Data.Lab"] == {
        "name": "Data.Lab",
        "server_name": "data-lab-9e457c77",
        "environment": "lab",
        "environment_uid": env.uid,
        "image": env.image_name,
        "status": "running",
        "url": "/hub/user/ann/data-lab-9e457c77/",
        "last_activity": "2026-01-01T01:00:00Z",
        "started": "2026-01-01T00:00:00Z",
        "outdated": None,
        "version": None,  # no version recorded for its image
        "newer_version": None,
        "error": None,
    }
    assert by_name["legacy"]["environment_uid"] == old.uid
    assert by_name["legacy"]["outdated"] is False and by_name["legacy"]["newer_version"] is False
    assert by_name["gone"]["environment"] == "somewhere/else:1"
    assert by_name["gone"]["environment_uid"] is None and by_name["gone"]["outdated"] is None
    assert options["Data.Lab"] == {"environment": env.uid, "image": env.image_name}
    # only stopped servers' failures are asked for
    assert sorted(hub.asked) == [("ann", "gone"), ("ann", "legacy")]


async def test_without_an_engine_versions_are_told_by_image_name(sqlite_sessions):
    env = await add_env(sqlite_sessions, "lab", image_id="sha256:v2", build_number=2)
    for number, image_id in ((1, "sha256:v1"), (2, "sha256:v2")):
        await store.add_version(
            sqlite_sessions, env.uid, number=number, image_name=f"img/lab:c{number}", image_id=image_id
        )
    model = {
        "servers": {
            "old": hub_server(ready=True, user_options={"environment": env.uid, "image": "img/lab:c1"}),
            "new": hub_server(ready=True, user_options={"environment": env.uid, "image": "img/lab:c2"}),
        }
    }
    listed, _ = await rules.UserServers(
        "ann", sessions=sqlite_sessions, hub=FakeHub(), homes=FakeHomes(available=False), log=LOG
    ).read(model, url_for)
    by_name = {s["name"]: s for s in listed}
    assert (by_name["old"]["version"], by_name["old"]["newer_version"], by_name["old"]["outdated"]) == (
        1, True, True,
    )
    assert (by_name["new"]["version"], by_name["new"]["newer_version"], by_name["new"]["outdated"]) == (
        2, False, False,
    )


async def test_with_an_engine_versions_are_told_by_the_containers_image(sqlite_sessions):
    env = await add_env(sqlite_sessions, "lab", image_id="sha256:v2", build_number=2)
    for number in (1, 2):
        await store.add_version(
            sqlite_sessions, env.uid, number=number, image_name=f"img/lab:main--v{number}",
            image_id=f"sha256:v{number}",
        )
    homes = FakeHomes(containers={"c1": {"Image": "sha256:v1", "State": {"Running": True}}})
    model = {
        "servers": {
            "lab": hub_server(
                ready=True, state={"object_id": "c1"},
                user_options={"environment": env.uid, "image": env.image_name},
            )
        }
    }
    (server,), _ = await rules.UserServers(
        "ann", sessions=sqlite_sessions, hub=FakeHub(), homes=homes, log=LOG
    ).read(model, url_for)
    assert "_image" not in server
    assert (server["version"], server["newer_version"], server["outdated"]) == (1, True, True)


async def test_a_stopped_servers_error_is_the_hubs_failure_without_its_prefix(sqlite_sessions):
    hub = FakeHub(failures={("ann", "lab"): "Spawn failed: image not found"})
    listed, _ = await rules.UserServers(
        "ann", sessions=sqlite_sessions, hub=hub, homes=FakeHomes(available=False), log=LOG
    ).read({"servers": {"lab": hub_server()}}, url_for)
    assert listed[0]["error"] == "image not found"


async def test_a_failure_without_an_address_is_said_plainly(sqlite_sessions):
    failure = "Spawn failed: The 'ip' trait of a Server instance expected a unicode string"
    hub = FakeHub(failures={("ann", "Data.Lab"): failure})
    homes = FakeHomes(exit_code=3)
    model = {"servers": {"Data.Lab": hub_server(user_options={"image": "img/x:1"})}}
    listed, _ = await rules.UserServers(
        "ann", sessions=sqlite_sessions, hub=hub, homes=homes, log=LOG
    ).read(model, url_for)
    error = listed[0]["error"]
    assert error.startswith(
        "The server's container stopped as soon as it started (it exited with status 3): "
        "the environment's image does not run a notebook server"
    )
    assert error.endswith("(JupyterHub: The 'ip' trait of a Server instance expected a unicode string)")
    ((_, match),) = homes.exit_queries
    assert match == {"image": "img/x:1", "name_parts": ["ann", "data-2elab"]}


async def test_an_exited_container_is_remembered_and_forgotten_when_it_runs(sqlite_sessions, fresh_memory):
    exited = {"Image": "sha256:x", "State": {"Status": "exited", "ExitCode": 1}, "Log": "boom"}
    homes = FakeHomes(containers={"c1": exited})
    users = rules.UserServers("ann", sessions=sqlite_sessions, hub=FakeHub(), homes=homes, log=LOG)
    model = {"servers": {"lab": hub_server(pending="spawn", state={"object_id": "c1"})}}
    listed, _ = await users.read(model, url_for)
    assert listed[0]["error"] == "exited with status 1: boom"
    assert fresh_memory[("ann", "lab")] == "exited with status 1: boom"

    # the hub gave up: the stopped server keeps the container's reason
    listed, _ = await users.read({"servers": {"lab": hub_server()}}, url_for)
    assert listed[0]["error"] == "exited with status 1: boom"

    # it runs again
    homes.containers["c1"] = {"Image": "sha256:x", "State": {"Running": True}}
    listed, _ = await users.read({"servers": {"lab": hub_server(ready=True, state={"object_id": "c1"})}}, url_for)
    assert listed[0]["error"] is None and ("ann", "lab") not in fresh_memory


async def test_a_removed_container_is_told_by_the_engines_events(sqlite_sessions, fresh_memory):
    homes = FakeHomes(exit_code=137)
    started = "2026-01-02T03:04:05Z"
    model = {"servers": {"lab": hub_server(ready=True, started=started, state={"object_id": "c9"})}}
    listed, _ = await rules.UserServers(
        "ann", sessions=sqlite_sessions, hub=FakeHub(), homes=homes, log=LOG
    ).read(model, url_for)
    assert listed[0]["error"] == (
        "The server's container exited with status 137 and was removed "
        "(DockerSpawner's remove), so its output is gone"
    )
    ((since, match),) = homes.exit_queries
    assert since == rules._timestamp(started) - 5 and match == {"ref": "c9"}
    assert ("ann", "lab") in fresh_memory


async def test_a_removed_container_without_a_known_exit_leaves_no_error(sqlite_sessions):
    homes = FakeHomes(exit_code=None)
    model = {"servers": {"lab": hub_server(pending="spawn", user_options={"image": "img/x:1"})}}
    listed, _ = await rules.UserServers(
        "ann", sessions=sqlite_sessions, hub=FakeHub(), homes=homes, log=LOG
    ).read(model, url_for)
    assert listed[0]["error"] is None
    ((_, match),) = homes.exit_queries
    assert match == {"image": "img/x:1", "name_parts": ["ann", "lab"]}



async def test_a_pods_server_is_matched_to_its_version_by_its_state(sqlite_sessions):
    """A server of Repo2DockerKubeSpawner has no container: its state (pod_name, image_id)
    says which version it runs, without asking the engine."""
    from types import SimpleNamespace

    from tljh_repo2docker.db import store
    from tljh_repo2docker.service.servers import UserServers, server_model

    env = await store.create_environment(
        sqlite_sessions, uid="k" * 32, name="lab", image_name="reg/lab:HEAD",
        repo="https://example.org/r", ref="HEAD", node_selector={}, build_args={},
    )
    for number in (1, 2):
        await store.add_version(
            sqlite_sessions, env.uid, number=number, image_name=f"reg/lab:HEAD--v{number}",
            image_id=f"sha256:{number}", commit=f"c{number}", size=1,
        )
    await store.update_environment(sqlite_sessions, env.uid, image_id="sha256:2", status="built")
    env = await store.get_environment(sqlite_sessions, env.uid)

    class NoEngine:
        available = True  # a Docker engine exists (the builder's), but pods are not on it

        async def container(self, ref):
            raise AssertionError("a pod's server must not be looked up as a container")

        async def exit_status(self, *args, **kwargs):
            raise AssertionError("a pod's server must not be searched in Docker's events")

    servers = UserServers("alice", sessions=sqlite_sessions, hub=None, homes=NoEngine(),
                          log=SimpleNamespace(debug=lambda *a: None))
    hub_model = {"ready": True, "pending": None, "url": "/user/alice/lab/",
                 "user_options": {"environment": env.uid, "image": "reg/lab:HEAD--v1"},
                 "state": {"pod_name": "jupyter-alice--lab", "image_id": "sha256:1"}}
    model = server_model("lab", hub_model, env, "/user/alice/lab/")
    assert model["status"] == "running"
    await servers.add_engine_facts(model, hub_model, env)
    await servers.add_version_facts([model], {env.uid: env})
    assert (model["version"], model["newer_version"], model["outdated"]) == (1, True, True)
