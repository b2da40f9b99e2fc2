"""``GET api/environments`` for a user in 50 groups, with 10,000 environments of 1,000 owners.

Run on demand (real JupyterHub + proxy + the service; all on 127.0.0.1):

    .venv/bin/python benchmarks/bench_sharing.py [--environments 10000] [--owners 1000] [--requests 200]

The service's SQLite database is filled beforehand (one bulk insert) with
built environments owned by ``--owners`` users, each shared in one of four
ways: with everyone (1 in 10), with a few users, with a few of 200 groups,
or with no one. The hub gets the user ``bench-student`` in 50 of those
groups, who lists through an API token, straight to the service's port:

- ``repeated``: the same GET again (the user's answer is kept until a write);
- ``after a write``: an admin changes one environment's sharing, then the
  student lists: the changed environment is encoded again and every kept
  piece is checked against the student (``access.Access.allows``).

Prints p50/p95 of each (target: p95 <= 50 ms).
"""

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from common import ACCESS, ms, percentile

from tests.helpers.fixtures import running_hub  # noqa: E402
from tests.helpers.utils import admin_api, make_token  # noqa: E402
from tljh_repo2docker.db.models import Environment, utcnow  # noqa: E402
from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db  # noqa: E402

STUDENT = "bench-student"
GROUPS = [f"bench-group-{n:03d}" for n in range(200)]


async def fill(db_path, count, owners, seed=1):
    rng = random.Random(seed)
    engine = make_engine(f"sqlite:///{db_path}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    users = [f"bench-user-{n:04d}" for n in range(owners)]
    rows = []
    for number in range(count):
        kind = rng.random()
        if kind < 0.1:
            sharing = {"everyone": True, "users": [], "groups": []}
        elif kind < 0.4:
            sharing = {"everyone": False, "users": sorted(rng.sample(users, 3)), "groups": []}
        elif kind < 0.8:
            sharing = {"everyone": False, "users": [], "groups": sorted(rng.sample(GROUPS, 3))}
        else:
            sharing = {"everyone": False, "users": [], "groups": []}
        name = f"bench-{number:05d}"
        rows.append(
            Environment(
                uid=uuid.uuid4().hex, name=name, image_name=f"tljh-r2d-bench/{name}:main",
                repo=f"https://git.example.invalid/owner/{name}.git", ref="main", provider="git",
                status="built", image_id=f"sha256:{number:064x}", size=100_000_000, memory="2G",
                cpu=1.0, node_selector={}, build_args={}, owner=rng.choice(users), sharing=sharing,
                created=utcnow(), build_number=1, source_lines=0, last_event_id=0,
            )
        )
    async with sessions() as session:
        session.add_all(rows)
        await session.commit()
    await engine.dispose()


async def measure(base, student, admin, requests, writes):
    s_headers = {"Authorization": f"token {student}"}
    a_headers = {"Authorization": f"token {admin}"}
    repeated, after_write = [], []
    async with httpx.AsyncClient(timeout=60) as client:
        for number in range(10 + requests):
            start = time.perf_counter()
            r = await client.get(f"{base}api/environments", headers=s_headers)
            elapsed = time.perf_counter() - start
            r.raise_for_status()
            if number >= 10:
                repeated.append(elapsed)
        visible = len(r.json()["environments"])
        everything = (await client.get(f"{base}api/environments", headers=a_headers)).json()
        for env in everything["environments"][:writes]:
            body = {"sharing": {"everyone": not env["sharing"]["everyone"]}}
            r = await client.patch(f"{base}api/environments/{env['uid']}", json=body, headers=a_headers)
            r.raise_for_status()
            start = time.perf_counter()
            r = await client.get(f"{base}api/environments", headers=s_headers)
            after_write.append(time.perf_counter() - start)
            r.raise_for_status()
    return repeated, after_write, visible


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--environments", type=int, default=10000)
    parser.add_argument("--owners", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--writes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        asyncio.run(fill(workdir / "tljh_repo2docker.sqlite", args.environments, args.owners))
        with running_hub(workdir) as hub_info:
            with admin_api(hub_info) as api:
                api.post("users", json={"usernames": [STUDENT]}).raise_for_status()
                for group in GROUPS[:50]:
                    api.post(f"groups/{group}")
                    api.post(f"groups/{group}/users", json={"users": [STUDENT]}).raise_for_status()
            student = make_token(hub_info, STUDENT, [ACCESS])
            admin = make_token(hub_info, "admin", [ACCESS])
            base = f"http://127.0.0.1:{hub_info.service_port}/services/tljh_repo2docker/"
            repeated, after_write, visible = asyncio.run(
                measure(base, student, admin, args.requests, args.writes)
            )
    print(
        f"\n{args.environments} environments of {args.owners} owners; {STUDENT} in 50 groups "
        f"sees {visible}"
    )
    for label, times in (("repeated", repeated), ("after a write", after_write)):
        print(
            f"  GET api/environments {label:14s} n={len(times)} p50={ms(percentile(times, 50))} "
            f"p95={ms(percentile(times, 95))} mean={ms(statistics.mean(times))}"
        )
    p95 = max(percentile(repeated, 95), percentile(after_write, 95))
    print(f"\np95 (worst of the two): {ms(p95)} (target <= 50 ms): {'OK' if p95 <= 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
