"""The 100-client load of tests/test_load_and_faults.py, beside its limit on this machine.

Run on demand (real JupyterHub + proxy + the service; all on 127.0.0.1):

    .venv/bin/python benchmarks/bench_load.py [--clients 100] [--seconds 30] [--repeat 1]

The load is the test's: ``--clients`` concurrent clients (one Python
process, one httpx client, as in the test) for ``--seconds``; half list
environments (``GET api/environments``), half replay the SSE log of a
finished build (``GET api/environments/<uid>/logs`` up to its ``built``
event). Each request is timed from its start to its last byte.

The same load goes to:

- ``service, proxy``: tljh-repo2docker through configurable-http-proxy, as
  in the test;
- ``constant, proxy``: a managed service of the same hub that answers the
  very same bytes and does no work (``benchmarks/constant_service.py``:
  HubOAuth token check, cached, then a constant): the limit, what the
  proxy, the hub's token check, Tornado and the clients themselves cost on
  this machine;
- ``service, direct`` and ``constant, direct``: the same, on the services'
  own ports (no proxy).

The database holds one built environment with a 40-line stored log (about
what the test's build prints). Prints p50/p95/p99 per kind and target, the
ratios to the limit at p95 (limit: 1.5), the load average, and how busy
the clients' own process was (near 100 % of a core: the clients, not the
servers, set the pace). Bounded:
at most 200 clients, 120 s per target.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from common import ACCESS, ROOT, percentile
from tljh_repo2docker.db import store
from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db

from tests.helpers.fixtures import _free_port, running_hub  # noqa: E402
from tests.helpers.utils import make_token  # noqa: E402

FINAL = ("built", "failed", "cancelled")


async def fill(db_path, lines=40):
    """One built environment with a stored log of ``lines`` lines; its uid."""
    engine = make_engine(f"sqlite:///{db_path}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    uid = uuid.uuid4().hex
    await store.create_environment(
        sessions, uid=uid, name="load", image_name="tljh-r2d-bench/load:main",
        repo="https://git.example.invalid/owner/load.git", ref="main", memory="2G", cpu=1.0,
        node_selector={}, build_args={}, owner="admin",
    )  # fmt: skip
    events = [(1, "status", "queued (position 1)"), (2, "status", "building")]
    for number in range(lines):
        events.append((3 + number, "log", f"#{number} 0.{number:03d} step {number} of the build: some output"))
    events.append((len(events) + 1, "built", "Built tljh-r2d-bench/load:main"))
    await store.append_log(sessions, uid, events, source_lines=lines)
    await store.update_environment(
        sessions, uid, status=store.BUILT, image_id="sha256:" + uuid.uuid4().hex * 2,
        size=700_000_000, commit="0" * 40, started=store.now(), finished=store.now(),
    )  # fmt: skip
    await engine.dispose()
    return uid


async def sse_replay(client, url):
    async with client.stream("GET", url) as r:
        if r.status_code != 200:
            return f"sse: {r.status_code}"
        async for line in r.aiter_lines():
            if line.startswith("data:") and json.loads(line[5:])["phase"] in FINAL:
                return None
    return "sse: ended without a final event"


async def load(base, uid, token, clients, seconds):
    """``{"list": [s], "sse": [s]}`` and the errors of ``clients`` clients for ``seconds``."""
    latencies = {"list": [], "sse": []}
    errors = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as client:

        async def lister():
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    r = await client.get("api/environments")
                    if r.status_code != 200 or uid not in r.text:
                        errors.append(f"list: {r.status_code}")
                except Exception as e:  # noqa: BLE001 - every failure counts
                    errors.append(f"list: {e!r}")
                latencies["list"].append(time.monotonic() - t0)

        async def follower():
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    error = await sse_replay(client, f"api/environments/{uid}/logs")
                    if error:
                        errors.append(error)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"sse: {e!r}")
                latencies["sse"].append(time.monotonic() - t0)

        started = time.monotonic()
        cpu = time.process_time()
        await asyncio.gather(
            *[lister() for _ in range(clients // 2)],
            *[follower() for _ in range(clients - clients // 2)],
        )
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu
    return latencies, errors, elapsed, cpu


async def same_bytes(service_base, uid, token, workdir):
    """Write what the service answers, for the constant service to send."""
    headers = {"Authorization": f"token {token}", "Accept-Encoding": "identity"}
    async with httpx.AsyncClient(base_url=service_base, headers=headers, timeout=60) as client:
        r = await client.get("api/environments")
        r.raise_for_status()
        (workdir / "constant-list.json").write_bytes(r.content)
        r = await client.get(f"api/environments/{uid}/logs")
        r.raise_for_status()
        (workdir / "constant-log.txt").write_bytes(r.content)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the targets (at most 5)")
    args = parser.parse_args()
    clients = max(2, min(args.clients, 200))
    seconds = max(1.0, min(args.seconds, 120.0))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        uid = asyncio.run(fill(workdir / "tljh_repo2docker.sqlite"))
        constant_port = _free_port()
        extra = f"""
