"""Latency of ``GET api/environments`` and the service's memory, with many environments.

Run on demand (real JupyterHub + proxy + the service; all on 127.0.0.1):

    .venv/bin/python benchmarks/bench_api.py [--sizes 0 1000 10000] [--requests 200]

For each size, the service's SQLite database is filled beforehand through
``tljh_repo2docker.db.store`` with that many built environments, then a real
JupyterHub starts the service. A user API token with the service's admin
scope authenticates the requests (HubOAuth checks it once with the hub, then
caches it, as for any client). Requests go one at a time, after a warm-up:

- ``direct``: straight to the service's port on 127.0.0.1;
- ``proxy``: through configurable-http-proxy, the way a browser comes.

The service reuses its encoded answer until the next write, so most of
these requests send a ready answer; ``direct, after a write`` times the GET
that follows a DELETE of one environment (the list is loaded and encoded
again), five times.

Prints p50/p95 per size and path (target: p95 < 50 ms at 10,000 direct) and
the service's resident memory (VmRSS now, VmHWM peak) idle after start and
after serving the lists.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from common import ADMIN_SCOPES, fill_db, ms, percentile, rss, service_pid

from tests.fixtures import running_hub  # noqa: E402
from tests.utils import make_token  # noqa: E402


async def measure(url, token, requests, warmup=10):
    headers = {"Authorization": f"token {token}"}
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        for number in range(warmup + requests):
            start = time.perf_counter()
            r = await client.get(url, headers=headers)
            elapsed = time.perf_counter() - start
            r.raise_for_status()
            if number >= warmup:
                times.append(elapsed)
        count = len(r.json()["environments"])
        size = len(r.content)
    return times, count, size


async def measure_after_changes(base_url, token, rounds=5):
    """GET right after a write (the list is made again): delete one environment, then list."""
    headers = {"Authorization": f"token {token}"}
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        listed = (await client.get(f"{base_url}api/environments", headers=headers)).json()
        for env in listed["environments"][:rounds]:
            r = await client.delete(f"{base_url}api/environments/{env['uid']}", headers=headers)
            assert r.status_code == 204, r.text
            start = time.perf_counter()
            r = await client.get(f"{base_url}api/environments", headers=headers)
            times.append(time.perf_counter() - start)
            r.raise_for_status()
    return times


def bench_size(count, requests):
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        asyncio.run(fill_db(workdir / "tljh_repo2docker.sqlite", count))
        fill_seconds = time.perf_counter() - started
        with running_hub(workdir) as hub_info:
            pid = service_pid(hub_info)
            time.sleep(2)
            idle = rss(pid)
            token = make_token(hub_info, "admin", ADMIN_SCOPES)
            results = {}
            for label, url in (
                ("direct", f"http://127.0.0.1:{hub_info.service_port}/services/tljh_repo2docker/api/environments"),
                ("proxy", f"{hub_info.service_url}api/environments"),
            ):
                times, listed, size = asyncio.run(measure(url, token, requests))
                assert listed == count, (listed, count)
                results[label] = times
            after = rss(pid)
            if count:
                direct = f"http://127.0.0.1:{hub_info.service_port}/services/tljh_repo2docker/"
                results["direct, after a write"] = asyncio.run(
                    measure_after_changes(direct, token)
                )
    print(f"\n{count} environments (database filled in {fill_seconds:.1f} s; response {size / 1024:.0f} KiB)")
    for label, times in results.items():
        print(
            f"  GET api/environments {label:22s} n={len(times)} p50={ms(percentile(times, 50))} "
            f"p95={ms(percentile(times, 95))} mean={ms(statistics.mean(times))}"
        )
    print(f"  service RSS idle after start: {idle[0]:.1f} MiB")
    print(f"  service RSS after the requests: {after[0]:.1f} MiB (peak {after[1]:.1f} MiB)")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    results = {count: bench_size(count, min(args.requests, 1000)) for count in args.sizes}
    largest = max(args.sizes)
    p95 = percentile(results[largest]["direct"], 95)
    verdict = "OK" if p95 < 0.05 else "MISSED"
    print(f"\np95 direct at {largest}: {ms(p95)} (target < 50 ms): {verdict}")


if __name__ == "__main__":
    main()
