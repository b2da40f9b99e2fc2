"""Build logs stay exact when the service is killed (SIGKILL) at any moment.

Issue 14: a line printed just before a kill came twice, under two ids. The
service now sends an event to live clients only once it is stored, together
with where the stored log ends in the build container's output (a Docker log
time stamp and a count, see ``DockerBuilder``'s ``_LogReader``); a restart
goes on from there.

- Unit level (fakes, where the engine cannot produce the case on demand): the
  log reader against generated Docker logs (lines cut into several messages,
  empty lines, output without a final line end, stdout and stderr stamps out
  of order, a rotated log), resumed after every line; the follower when the
  stream breaks in the middle of a line.
- Through a real hub, the real engine and repo2docker: builds that print
  lines steadily while the service is killed at random moments, many times
  (the service runs under ``tests/helpers/restarter.py``, which starts it again at
  once, as JupyterHub does after its next poll), and once through JupyterHub
  itself, which also measures how long the service is away.

Each checks that every line comes exactly once to a client that reconnects
with ``Last-Event-ID``, and is stored exactly once.
"""

import asyncio
import os
import random
import signal
import time

import aiohttp
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import logkills
from tests.helpers.buildutils import wait_building
from tests.helpers.fixtures import running_hub
from tests.helpers.processes import service_pids
from tests.helpers.utils import HubUser, figure
from tljh_repo2docker.builds.base import BUILT, LOG, FAILED
from tljh_repo2docker.builds.docker import DockerBuilder
from tljh_repo2docker.builds.docker import LogReader as _LogReader

SEED = int(os.environ.get("TLJH_R2D_TEST_SEED", random.randrange(1 << 30)))


# -- the log reader (unit) ---------------------------------------------------------


def _stamp(ns):
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{fraction:09d}Z"