c.JupyterHub.services.append({{
    "name": "constant",
    "url": "http://127.0.0.1:{constant_port}",
    "command": [{sys.executable!r}, {str(ROOT / "benchmarks" / "constant_service.py")!r},
                "--port={constant_port}",
                "--list-file={workdir / 'constant-list.json'}",
                "--log-file={workdir / 'constant-log.txt'}"],
    "oauth_no_confirm": True,
}})
"""
        with running_hub(workdir, extra_config=extra) as hub_info:
            token = make_token(hub_info, "admin", [ACCESS, "access:services!service=constant"])
            service_proxy = hub_info.service_url
            service_direct = f"http://127.0.0.1:{hub_info.service_port}/services/tljh_repo2docker/"
            constant_proxy = f"{hub_info.url}services/constant/"
            constant_direct = f"http://127.0.0.1:{constant_port}/services/constant/"
            try:
                asyncio.run(same_bytes(service_direct, uid, token, workdir))
            except httpx.HTTPError:
                print((workdir / "jupyterhub.log").read_text(errors="replace")[-4000:])
                raise
            targets = {
                "constant, proxy": constant_proxy,
                "service, proxy": service_proxy,
                "service, direct": service_direct,
                "constant, direct": constant_direct,
            }
            results = {name: {"list": [], "sse": []} for name in targets}
            errors = {name: [] for name in targets}
            for number in range(min(max(args.repeat, 1), 5)):
                # Alternate the order, so that no target always follows another.
                names = list(targets) if number % 2 == 0 else list(reversed(targets))
                for name in names:
                    latencies, failed, elapsed, cpu = asyncio.run(
                        load(targets[name], uid, token, clients, seconds)
                    )
                    for kind in latencies:
                        results[name][kind] += latencies[kind]
                    errors[name] += failed
                    count = sum(len(v) for v in latencies.values())
                    print(f"round {number}, {name}: {count} requests in {elapsed:.1f} s, "
                          f"{len(failed)} errors, clients' own CPU {cpu / elapsed:.0%} of a core, "
                          f"load average {os.getloadavg()[0]:.2f}")
    load_average = os.getloadavg()
    print(f"\n{clients} clients, {seconds:g} s per target and round; load average at the end "
          f"{load_average[0]:.2f} {load_average[1]:.2f} {load_average[2]:.2f}")
    print(f"  {'target':18s} {'kind':5s} {'requests':>9s} {'p50':>9s} {'p95':>9s} {'p99':>9s}  errors")
    for name in targets:
        for kind, values in results[name].items():
            print(
                f"  {name:18s} {kind:5s} {len(values):9d} "
                + " ".join(f"{percentile(values, q) * 1000:7.0f}ms" for q in (50, 95, 99))
                + f"  {len([e for e in errors[name] if e.startswith(kind)])}"
            )
    print("\np95 against the limit (constant, proxy; same proxy and hub, no work), limit 1.5:")
    for kind in ("list", "sse"):
        limit = percentile(results["constant, proxy"][kind], 95)
        for name in ("service, proxy", "service, direct"):
            value = percentile(results[name][kind], 95)
            ratio = value / limit
            print(f"  {kind:4s} {name:16s} p95 {value * 1000:6.0f} ms / limit {limit * 1000:6.0f} ms "
                  f"= {ratio:.2f}  {'OK' if ratio <= 1.5 else 'MISSED'}")
        direct_limit = percentile(results["constant, direct"][kind], 95)
        value = percentile(results["service, direct"][kind], 95)
        print(f"  {kind:4s} service, direct against constant, direct: {value * 1000:.0f} / "
              f"{direct_limit * 1000:.0f} ms = {value / direct_limit:.2f}")
    total_errors = sum(len(v) for v in errors.values())
    if total_errors:
        print(f"\nerrors: {total_errors}; first: {[e for v in errors.values() for e in v][:5]}")


if __name__ == "__main__":
    main()
