"""The pieces of the pages for issues 23 and 24 that live in Python: the
phase of a running build in the environment list (read from the build logs
in memory, no query) and the size settings as the Add dialog shows them."""

import collections
import json

from tljh_repo2docker.builds.base import LOG, STATUS
from tljh_repo2docker.db import store
from tljh_repo2docker.handlers.pages import _size_bytes, _size_text
from tljh_repo2docker.service.environment_list import EnvironmentList, build_phases, phase_of


class FakeLog:
    def __init__(self, events, done=False):
        self.head_events = list(events[:2])
        self.tail_events = collections.deque(events[2:])
        self.done = done


class FakeLogs:
    def __init__(self, logs):
        self.logs = logs

    def get(self, uid):
        return self.logs.get(uid)


class FakeBuilds:
    def __init__(self, logs):
        self.build_logs = FakeLogs(logs)


def test_phase_of_the_builds_status_messages():
    assert phase_of("building") == "building"
    assert phase_of("pulling quay.io/x:1") == "pulling"
    assert phase_of("checking the image: starting jupyterhub-singleuser without network") == "checking"
    assert phase_of("check: the server answered") == "checking"
    assert phase_of("pushing to registry.example.org") == "pushing"
    assert phase_of("BinderHub: waiting") == "waiting"
    assert phase_of("queued (position 2)") is None
    assert phase_of("re-attached after a service restart") is None


def test_build_phases_reads_the_last_known_phase_in_memory():
    events = [
        (1, STATUS, "queued (position 1)"),
        (2, STATUS, "building"),
        (3, LOG, "Step 1/3"),
        (4, STATUS, "checking the image: starting"),
        (5, LOG, "server up"),
        (6, STATUS, "lost contact with the Docker engine (x); waiting"),
    ]
    builds = FakeBuilds({
        "a": FakeLog(events),
        "b": FakeLog(events[:3]),  # the phase is only in the head
        "c": FakeLog(events, done=True),
    })
    assert build_phases(builds, ["a", "b", "c", "gone"]) == {"a": "checking", "b": "building"}
    assert build_phases(object(), ["a"]) == {}


async def add(sessions, number, status):
    env = await store.create_environment(
        sessions, uid=f"uid-{number}", name=f"env-{number}", image_name=f"p/env-{number}:HEAD",
        repo="https://example.org/r", ref="HEAD", node_selector={}, build_args={},
    )
    await store.update_environment(sessions, env.uid, status=status)
    return env.uid


async def test_the_list_carries_the_phase_of_running_builds_only(sqlite_sessions):
    sessions = sqlite_sessions
    building = await add(sessions, 1, status=store.BUILDING)
    built = await add(sessions, 2, status=store.BUILT)
    listing = EnvironmentList(sessions)
    log = FakeLog([(1, STATUS, "building"), (2, LOG, "x"), (3, STATUS, "pushing to r")])
    builds = FakeBuilds({building: log, built: log})

    def phases(body):
        return {e["uid"]: e.get("phase") for e in json.loads(body)["environments"]}

    assert phases(await listing.body({}, admin=True, builds=builds)) == {building: "pushing", built: None}
    # The phase moves without a write: the kept answer follows it.
    log.tail_events.append((4, STATUS, "checking the image: again"))
    assert phases(await listing.body({}, admin=True, builds=builds))[building] == "checking"
    # Users see no phase (they see built environments only), nor does a list without builds.
    assert all("phase" not in e for e in json.loads(await listing.body({}, admin=False))["environments"])
    assert phases(await listing.body({}, admin=True)) == {building: None, built: None}
    # Once the build ends, the entry loses its phase.
    await store.update_environment(sessions, building, status=store.BUILT)
    assert phases(await listing.body({}, admin=True, builds=builds))[building] is None


def test_size_settings_for_the_dialog():
    assert _size_bytes("5M") == 5 * 1024**2
    assert _size_bytes("1m") == 1024**2
    assert _size_bytes(5242880) == 5242880
    assert _size_bytes(None) is None
    assert _size_bytes("lots") is None
    assert _size_text("5M") == "5 MB"
    assert _size_text(1536) == "1.5 KB"
    assert _size_text(None) is None