@st.composite
def docker_logs(draw):
    """Messages as aiodocker yields them: ``"<stamp> <text>"``, one per engine message."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.text(st.characters(exclude_characters="\n\r"), max_size=8).map(lambda t: t + "\n"),
                st.just("\n"),  # an empty line
                st.just("\r\n"),
                # part of a long line: the engine cut it without a line end
                st.text(st.characters(exclude_characters="\n"), min_size=1, max_size=8),
            ),
            max_size=40,
        )
    )
    now = 1_796_115_786_000_000_000
    stamps = []
    for _ in pieces:
        now += draw(st.sampled_from([0, 1, 30_000, 400_000_000, 1_300_000_000]))
        # stdout and stderr are stamped by two threads: a stamp may be a
        # little older than the one stored before it.
        stamps.append(now - draw(st.sampled_from([0, 0, 0, 20_000])))
    return [f"{_stamp(ns)} {text}" for ns, text in zip(stamps, pieces)]


def read_all(messages, **kwargs):
    reader = _LogReader(**kwargs)
    out = []
    for message in messages:
        out += reader.feed(message)
    return out + reader.finish()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docker_logs())
def test_reading_again_after_any_line_goes_on_exactly_after_it(messages):
    lines = read_all(messages)
    text = "".join(m.partition(" ")[2] for m in messages)
    expected = text.split("\n")
    if expected[-1] == "":
        expected.pop()
    assert [line for line, _, _ in lines] == [e.removesuffix("\r") for e in expected]
    assert all(new for _, new, _ in lines)
    for index, (_, _, cursor) in enumerate(lines):
        again = read_all(messages, cursor=cursor)
        assert [(line, new) for line, new, _ in again] == [
            (line, position > index) for position, (line, _, _) in enumerate(lines)
        ]
        # The cursors of the lines read again are the same: resuming twice works too.
        assert [c for _, _, c in again] == [c for _, _, c in lines]


@settings(max_examples=200, deadline=None)
@given(docker_logs(), st.data())
def test_a_rotated_log_still_resumes_exactly(messages, data):
    lines = read_all(messages)
    if not lines:
        return
    index = data.draw(st.integers(0, len(lines) - 1))
    cursor = lines[index][2]
    since = int(cursor.split()[0])
    # The engine dropped the start of the log (max-size), up to a message
    # stamped before the cursor's time.
    first_kept = data.draw(st.integers(0, len(messages)))
    kept = messages[first_kept:]
    if any(_LogReader()._split(m)[0] >= since for m in messages[:first_kept]):
        return  # rotated past the cursor: nothing can be exact then
    again = read_all(kept, cursor=cursor)
    assert [line for line, new, _ in again if new] == [line for line, _, _ in lines[index + 1 :]]


def test_lines_cut_into_messages_empty_lines_and_an_unfinished_last_line():
    messages = [
        "2026-12-01T09:00:00.000000001Z one\n",
        "2026-12-01T09:00:00.000000002Z \n",
        "2026-12-01T09:00:00.100000000Z a long li",
        "2026-12-01T09:00:00.100000001Z ne cut in three",
        "2026-12-01T09:00:00.100000002Z  messages\r\n",
        "2026-12-01T09:00:03.000000000Z no line end",
    ]
    reader = _LogReader()
    fed = [reader.feed(m) for m in messages]
    assert [[line for line, _, _ in out] for out in fed] == [
        ["one"], [""], [], [], ["a long line cut in three messages"], []
    ]
    # Output without a line end is a line only once the log has ended.
    assert [line for line, _, _ in reader.finish()] == ["no line end"]
    assert reader.finish() == []
    # A log written by a version that stored only a count of lines.
    assert [(line, new) for line, new, _ in read_all(messages, skip_lines=2)] == [
        ("one", False), ("", False), ("a long line cut in three messages", True), ("no line end", True)
    ]
    # A cursor that is not one of ours counts as none.
    assert all(new for _, new, _ in read_all(messages, cursor="garbage"))


class FakeContainer:
    """A build container whose log streams are scripted; ``breaks`` the first one."""

    def __init__(self, streams, code=0):
        self.streams = list(streams)
        self.code = code
        self.broken = False

    async def show(self):
        return {
            "Config": {"Cmd": ["jupyter-repo2docker", "--ref", "main"], "Labels": {}},
            "State": {"Running": bool(self.streams), "ExitCode": self.code},
        }

    async def _log(self, items, breaks):
        for item in items:
            yield item
        if breaks:
            self.broken = True

    def log(self, **kwargs):
        assert kwargs["timestamps"] and kwargs["follow"]
        items, breaks = self.streams.pop(0)
        return self._log(items, breaks)

    async def wait(self):
        if self.broken:
            # aiodocker ends the log stream quietly when the connection
            # breaks; the next request fails.
            self.broken = False
            raise aiohttp.ClientConnectionError("Connection reset by peer")
        return {"StatusCode": self.code}

    async def delete(self, **kwargs):
        pass


async def test_a_stream_that_breaks_in_the_middle_of_a_line_repeats_nothing(monkeypatch):
    log = [
        "2026-12-01T09:00:00.000000001Z first\n",
        "2026-12-01T09:00:00.000000002Z second, cut ",
        "2026-12-01T09:00:00.000000003Z in two\n",
        "2026-12-01T09:00:01.500000000Z last, without line end",
    ]
    container = FakeContainer([(log[:2], True), (log, False)], code=1)
    builder = DockerBuilder(engine_wait_timeout=1)

    async def answers():
        return True

    async def ok():
        return "ok"

    monkeypatch.setattr(builder, "_wait_for_engine", answers)
    monkeypatch.setattr(builder, "_probe_engine", ok)
    monkeypatch.setattr(builder, "_remove_staging", lambda *a: asyncio.sleep(0))
    events = [
        e async for e in builder._follow(container, "u", "img", None, _LogReader(), [])
    ]
    lines = [e.message for e in events if e.phase == LOG]
    assert lines == ["first", "second, cut in two", "last, without line end"]
    assert all(e.cursor for e in events if e.phase == LOG)
    assert events[-1].phase == FAILED and "last, without line end" in events[-1].message


# -- the real thing -----------------------------------------------------------------


@pytest.fixture(scope="module")
def kill_hub(tmp_path_factory, test_images):
    """A hub whose service runs under tests/helpers/restarter.py."""
    workdir = tmp_path_factory.mktemp("kill-hub")
    pidfile = workdir / "service.pid"
    with running_hub(workdir, extra_config=logkills.restarter_config(pidfile)) as info:
        info.pidfile = pidfile
        yield info


async def test_many_kills_at_random_moments_lose_and_repeat_nothing(kill_hub, git_root, git_server):
    rng = random.Random(SEED)
    print(f"seed {SEED} (TLJH_R2D_TEST_SEED={SEED} repeats it)")
    user = await HubUser.login(kill_hub, "admin")
    builds = [
        {"ticks": 100, "interval": 0.2, "burst": 0},  # a line every 0.2 s
        {"ticks": 50, "interval": 0.4, "burst": 400},  # 400 lines at once first
    ]
    try:
        uids = []
        for build in builds:
            name = logkills.ticking_repo(git_root, build["ticks"], build["interval"], build["burst"])
            env = await user.create_env({"repo": git_server.url(name), "name": name})
            uids.append(env["uid"])
        lives = [[] for _ in uids]
        followers = [
            asyncio.ensure_future(logkills.follow_reconnecting(user, uid, live))
            for uid, live in zip(uids, lives)
        ]
        # Kill from the first line of the build step on.
        await wait_building(user, uids[0], contains="tick-1")
        kills = []
        await logkills.kill_repeatedly(
            kill_hub,
            kill_hub.pidfile,
            rng,
            until=lambda: all(f.done() for f in followers),
            gaps=(0.1, 1.5),
            kills=kills,
        )
        opened = await asyncio.gather(*followers)
        problems = {}
        for uid, live, build in zip(uids, lives, builds):
            stored = logkills.stored_log(kill_hub.db_path, uid)
            found = logkills.log_problems(live, stored, build["ticks"], build["burst"])
            if found:
                problems[uid] = found
        starting = sum(1 for kill in kills if kill[1] == "starting")
        figure(
            f"log kills: {len(kills)} SIGKILLs of the service during 2 builds "
            f"({starting} while it started), {sum(opened)} SSE connections, seed {SEED}"
        )
        assert len(kills) >= 3, "the builds ended before the service was killed a few times"
        reattached = [
            d for live in lives for _, d in live if d["message"] == "re-attached after a service restart"
        ]
        assert reattached, "no kill landed while a build was followed"
        assert not problems, problems
    finally:
        for uid in uids:
            await user.api("POST", f"api/environments/{uid}/cancel")
            await user.delete_env(uid)
        await user.close()


async def stream_end(user, uid):
    """``(monotonic time, how)`` a log stream opened now ends: with no watchdog but
    30 s of silence (the service sends a keep-alive every 25 s)."""
    url = user.service_path(f"api/environments/{uid}/logs")
    try:
        async with user.client.stream("GET", url, timeout=httpx.Timeout(10, read=30)) as r:
            async for _ in r.aiter_lines():
                pass
        how = "ended"
    except httpx.HTTPError as e:
        how = f"broke ({e.__class__.__name__})"
    return time.monotonic(), how


async def test_a_kill_through_jupyterhub_while_lines_arrive(hub, admin, git_root, git_server):
    """As in the issue: JupyterHub notices the dead service and starts it again."""
    rng = random.Random(SEED + 1)
    ticks = 40
    name = logkills.ticking_repo(git_root, ticks, 0.5)
    env = await admin.create_env({"repo": git_server.url(name), "name": name})
    uid = env["uid"]
    try:
        live = []
        follower = asyncio.ensure_future(logkills.follow_reconnecting(admin, uid, live))
        at_line = rng.randint(2, 8)
        deadline = time.monotonic() + 120
        while not any(d["message"].endswith(f" tick-{at_line}") for _, d in live):
            assert time.monotonic() < deadline and not follower.done(), live[-5:]
            await asyncio.sleep(0.02)
        # A client without a watchdog: how does its stream end?
        probe_end = asyncio.ensure_future(stream_end(admin, uid))
        await asyncio.sleep(rng.uniform(0, 0.5))  # a line arrives every 0.5 s
        (pid,) = service_pids(hub)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # What users get meanwhile.
        seen = set()
        async with httpx.AsyncClient(base_url=hub.url, cookies=admin.client.cookies, timeout=10) as c:
            while True:
                page = await c.get("services/tljh_repo2docker/environments", follow_redirects=False)
                api = await c.get(f"services/tljh_repo2docker/api/environments/{uid}")
                seen.add((page.status_code, api.status_code))
                pids = service_pids(hub)
                if api.status_code == 200 and pids and pids != [pid]:
                    break
                assert time.monotonic() - killed < 90, "the service did not come back"
                await asyncio.sleep(0.25)
        away = time.monotonic() - killed
        opened = await asyncio.wait_for(follower, 120)
        ended_at, how = await asyncio.wait_for(probe_end, 120)
        figure(
            f"service away after SIGKILL, until JupyterHub started it again and it answered: "
            f"{away:.1f} s; (page, API) statuses meanwhile: {sorted(seen)}; "
            f"a stream open at the kill {how} {ended_at - killed:.1f} s after it; "
            f"SSE connections of the reconnecting client: {opened}"
        )
        stored = logkills.stored_log(hub.db_path, uid)
        assert not logkills.log_problems(live, stored, ticks), logkills.log_problems(live, stored, ticks)
        assert any(d["message"] == "re-attached after a service restart" for _, d in live)
    finally:
        await admin.api("POST", f"api/environments/{uid}/cancel")
        await admin.delete_env(uid)


# -- the manager (unit: a scripted backend, a real SQLite database) -----------------


from tests.helpers.fakes import FlakySessions  # noqa: E402
from tljh_repo2docker.builds.base import STATUS, Builder, BuildEvent, BuildRequest  # noqa: E402
from tljh_repo2docker.builds.manager import BuildManager, without_replay  # noqa: E402
from tljh_repo2docker.db import store  # noqa: E402

LINES = 60


class CountingBuilder(Builder):
    """Prints ``line-1..line-60`` with random pauses; each line's cursor is its number."""

    def __init__(self, rng, **kwargs):
        super().__init__(**kwargs)
        self.rng = rng

    async def _lines(self, after):
        for number in range(after + 1, LINES + 1):
            await asyncio.sleep(self.rng.choice([0, 0, 0.001, 0.003]))
            yield BuildEvent(LOG, f"line-{number}", cursor=str(number))
        yield BuildEvent(BUILT, "done", image_id="sha256:x")

    def build(self, request):
        return self._lines(0)

    async def running(self):
        return {"k"}

    def attach(self, uid, skip_lines, cursor=None):
        return self._lines(int(cursor or 0))

    async def cancel(self, uid):
        pass


