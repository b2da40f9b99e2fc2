"""Kill the service at random moments of steadily logging builds, and check their logs.

Shared by ``tests/test_log_kills.py`` (a few rounds) and
``benchmarks/soak_log_kills.py`` (many). A build here is a Dockerfile whose
``RUN`` steps print numbered lines (a burst at once, then one line every
``interval`` seconds, with an empty line now and then); a client follows its
log over SSE through the proxy, reconnecting with ``Last-Event-ID`` whenever
the stream breaks, as a browser's EventSource does; the service is killed
with SIGKILL meanwhile. :func:`log_problems` then says what is wrong with
what the client got and with the stored log: every numbered line must be
there exactly once, in order, and the event ids continuous.
"""

import asyncio
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from tests.helpers.buildutils import FINAL, dockerfile, token
from tests.helpers.gitserver import make_repo
from tests.helpers.utils import sse_read

RESTARTER = Path(__file__).with_name("restarter.py")
# BuildKit prints the output of a RUN step as "#<step> <seconds> <line>".
NUMBERED_RE = re.compile(r"^#\d+ [\d.]+ (tick|burst)-(\d+)$")


def restarter_config(pidfile):
    """Hub configuration that runs the service under tests/helpers/restarter.py (see there)."""
    return (
        "c.JupyterHub.services[0]['command'] = "
        f"[sys.executable, {str(RESTARTER)!r}, {str(pidfile)!r}] + c.JupyterHub.services[0]['command']\n"
    )


def ticking_repo(git_root, ticks, interval, burst=0):
    """A repository whose build prints ``burst-1..burst`` at once, then ``tick-1..ticks``."""
    steps = []
    if burst:
        steps.append(f"RUN for i in $(seq 1 {burst}); do echo burst-$i; done")
    steps.append(
        f"RUN for i in $(seq 1 {ticks}); do echo tick-$i; "
        f"if [ $((i % 5)) = 0 ]; then echo; fi; sleep {interval}; done"
    )
    name = f"logkill-{token()}"
    make_repo(git_root, name, {"Dockerfile": dockerfile(*steps)})
    return name


async def follow_reconnecting(user, uid, into, timeout=240, read_timeout=2.0, ends=None, times=None):
    """Append ``(id, data)`` of ``uid``'s log to ``into`` until its final event.

    Reconnects with the last id seen whenever the stream breaks, stays
    silent for ``read_timeout`` seconds (configurable-http-proxy can keep a
    client's stream open after the service behind it died, so only silence
    tells), or the service does not answer. Appends ``(monotonic time,
    why)`` to ``ends`` for each stream that ended without the final event,
    and the arrival time of each event to ``times``. Returns how many
    streams were opened.
    """
    url = user.service_path(f"api/environments/{uid}/logs")
    deadline = time.monotonic() + timeout
    ends = [] if ends is None else ends
    last = None
    opened = 0

    def handle(event_id, data):
        nonlocal last
        into.append((event_id, data))
        if times is not None:
            times.append(time.monotonic())
        if event_id is not None:
            last = event_id
        return data["phase"] in FINAL

    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        try:
            async with user.client.stream(
                "GET", url, headers=headers, timeout=httpx.Timeout(10, read=read_timeout)
            ) as r:
                if r.status_code == 200:
                    opened += 1
                    if await sse_read(r, handle):
                        return opened
                    ends.append((time.monotonic(), "ended"))
                else:
                    await r.aread()
        except httpx.ReadTimeout:
            ends.append((time.monotonic(), "silent"))
        except httpx.HTTPError as e:
            ends.append((time.monotonic(), e.__class__.__name__))
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the log of {uid} did not end within {timeout} s")


def stored_log(db_path, uid):
    """``[(event_id, phase, message)]`` of ``uid`` in the service's SQLite file."""
    with sqlite3.connect(db_path) as db:
        return db.execute(
            "select l.event_id, l.phase, l.message from log_lines l "
            "join environments e on e.id = l.environment_id where e.uid = ? order by l.event_id",
            (uid,),
        ).fetchall()


def numbered(messages, kind):
    return [int(m[2]) for m in (NUMBERED_RE.match(x) for x in messages) if m and m[1] == kind]


def log_problems(live, stored, ticks, burst=0):
    """What is wrong with the events a client got (``live``) and the stored log; [] if nothing."""
    problems = []
    events = [(i, d["phase"], d["message"]) for i, d in live if i is not None]
    ids = [e[0] for e in events]
    if not ids or ids != list(range(ids[0], ids[0] + len(ids))):
        problems.append(f"live event ids not continuous: {ids}")
    if [(i, d["phase"]) for i, d in live if i is None]:
        problems.append(f"events without id: {[d for i, d in live if i is None]}")
    for name, got in (("live", events), ("stored", stored)):
        messages = [e[2] for e in got if e[1] == "log"]
        for kind, count in (("tick", ticks), ("burst", burst)):
            numbers = numbered(messages, kind)
            if numbers != list(range(1, count + 1)):
                repeated = sorted({n for n in numbers if numbers.count(n) > 1})
                missing = sorted(set(range(1, count + 1)) - set(numbers))
                problems.append(f"{name} {kind} lines: repeated {repeated}, missing {missing}")
        if not got or got[-1][1] != "built":
            problems.append(f"{name} log does not end built: {got[-3:]}")
    if stored != events:
        diff = [(a, b) for a, b in zip(stored, events) if a != b][:3]
        problems.append(
            f"stored log ({len(stored)} events) differs from what the client got "
            f"({len(events)}): {diff}"
        )
    return problems


def read_pid(pidfile):
    try:
        return int(Path(pidfile).read_text())
    except (OSError, ValueError):
        return None


async def kill_now(pidfile):
    """SIGKILL the service; returns the time of the kill and the pid killed."""
    pid = read_pid(pidfile)
    os.kill(pid, signal.SIGKILL)
    return time.monotonic(), pid


async def wait_restarted(pidfile, pid, timeout=60):
    """Wait until the restarter started a new service process; returns its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = read_pid(pidfile)
        if new and new != pid:
            return new
        await asyncio.sleep(0.05)
    raise TimeoutError("the service was not started again")


async def serving(hub, timeout=60):
    """Wait until the service answers through the proxy (its ``health``, no login)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                r = await client.get(f"{hub.service_url}health")
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError("the service did not answer again")


async def kill_repeatedly(hub, pidfile, rng, until, gaps=(0.2, 2.5), starting=0.2, kills=None):
    """SIGKILL the service at random moments until ``until()`` is true.

    After each start, waits until the service answers, then ``rng.uniform(*gaps)``
    seconds; but with probability ``starting`` kills it while it starts (and
    re-attaches to builds) instead. Appends ``(monotonic time, "serving" or
    "starting")`` of each kill to ``kills``, and to that the seconds until
    the service answered again when that was waited for. Returns how many
    kills there were.
    """
    kills = [] if kills is None else kills
    while not until():
        if rng.random() < starting:
            moment = "starting"
            await asyncio.sleep(rng.uniform(0, 1.5))
        else:
            moment = "serving"
            await serving(hub)
            if kills and len(kills[-1]) == 2:
                # How long the service was away after the last kill.
                kills[-1] = (*kills[-1], time.monotonic() - kills[-1][0])
            await asyncio.sleep(rng.uniform(*gaps))
        if until():
            break
        at, pid = await kill_now(pidfile)
        kills.append((at, moment))
        await wait_restarted(pidfile, pid)
    return len(kills)
