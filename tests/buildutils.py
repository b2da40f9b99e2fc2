"""Helpers for the tests that build environments through the service.

Docker is looked at with the ``docker`` command line, the way an operator
would, so that the tests check what is really on the engine.
"""

import asyncio
import json
import subprocess
import time
import uuid

from tests.fixtures import SINGLEUSER_IMAGE

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

    async def run():
        async with user.client.stream("GET", url, headers=headers, timeout=timeout) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            assert r.headers["content-type"].startswith("text/event-stream")
            event_id, data = None, None
            async for line in r.aiter_lines():
                if raw is not None:
                    raw.append(line)
                if line.startswith("id:"):
                    event_id = int(line[3:].strip())
                elif line.startswith("data:"):
                    data = json.loads(line[5:].strip())
                elif line == "" and data is not None:
                    events.append((event_id, data))
                    if data.get("phase") in FINAL:
                        return
                    if stop_after is not None and len(events) >= stop_after:
                        return
                    event_id, data = None, None

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