async def test_what_a_client_saw_is_stored_whenever_the_service_dies(sqlite_sessions):
    """In process: the service "dies" at random moments (its database writes
    stop, its client is cut off), a new one recovers. Every id the client
    saw is stored with the same event, and the client, coming back with its
    last id, gets each line exactly once."""
    rng = random.Random(SEED + 2)
    for round_ in range(25):
        uid = "k"
        env = await store.create_environment(
            sqlite_sessions, uid=uid, name=f"k{round_}", image_name="x/k:1", repo="r",
            ref="main", node_selector={}, build_args={},
        )
        seen = []
        dying = FlakySessions(sqlite_sessions)
        first = BuildManager(builder=CountingBuilder(rng), sessions=dying, flush_interval=0)
        await first.submit(env, BuildRequest(uid=uid, repo="r", ref="main", image_name="x/k:1"))

        async def follow(manager, after):
            async for event in manager.subscribe(uid, after):
                seen.append(event)

        client = asyncio.ensure_future(follow(first, 0))
        await asyncio.sleep(rng.uniform(0, 0.12))
        dying.down = True  # the process is gone: nothing more is written or sent
        client.cancel()
        first._closing = True
        for task in [*first._running.values(), *first.build_logs.flushers()]:
            task.cancel()
        # A write that had begun ends (commits) now, as it would have before
        # a real kill: a dead process writes nothing later.
        for _ in range(500):
            if len(asyncio.all_tasks()) == 1:
                break
            await asyncio.sleep(0.01)

        stored = await store.read_log(sqlite_sessions, uid)
        assert set(seen) <= set(stored), (round_, seen[-3:], stored[-3:])

        second = BuildManager(builder=CountingBuilder(rng), sessions=sqlite_sessions, flush_interval=0)
        await second.recover(lambda env: None)
        after = seen[-1][0] if seen else 0
        await asyncio.wait_for(follow(second, after), 10)
        await second.close()
        lines = [m for _, phase, m in seen if phase == LOG]
        missing = sorted(set(f"line-{n}" for n in range(1, LINES + 1)) - set(lines))
        assert lines == [f"line-{n}" for n in range(1, LINES + 1)], (round_, missing, seen[-6:], stored[-4:])
        ids = [i for i, _, _ in seen]
        assert ids == list(range(1, len(ids) + 1))
        assert await store.read_log(sqlite_sessions, uid) == seen
        await store.delete_environment(sqlite_sessions, uid)


