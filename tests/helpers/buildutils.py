"""Helpers for the tests that build environments through the service.

Docker is looked at with the ``docker`` command line, the way an operator
would, so that the tests check what is really on the engine.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid

from tests.helpers.fixtures import SINGLEUSER_IMAGE
from tests.helpers.utils import sse_read

FINAL = {"built", "failed", "cancelled"}


def token():
    return uuid.uuid4().hex[:10]


def dockerfile(*lines):
    """A Dockerfile on the single-user image whose steps are never cached.

    BuildKit reuses the steps of an earlier build with the same Dockerfile,
    which would make a "slow" build finish at once; the ENV line makes every
    Dockerfile (and so every step after it) new.
    """
    return "\n".join([f"FROM {SINGLEUSER_IMAGE}", f"ENV TEST_RUN={uuid.uuid4().hex}", *lines, ""])


def docker(*args, check=True):
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr}")
    return result


def image_info(name_or_id):
    """``docker image inspect`` of an image, or None when there is none."""
    result = docker("image", "inspect", name_or_id, check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)[0]


def build_containers(uid):
    """Ids of the build containers of ``uid`` (running or not)."""
    result = docker("ps", "-aq", "--filter", f"label=tljh_repo2docker.build={uid}")
    return result.stdout.split()


def build_containers_gone(uid, timeout=10):
    """Whether the build containers of ``uid`` are gone, waiting up to ``timeout`` s.

    The service sends a build's final event first and removes its container
    right after (Docker takes 20-100 ms to remove one), so a client that
    looks at once may still find it.
    """
    deadline = time.monotonic() + timeout
    while build_containers(uid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def images_of(uid):
    """Ids of every image labelled as built for ``uid`` (staging names included)."""
    result = docker("images", "-q", "--no-trunc", "--filter", f"label=tljh_repo2docker.uid={uid}")
    return sorted(set(result.stdout.split()))


async def wait_for(predicate, timeout=120, interval=0.2, what="condition"):
    """Poll ``predicate`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        await asyncio.sleep(interval)


async def wait_building(user, uid, min_lines=0, contains=None, timeout=120):
    """Wait until ``uid`` is building and its stored log has what the test needs."""

    async def ready():
        env = await user.get_env(uid)
        if env["status"] in FINAL:
            log = log_text(await read_events(user, uid, timeout=10))
            raise AssertionError(f"the build ended early: {env}\n{log[-3000:]}")
        if env["status"] != "building":
            return None
        if not build_containers(uid):
            return None
        if min_lines or contains:
            events = await read_events(user, uid, timeout=5, follow=False)
            lines = [e for e in events if e[1]["phase"] == "log"]
            if len(lines) < min_lines:
                return None
            if contains and not any(contains in e[1]["message"] for e in lines):
                return None
        return env

    return await wait_for(ready, timeout=timeout, interval=0.3, what=f"build {uid} running")


async def read_events(user, uid, last_event_id=None, stop_after=None, timeout=120, follow=True, raw=None):
    """The build log of ``uid`` over SSE as ``[(id, data)]``.

    Stops at the final event, after ``stop_after`` events (then disconnects),
    or, with ``follow=False``, when no event came for a short while (for a
    snapshot of a running build). ``raw`` collects the bytes received.
    """
    headers = {}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    url = user.service_path(f"api/environments/{uid}/logs")
    events = []

    def handle(event_id, data):
        events.append((event_id, data))
        return data.get("phase") in FINAL or (stop_after is not None and len(events) >= stop_after)

    async def run():
        async with user.client.stream("GET", url, headers=headers, timeout=timeout) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            assert r.headers["content-type"].startswith("text/event-stream")
            await sse_read(r, handle, raw)

    if follow:
        await asyncio.wait_for(run(), timeout)
    else:
        try:
            await asyncio.wait_for(run(), 0.7)
        except asyncio.TimeoutError:
            pass
    return events


def log_text(events):
    return "\n".join(data["message"] for _, data in events)


# -- database and Docker agree -------------------------------------------------


def stored_environments(db_path):
    """``{uid: row}`` of the environments table of a hub's SQLite database."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "select uid, name, status, image_name, image_id, error from environments"
        ).fetchall()
    return {row["uid"]: dict(row) for row in rows}


def assert_db_and_docker_agree(hub):
    """No build is left running or queued, and Docker holds exactly what the database says.

    For every environment of ``hub``: no build container; an image (with its
    uid label) if and only if the database records one, and no other image
    labelled with its uid (no half-built or staging image). And no image
    under the hub's own prefix that the database does not know.
    """
    envs = stored_environments(hub.db_path)
    stuck = {uid: env["status"] for uid, env in envs.items() if env["status"] in ("queued", "building")}
    assert not stuck, f"environments still in progress: {stuck}"
    problems = []
    for uid, env in envs.items():
        if not build_containers_gone(uid):
            problems.append(f"{env['name']}: build container left: {build_containers(uid)}")
        wanted = [env["image_id"]] if env["image_id"] else []
        if images_of(uid) != wanted:
            problems.append(f"{env['name']} ({env['status']}): images {images_of(uid)}, database {wanted}")
        if env["image_id"]:
            image = image_info(env["image_name"])
            if image is None or image["Id"] != env["image_id"]:
                problems.append(f"{env['name']}: {env['image_name']} is not image {env['image_id']}")
    result = docker("images", "--format", "{{.Repository}}:{{.Tag}}")
    for name in result.stdout.split():
        if name.startswith(hub.image_prefix):
            labels = image_info(name)["Config"].get("Labels") or {}
            if labels.get("tljh_repo2docker.uid") not in envs:
                problems.append(f"image {name} belongs to no environment")
    assert not problems, problems


# -- the Docker engine -----------------------------------------------------------

DOCKERD_LOG = "/var/log/dockerd.log"
DOCKERD_PID_FILE = "/var/run/docker.pid"


def dockerd_pid():
    """The pid of the running dockerd (from its pid file), or None."""
    try:
        pid = int(open(DOCKERD_PID_FILE).read().strip())
        with open(f"/proc/{pid}/comm") as comm:
            if comm.read().strip() != "dockerd":
                return None
    except (OSError, ValueError):
        return None
    return pid


def docker_answers():
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_dockerd(argv=("dockerd",), environ=None, timeout=90):
    """Start dockerd the way ``./dev setup`` does, and wait until ``docker info`` works.

    ``dev`` runs ``setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &``:
    the same command, in a session of its own (``setsid --fork``, so that it
    outlives pytest), stdin from /dev/null, output to the same log file
    (appended here, so the log of the engine that ran before stays).
    """
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.run(
            ["setsid", "--fork", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
            close_fds=True,
            check=True,
        )
    deadline = time.monotonic() + timeout
    while not docker_answers():
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd did not answer within {timeout}s (see {DOCKERD_LOG})")
        time.sleep(0.5)


def stop_dockerd(timeout=90):
    """SIGTERM the running dockerd (what ``systemctl restart docker`` does) and wait for it to exit.

    Returns ``(argv, environ)`` of the stopped engine, to start it again the same way.
    """
    pid = dockerd_pid()
    assert pid, f"no dockerd found through {DOCKERD_PID_FILE}"
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [part.decode() for part in f.read().split(b"\0") if part]
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = dict(
            part.decode().split("=", 1) for part in f.read().split(b"\0") if b"=" in part
        )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd {pid} did not stop within {timeout}s")
        time.sleep(0.2)
    return argv, environ


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@contextlib.contextmanager
def dockerd_restarted_on_exit():
    """Whatever happens inside, leave a running dockerd that answers."""
    try:
        yield
    finally:
        if not docker_answers() and dockerd_pid() is None:
            start_dockerd()
