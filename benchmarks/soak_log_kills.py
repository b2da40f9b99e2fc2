"""Soak: SIGKILL the service at random moments of many steadily logging builds.

Run on demand (real JupyterHub + proxy + the service + Docker; all on 127.0.0.1):

    .venv/bin/python benchmarks/soak_log_kills.py [--rounds 10] [--seed N]

The same check as ``tests/test_log_kills.py``, for longer: the service runs
under ``tests/helpers/restarter.py`` (started again at once after each SIGKILL, as
JupyterHub does after its next poll, every 30 s). Each round builds two
repositories at once, with random output (a burst of up to 500 lines at
once, then up to 120 lines 0.05-0.5 s apart, an empty line every fifth),
and kills the service every 0.1-2 s while they run, a fifth of the times
while it starts again (and re-attaches). A client per build follows the log
through the proxy and reconnects with ``Last-Event-ID``.

Prints, per round and in total: kills, SSE connections, numbered lines
checked, problems (any line repeated or missing in what a client got or in
the stored log, ids not continuous; the exit status is 1 if there is any),
and percentiles of how long the service was away after a kill (until its
``health`` answered through the proxy) and of how long clients waited for
their next event after a kill.
"""

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
from common import percentile

from tests.helpers import logkills  # noqa: E402
from tests.helpers.fixtures import running_hub  # noqa: E402
from tests.helpers.gitserver import GitServer  # noqa: E402
from tests.helpers.utils import HubUser, remove_test_images  # noqa: E402


async def one_round(hub, git, root, rng):
    user = await HubUser.login(hub, "admin")
    builds = [
        {
            "ticks": rng.randint(20, 120),
            "interval": rng.choice([0.05, 0.1, 0.2, 0.5]),
            "burst": rng.choice([0, 0, 50, 500]),
        }
        for _ in range(2)
    ]
    uids, lives, times = [], [], []
    try:
        for build in builds:
            name = logkills.ticking_repo(root, build["ticks"], build["interval"], build["burst"])
            env = await user.create_env({"repo": git.url(name), "name": name})
            uids.append(env["uid"])
            lives.append([])
            times.append([])
        followers = [
            asyncio.ensure_future(logkills.follow_reconnecting(user, uid, live, timeout=600, times=t))
            for uid, live, t in zip(uids, lives, times)
        ]
        kills = []
        await logkills.kill_repeatedly(
            hub, hub.pidfile, rng, until=lambda: all(f.done() for f in followers),
            gaps=(0.1, 2.0), kills=kills,
        )
        opened = sum(await asyncio.gather(*followers))
        problems, waits = [], []
        for uid, live, build, arrived in zip(uids, lives, builds, times):
            stored = logkills.stored_log(hub.db_path, uid)
            found = logkills.log_problems(live, stored, build["ticks"], build["burst"])
            problems += [f"{uid}: {p}" for p in found]
            for kill in kills:
                later = [t for t in arrived if t > kill[0]]
                if later:
                    waits.append(later[0] - kill[0])
        lines = sum(b["ticks"] + b["burst"] for b in builds)
        return kills, opened, lines, problems, waits
    finally:
        for uid in uids:
            await user.api("POST", f"api/environments/{uid}/cancel")
            await user.delete_env(uid)
        await user.close()


def summary(name, values):
    if not values:
        return f"{name}: -"
    return (
        f"{name}: p50 {percentile(values, 50):.2f} s, p95 {percentile(values, 95):.2f} s, "
        f"max {max(values):.2f} s (n={len(values)})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"seed {args.seed}")
    all_kills, all_problems, all_waits = [], [], []
    total_opened = total_lines = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "git"
        root.mkdir()
        workdir = Path(tmp) / "hub"
        workdir.mkdir()
        pidfile = workdir / "service.pid"
        try:
            with GitServer(root) as git, running_hub(
                workdir, extra_config=logkills.restarter_config(pidfile)
            ) as hub:
                hub.pidfile = pidfile
                for number in range(1, args.rounds + 1):
                    started = time.monotonic()
                    kills, opened, lines, problems, waits = asyncio.run(one_round(hub, git, root, rng))
                    all_kills += kills
                    all_problems += problems
                    all_waits += waits
                    total_opened += opened
                    total_lines += lines
                    print(
                        f"round {number}: {len(kills)} kills "
                        f"({sum(1 for k in kills if k[1] == 'starting')} while starting), "
                        f"{opened} SSE connections, {lines} numbered lines, "
                        f"{len(problems)} problems, {time.monotonic() - started:.0f} s",
                        flush=True,
                    )
                    for problem in problems:
                        print(f"  {problem}")
        finally:
            remove_test_images()
    print(
        f"total: {args.rounds} rounds, {len(all_kills)} kills, {total_opened} SSE connections, "
        f"{total_lines} numbered lines checked twice (live and stored), {len(all_problems)} problems"
    )
    print(summary("service away after a kill (restarted at once)", [k[2] for k in all_kills if len(k) > 2]))
    print(summary("a client's wait for its next event after a kill", all_waits))
    sys.exit(1 if all_problems else 0)


if __name__ == "__main__":
    main()