async def _events(*events):
    for event in events:
        yield event


def _logs(*messages):
    return [BuildEvent(LOG, m) for m in messages]


async def _run_filter(stored, complete, *events):
    filtered = without_replay(_events(*events), stored, complete, "BinderHub")
    return [(e.phase, e.message) async for e in filtered]


async def test_lines_binderhub_sends_again_are_not_repeated_and_each_case_is_said():
    done = BuildEvent(BUILT, "Image ready")
    stored = ["one", "two", "three"]
    # BinderHub follows its build from its start: the old lines come again.
    building = BuildEvent(STATUS, "BinderHub: building")
    got = await _run_filter(stored, True, building, *_logs("one", "two", "three", "four"), done)
    assert got == [
        (STATUS, "BinderHub: building"),
        (
            STATUS,
            "BinderHub sent the 3 log lines above again (it follows its build from its start); "
            "they are not repeated",
        ),
        (LOG, "four"),
        (BUILT, "Image ready"),
    ]
    # BinderHub runs the build anew: its log starts over, nothing is dropped.
    got = await _run_filter(stored, True, *_logs("one", "other"), done)
    assert got == [
        (STATUS, "BinderHub runs the build again: its log starts over here"),
        (LOG, "one"), (LOG, "other"), (BUILT, "Image ready"),
    ]
    # The build ended meanwhile: BinderHub only says it is ready.
    got = await _run_filter(stored, True, done)
    assert got[0][0] == STATUS and "lines it printed after those above are not in this log" in got[0][1]
    assert got[1:] == [(BUILT, "Image ready")]
    # A stored log too long to compare: lines may repeat, and the log says so.
    got = await _run_filter(stored, False, *_logs("one"), done)
    assert got[0][0] == STATUS and "may send lines shown above again" in got[0][1]
    assert got[1:] == [(LOG, "one"), (BUILT, "Image ready")]
    # Nothing stored: nothing to compare.
    assert await _run_filter([], True, *_logs("one"), done) == [(LOG, "one"), (BUILT, "Image ready")]


