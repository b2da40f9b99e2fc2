"""What the benchmarks share: percentiles and their summary line, the service's
process, a filled database, waiting for a server to answer through the proxy.

Every benchmark starts a real JupyterHub + configurable-http-proxy with the
service as a managed service (``tests.helpers.fixtures.running_hub``), so requests go
through HubOAuth token checks like a client's; all traffic stays on 127.0.0.1.
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.utils import admin_api, make_token  # noqa: E402
from tljh_repo2docker.db import store  # noqa: E402
from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db  # noqa: E402

ACCESS = "access:services!service=tljh_repo2docker"
# The hub user "admin" is a hub admin, which is what makes it an admin of the service.
ADMIN_SCOPES = [ACCESS]


def percentile(values, q):
    """Nearest-rank percentile of ``values`` (q in 0..100)."""
    values = sorted(values)
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def rounds_args(description, warmup_help):
    """The options of a benchmark timing server starts: ``--rounds`` (5) and ``--warmup`` (1)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help=warmup_help)
    return parser.parse_args()


def summary(label, times, width, high):
    """Print ``label`` (padded to ``width``) with the count, p50, p``high`` and mean of ``times`` (seconds)."""
    print(
        f"{label:{width}s} n={len(times)} p50={percentile(times, 50):.3f}s "
        f"p{high}={percentile(times, high):.3f}s mean={statistics.mean(times):.3f}s"
    )


async def wait_answering(client, url, token, timeout):
    """Poll ``url`` (through ``client``, with ``token``) until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = await client.get(url, headers={"Authorization": f"token {token}"})
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(url)


def service_pid(hub_info):
    """The pid of the service process JupyterHub started."""
    result = subprocess.run(
        ["pgrep", "-f", f"tljh_repo2docker --port={hub_info.service_port}"],
        capture_output=True,
        text=True,
    )
    pids = [int(p) for p in result.stdout.split()]
    if len(pids) != 1:
        raise RuntimeError(f"expected one service process, found {pids}")
    return pids[0]


def rss(pid):
    """``(current, peak)`` resident set size of ``pid`` in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


async def fill_db(db_path, count, image_prefix="tljh-r2d-bench/"):
    """Create the service's database at ``db_path`` with ``count`` built environments.

    Goes through the same store functions as the service (one short session
    per call), so it takes a while for 10,000: about 2 ms per environment.
    """
    engine = make_engine(f"sqlite:///{db_path}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    for number in range(count):
        uid = uuid.uuid4().hex
        name = f"bench-{number:05d}"
        await store.create_environment(
            sessions,
            uid=uid,
            name=name,
            image_name=f"{image_prefix}{name}:main",
            repo=f"https://git.example.invalid/owner/{name}.git",
            ref="main",
            memory="2G",
            cpu=1.0,
            node_selector={},
            build_args={},
            owner="admin",
        )
        await store.update_environment(
            sessions,
            uid,
            status=store.BUILT,
            image_id="sha256:" + uuid.uuid4().hex * 2,
            size=700_000_000,
            commit=uuid.uuid4().hex[:40] + "0" * 8,
            started=store.now(),
            finished=store.now(),
        )
    await engine.dispose()


def run(coro):
    return asyncio.run(coro)


async def time_starts(hub_info, names, body, after, timeout, client_timeout):
    """Seconds from ``POST users/admin/servers/<name>`` (the hub's REST API, with
    ``body``) to ``GET /user/admin/<name>/api/status`` answering 200 through the
    proxy (within ``timeout``), for each of ``names`` in turn; ``await
    after(name)`` removes the server before the next one starts."""
    token = make_token(hub_info, "admin", ["access:servers!user=admin"])
    times = []
    async with httpx.AsyncClient(base_url=hub_info.url, timeout=client_timeout) as client:
        for name in names:
            with admin_api(hub_info) as api:
                started = time.perf_counter()
                r = api.post(f"users/admin/servers/{name}", json=body)
                if r.status_code not in (201, 202):
                    raise RuntimeError(f"start {name}: {r.status_code} {r.text}")
            await wait_answering(client, f"user/admin/{name}/api/status", token, timeout)
            times.append(time.perf_counter() - started)
            await after(name)
    return times
