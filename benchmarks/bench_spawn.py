"""Spawn time: POST api/servers through the service vs a plain DockerSpawner.

Run on demand (real Docker, JupyterHub, proxy; everything on 127.0.0.1 and the
project's own Docker network):

    .venv/bin/python benchmarks/bench_spawn.py [--rounds 5]

Prints, for each path, the time from the request to the server answering
``GET /user/<name>/<server>/api/status`` through the proxy (p50/p95/mean), and
the ratio service / plain DockerSpawner (target: under 1.05).

1. A hub with Repo2DockerSpawner and the service builds an environment, then
   starts a named server from it through ``POST api/servers``, ``--rounds`` times.
2. A second hub with a plain ``dockerspawner.DockerSpawner`` whose ``image`` is
   that same built image starts the same number of named servers through the
   hub's own REST API.
"""

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

import common
from common import time_starts, wait_answering

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.fixtures import SINGLEUSER_IMAGE, running_hub  # noqa: E402
from tests.helpers.gitserver import GitServer, make_repo  # noqa: E402
from tests.helpers.utils import HubUser, admin_api, make_token, remove_test_images  # noqa: E402


def wait_gone(hub_info, user, server):
    with admin_api(hub_info) as api:
        for _ in range(600):
            model = api.get(f"users/{user}").json()
            if server not in model.get("servers", {}):
                return
            time.sleep(0.1)


async def through_service(hub_info, rounds):
    admin = await HubUser.login(hub_info, "admin")
    root = Path(tempfile.mkdtemp())
    git = GitServer(root).start()
    make_repo(root, "bench", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"})
    env = await admin.create_env({"repo": git.url("bench"), "name": "bench-env"})
    env = await admin.wait_env(env["uid"], {"built"})
    token = make_token(hub_info, "admin", ["access:servers!user=admin"])
    times = []
    async with httpx.AsyncClient(base_url=hub_info.url, timeout=30) as client:
        for i in range(rounds):
            name = f"svc{i}"
            start = time.perf_counter()
            r = await admin.api("POST", "api/servers", json={"name": name, "environment": "bench-env"})
            assert r.status_code == 202, r.text
            await wait_answering(client, f"user/admin/{name}/api/status", token, timeout=120)
            times.append(time.perf_counter() - start)
            await admin.api("DELETE", f"api/servers/{name}", params={"remove": "true"})
            wait_gone(hub_info, "admin", name)
    await admin.close()
    git.stop()
    return env["image_name"], times


async def through_plain_dockerspawner(hub_info, rounds):
    async def after(name):
        with admin_api(hub_info) as api:
            api.request("DELETE", f"users/admin/servers/{name}", json={"remove": True})
        wait_gone(hub_info, "admin", name)

    names = [f"plain{i}" for i in range(rounds)]
    return await time_starts(hub_info, names, {}, after, timeout=120, client_timeout=30)


def summary(label, times):
    common.summary(label, times, width=32, high=95)


def main():
    args = common.rounds_args(
        __doc__.splitlines()[0], warmup_help="first spawns of each path left out (cold caches)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        with running_hub(Path(tmp)) as hub_info:
            image, service_times = asyncio.run(
                through_service(hub_info, args.rounds + args.warmup)
            )
    plain_config = f"""
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = "{image}"
c.DockerSpawner.allowed_images = []
"""
    with tempfile.TemporaryDirectory() as tmp:
        with running_hub(Path(tmp), extra_config=plain_config) as hub_info:
            plain_times = asyncio.run(
                through_plain_dockerspawner(hub_info, args.rounds + args.warmup)
            )
    service_times = service_times[args.warmup :]
    plain_times = plain_times[args.warmup :]
    remove_test_images()
    summary("service POST api/servers", service_times)
    summary("plain DockerSpawner (hub API)", plain_times)
    ratio = statistics.median(service_times) / statistics.median(plain_times)
    print(f"ratio (median service / median plain) = {ratio:.3f}  (target < 1.05)")


if __name__ == "__main__":
    main()
