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

Each path is timed three ways: ``plain`` (``Accept-Encoding: identity``),
``gzip`` (what browsers and httpx send: the service sends its compressed
answer, which it makes once per change in a thread) and ``revalidated``
(``If-None-Match`` with the answer's ``Etag``: a 304, what a client that
polls the list gets while nothing changed). ``plain, curl``: the plain GET
by curl (its own ``time_total``), a client that reads the 6 MiB in a few
ms where httpx takes longer than the service: what the service costs.

The service reuses its encoded answer until the next write, so most of
these requests send a ready answer; ``after a write`` times the first GET
after a change, ``--rounds`` times each: after a DELETE of one environment,
and after a status update (``POST .../rebuild``: the environment goes
``queued``; its build of an unreachable repository then fails at once, and
the next round waits for that).

Prints p50/p95 per size and path with the limits (first GET after a write
p95 <= 50 ms and steady p95 <= 5 ms, both at 10,000 direct) and their
ratios, the load average, and the service's resident memory (VmRSS now,
VmHWM peak) idle after start and after serving the lists.

The filled database of each size is kept in the system's temporary
directory (``tljh-r2d-bench-<size>-<schema>.sqlite``) and copied for the
next runs: filling 10,000 takes over a minute.
"""

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from common import ADMIN_SCOPES, ROOT, fill_db, ms, percentile, rss, service_pid

from tests.helpers.fixtures import running_hub  # noqa: E402
from tests.helpers.utils import make_token  # noqa: E402


ENCODINGS = {"plain": "identity", "gzip": "gzip", "revalidated": "gzip"}


async def measure(url, token, requests, how, warmup=10):
    """Times of ``requests`` GETs one at a time; ``how``: plain, gzip or revalidated."""
    headers = {"Authorization": f"token {token}", "Accept-Encoding": ENCODINGS[how]}
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        if how == "revalidated":
            r = await client.get(url, headers=headers)
            for _ in range(20):  # the compressed answer is made in the background
                if r.headers.get("content-encoding") == "gzip":
                    break
                await asyncio.sleep(0.1)
                r = await client.get(url, headers=headers)
            headers["If-None-Match"] = r.headers["etag"]
        for number in range(warmup + requests):
            start = time.perf_counter()
            r = await client.get(url, headers=headers)
            elapsed = time.perf_counter() - start
            if r.status_code != 304:
                r.raise_for_status()
            if number >= warmup:
                times.append(elapsed)
        if how == "revalidated":
            assert r.status_code == 304, r.status_code
            return times, None, 0
        count = len(r.json()["environments"])
        sent = r.num_bytes_downloaded
    return times, count, sent


def measure_curl(url, token, requests, warmup=10):
    """Times of ``requests`` plain GETs by curl (a client that reads 6 MiB in
    a few ms; httpx in Python takes longer than the service to read them),
    from curl's own ``time_total``; None without curl."""
    if shutil.which("curl") is None:
        return None
    times = []
    for number in range(warmup + requests):
        out = subprocess.run(
            ["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{time_total}",
             "-H", f"Authorization: token {token}", "-H", "Accept-Encoding: identity", url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        if number >= warmup:
            times.append(float(out))
    return times


async def _wait_idle(client, base_url, headers, uid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await client.get(f"{base_url}api/environments/{uid}", headers=headers)
        if r.json()["status"] not in ("queued", "building"):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the rebuild of {uid} did not end in {timeout} s")


async def measure_after_changes(base_url, token, rounds, kind):
    """The first GET after a write (only what changed is read again), ``rounds`` times.

    ``kind``: ``delete`` (one environment less) or ``status`` (a rebuild: its
    status goes to queued).
    """
    headers = {"Authorization": f"token {token}", "Accept-Encoding": "identity"}
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        listed = (await client.get(f"{base_url}api/environments", headers=headers)).json()
        envs = listed["environments"]
        targets = envs[:rounds] if kind == "delete" else envs[-rounds:]
        for env in targets:
            if kind == "delete":
                r = await client.delete(f"{base_url}api/environments/{env['uid']}", headers=headers)
                assert r.status_code == 204, r.text
            else:
                r = await client.post(
                    f"{base_url}api/environments/{env['uid']}/rebuild", headers=headers, json={}
                )
                assert r.status_code == 202, r.text
            start = time.perf_counter()
            r = await client.get(f"{base_url}api/environments", headers=headers)
            times.append(time.perf_counter() - start)
            r.raise_for_status()
            if kind == "status":
                await _wait_idle(client, base_url, headers, env["uid"])
                # Its build's writes (building, failed) are read by this GET, not the next round's.
                await client.get(f"{base_url}api/environments", headers=headers)
    return times


def filled_db(count, target):
    """Copy a database with ``count`` environments to ``target``, filling it once per schema."""
    versions = sorted(p.name for p in (ROOT / "alembic" / "versions").glob("*.py"))
    schema = hashlib.sha1("\n".join(versions).encode()).hexdigest()[:10]
    kept = Path(tempfile.gettempdir()) / f"tljh-r2d-bench-{count}-{schema}.sqlite"
    if not kept.exists():
        partial = kept.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        asyncio.run(fill_db(partial, count))
        partial.rename(kept)
    shutil.copyfile(kept, target)


def bench_size(count, requests, rounds):
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        filled_db(count, workdir / "tljh_repo2docker.sqlite")
        fill_seconds = time.perf_counter() - started
        with running_hub(workdir) as hub_info:
            pid = service_pid(hub_info)
            time.sleep(2)
            idle = rss(pid)
            token = make_token(hub_info, "admin", ADMIN_SCOPES)
            results = {}
            sizes = {}
            for path, url in (
                ("direct", f"http://127.0.0.1:{hub_info.service_port}/services/tljh_repo2docker/api/environments"),
                ("proxy", f"{hub_info.service_url}api/environments"),
            ):
                for how in ENCODINGS:
                    times, listed, sent = asyncio.run(measure(url, token, requests, how))
                    assert listed in (None, count), (listed, count)
                    results[f"{path}, {how}"] = times
                    sizes[how] = sent
            curl = measure_curl(
                f"http://127.0.0.1:{hub_info.service_port}/services/tljh_repo2docker/api/environments",
                token, requests,
            )
            if curl is not None:
                results["direct, plain, curl"] = curl
            after = rss(pid)
            if count:
                direct = f"http://127.0.0.1:{hub_info.service_port}/services/tljh_repo2docker/"
                for kind in ("delete", "status"):
                    results[f"direct, after a {kind}"] = asyncio.run(
                        measure_after_changes(direct, token, min(rounds, count // 2), kind)
                    )
    print(
        f"\n{count} environments (database ready in {fill_seconds:.1f} s; answer "
        f"{sizes['plain'] / 1024:.0f} KiB plain, {sizes['gzip'] / 1024:.0f} KiB gzip)"
    )
    for label, times in results.items():
        print(
            f"  GET api/environments {label:24s} n={len(times)} p50={ms(percentile(times, 50))} "
            f"p95={ms(percentile(times, 95))} mean={ms(statistics.mean(times))}"
        )
    print(f"  service RSS idle after start: {idle[0]:.1f} MiB")
    print(f"  service RSS after the requests: {after[0]:.1f} MiB (peak {after[1]:.1f} MiB)")
    return results


def _verdict(label, value, limit):
    ratio = value / limit
    print(
        f"  {label:48s} {ms(value):>10s}  limit {ms(limit):>8s}  ratio {ratio:.2f}  "
        + ("OK" if value <= limit else "MISSED")
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20, help="GETs after each kind of write")
    args = parser.parse_args()
    results = {
        count: bench_size(count, min(args.requests, 1000), min(args.rounds, 100))
        for count in args.sizes
    }
    largest = max(args.sizes)
    figures = results[largest]
    load = os.getloadavg()
    print(f"\nat {largest} environments (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}):")
    for kind in ("delete", "status"):
        if f"direct, after a {kind}" in figures:
            _verdict(
                f"first GET after a {kind}, direct, p95",
                percentile(figures[f"direct, after a {kind}"], 95),
                0.050,
            )
    for how in list(ENCODINGS) + ["plain, curl"]:
        if f"direct, {how}" in figures:
            _verdict(
                f"steady GET, direct, {how}, p95", percentile(figures[f"direct, {how}"], 95), 0.005
            )


if __name__ == "__main__":
    main()
