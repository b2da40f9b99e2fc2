"""The service dies mid-build (SIGKILL) and JupyterHub starts it again.

Build containers outlive the service. After the restart, the service
re-attaches to a build that still runs (its log goes on where it stopped,
without repeats, and the result is recorded) and marks failed a build whose
container vanished while it was down.

JupyterHub notices a dead managed service when it polls it (every 30 s), so
this test waits up to about a minute for the service to come back.
"""

import asyncio
import os
import re
import signal
import time

import httpx
import pytest

from tests.helpers.buildutils import FINAL, build_containers, build_containers_gone, docker, dockerfile, image_info, token, wait_building
from tests.helpers.gitserver import head_commit, make_repo
from tests.helpers.processes import service_pids
from tests.helpers.utils import sse_read

pytestmark = [pytest.mark.hub, pytest.mark.docker]

# Long enough that the build still runs after JupyterHub restarted the service.
SLEEP = 45


async def follow(user, uid, into, last_event_id=None):
    """Append ``(id, data)`` SSE events to ``into`` until the final one or the stream breaks."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    url = user.service_path(f"api/environments/{uid}/logs")
    try:
        async with user.client.stream("GET", url, headers=headers, timeout=300) as r:
            if r.status_code != 200:
                return f"status {r.status_code}"
            if await sse_read(r, lambda i, data: into.append((i, data)) or data["phase"] in FINAL):
                return "final"
    except httpx.HTTPError as e:
        return f"broken: {e.__class__.__name__}"
    return "ended"


async def test_restart_mid_build_reattaches_and_fails_the_vanished(hub, admin, git_root, git_server):
    lines = "; ".join(
        ["echo before-1", "echo before-2", "echo before-3", f"sleep {SLEEP}", "echo after-1", "echo after-2"]
    )
    survivor_repo = f"restart-{token()}"
    make_repo(git_root, survivor_repo, {"Dockerfile": dockerfile(f"RUN {lines}")})
    vanished_repo = f"vanish-{token()}"
    make_repo(git_root, vanished_repo, {"Dockerfile": dockerfile("RUN echo vanish-start; sleep 300")})

    survivor = await admin.create_env({"repo": git_server.url(survivor_repo), "name": survivor_repo})
    vanished = await admin.create_env({"repo": git_server.url(vanished_repo), "name": vanished_repo})
    uid, gone = survivor["uid"], vanished["uid"]
    try:
        await wait_building(admin, uid, contains="before-3")
        await wait_building(admin, gone, contains="vanish-start")

        # A client follows the build live when the service dies.
        before = []
        watcher = asyncio.ensure_future(follow(admin, uid, before))
        deadline = time.monotonic() + 30
        while not any("before-3" in data["message"] for _, data in before):
            assert time.monotonic() < deadline and not watcher.done(), before
            await asyncio.sleep(0.1)
        # Let the service store what the client saw (it writes every 0.25 s).
        await asyncio.sleep(1)

        (pid,) = service_pids(hub)
        os.kill(pid, signal.SIGKILL)
        (container,) = build_containers(gone)
        docker("rm", "-f", container)
        assert build_containers(uid), "the build container must outlive the service"
        # configurable-http-proxy may keep the client's connection open after
        # the service died; a browser's EventSource would reconnect the same way.
        try:
            await asyncio.wait_for(watcher, 3)
        except asyncio.TimeoutError:
            pass
        assert before[-1][1]["phase"] == "log"

        # JupyterHub starts the service again.
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, "the service did not come back"
            pids = service_pids(hub)
            if pids and pids != [pid]:
                try:
                    r = await admin.api("GET", f"api/environments/{uid}")
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            await asyncio.sleep(0.5)
        restarted_at = time.monotonic()
        env = r.json()
        assert env["status"] == "building", env

        # The client comes back with the last id it saw and gets the rest.
        last_id = before[-1][0]
        after = []
        assert await asyncio.wait_for(follow(admin, uid, after, last_event_id=last_id), 240) == "final"
        ids = [event_id for event_id, _ in before + after]
        assert ids == list(range(ids[0], ids[0] + len(ids))), ids
        assert after[0][0] == last_id + 1
        assert after[0][1] == {"phase": "status", "message": "re-attached after a service restart"}
        messages = [data["message"] for _, data in before + after]
        for line in ("before-1", "before-2", "before-3", "after-1", "after-2"):
            # BuildKit prints "#<step> <seconds> <output>".
            printed = [m for m in messages if re.fullmatch(rf"#\d+ [\d.]+ {line}", m)]
            assert len(printed) == 1, (line, messages)
        assert not any("before-" in data["message"] for _, data in after)
        assert after[-1][1]["phase"] == "built", after[-5:]
        # The rest of the log came live, not all at once at the end.
        assert time.monotonic() - restarted_at > 1

        env = await admin.get_env(uid)
        assert env["status"] == "built", env
        assert env["commit"] == head_commit(git_root, survivor_repo)
        assert image_info(env["image_name"])["Config"]["Labels"]["tljh_repo2docker.uid"] == uid
        assert build_containers_gone(uid)
        # The stored log is the same as what the client saw.
        replay = []
        assert await follow(admin, uid, replay) == "final"
        assert replay == before + after

        env = await admin.get_env(gone)
        assert env["status"] == "failed", env
        assert "stopped while the service was not running" in env["error"], env["error"]
        assert image_info(env["image_name"]) is None
        replay = []
        assert await follow(admin, gone, replay) == "final"
        assert replay[-1][1]["phase"] == "failed"
        assert any("vanish-start" in data["message"] for _, data in replay)
    finally:
        for target in (uid, gone):
            await admin.api("POST", f"api/environments/{target}/cancel")
            await admin.delete_env(target)