async def test_a_binderhub_build_resubmitted_after_a_kill_repeats_no_line(sqlite_sessions):
    """Over HTTP with the stand-in BinderHub: the service dies mid-build; the
    new one asks BinderHub again, which follows its build from its start
    (the lines already stored come again): they are dropped, and said so."""
    from tests.helpers.binderhub_standin import BinderHubStandin, Done, Event, Scenario, Sleep, building_steps
    from tljh_repo2docker.builds.binderhub import BinderHubBuilder

    steps = building_steps()
    async with BinderHubStandin(prefix="/", scenarios={}) as binder:
        binder.scenarios["replay"] = Scenario(steps=[*steps[:5], Sleep(60)])
        env = await store.create_environment(
            sqlite_sessions, uid="bh", name="bh", image_name="", repo="https://github.com/o/replay",
            ref="main", provider="gh", node_selector={}, build_args={},
        )
        request = BuildRequest(uid="bh", repo=env.repo, ref="main", image_name="", provider="gh")
        dying = FlakySessions(sqlite_sessions)
        first = BuildManager(builder=BinderHubBuilder(url=binder.url), sessions=dying, flush_interval=0)
        await first.submit(env, request)
        seen = []

        async def follow(manager, after):
            async for event in manager.subscribe("bh", after):
                seen.append(event)

        client = asyncio.ensure_future(follow(first, 0))
        for _ in range(500):
            if sum(1 for e in seen if e[1] == LOG) == 5:
                break
            await asyncio.sleep(0.01)
        dying.down = True
        client.cancel()
        first._closing = True
        for task in [*first._running.values(), *first.build_logs.flushers()]:
            task.cancel()
        await first.builder.close()

        # Meanwhile the build went on; asked again, BinderHub plays it from its start.
        binder.scenarios["replay"] = Scenario(
            steps=[*steps, Event({"phase": "building", "message": "after the restart\n"}), Done()]
        )
        builder = BinderHubBuilder(url=binder.url)
        second = BuildManager(builder=builder, sessions=sqlite_sessions, flush_interval=0)
        from tljh_repo2docker.service.lifecycle import build_request

        await second.recover(build_request)
        await asyncio.wait_for(follow(second, seen[-1][0]), 10)
        await second.close()
        await builder.close()
    lines = [m for _, phase, m in seen if phase == LOG]
    assert lines == [
        "Waiting for build to start...", "Picked Git content provider.",
        "Cloning into '/tmp/repo2docker'...", "Step 1/3 : FROM buildpack-deps:jammy",
        "Step 2/3 : RUN pip install -r requirements.txt", "Pushing image", "after the restart",
    ]
    statuses = [m for _, phase, m in seen if phase == STATUS]
    assert "re-submitted after a service restart" in statuses
    assert (
        "BinderHub sent the 5 log lines above again (it follows its build from its start); "
        "they are not repeated"
    ) in statuses
    assert seen[-1][1] == BUILT
    assert await store.read_log(sqlite_sessions, "bh") == seen


@pytest.mark.docker
async def test_a_kill_after_the_build_ended_but_before_its_result_was_stored(
    git_root, git_server, test_images
):
    """The container stays until the consumer moves on from the final event,
    so a service killed in between re-attaches to the ended build and reports
    the same result, with no line again; only then is the container removed."""
    from tests.helpers import dockerbuilder as t

    made = {"uids": [], "images": []}
    builder = t.make_builder()
    repo = t.new_repo(git_root, {"Dockerfile": t.dockerfile("RUN echo done-1")})
    request = t.new_request(made, git_server.url(repo))
    try:
        first = []
        events = builder.build(request)
        async for event in events:
            first.append(event)
            if event.final:
                break  # the manager stores the result now: the service dies here
        await builder.close()
        assert first[-1].phase == BUILT, t.explain(first)
        again_builder = t.make_builder()
        try:
            assert request.uid in await again_builder.running()
            cursor = [e.cursor for e in first if e.phase == LOG][-1]
            again = await t.collect(again_builder.attach(request.uid, 0, cursor))
            assert t.logs_of(again) == []
            assert again[-1].phase == BUILT and again[-1].image_id == first[-1].image_id
            assert again[-1].commit == first[-1].commit
            assert await t.build_containers(again_builder, request.uid) == []
        finally:
            await again_builder.close()
        await events.aclose()
    finally:
        for image in made["images"]:
            t.docker("rmi", "-f", image, check=False)
