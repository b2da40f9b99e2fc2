"""Build wall time through the service, divided by the same repo2docker container run by hand.

Run on demand (real JupyterHub + proxy + the service + Docker; all on 127.0.0.1):

    .venv/bin/python benchmarks/bench_build.py [--rounds 5]

Each round builds two new repositories with the same kind of Dockerfile (on
the single-user test image, a line unique to the build so BuildKit's cache
never answers, and a short ``RUN`` step):

- through the service: from ``POST api/environments`` to the ``built`` event
  on the build's SSE log (queue, container, log fan-out, database, naming of
  the image all included);
- by hand: ``docker run --rm --network host -v /var/run/docker.sock:...
  <repo2docker image> jupyter-repo2docker --no-run ...``, the command the
  service runs, timed around the ``docker run`` process.

The two kinds alternate, after a warm-up round that is left out. Prints the
medians, the median of the rounds' differences and ratios (target: <= 1.03,
i.e. under 30 ms on a 1-second build), and where the service's time goes:
the median moment of each point of its debug timeline (``Build <uid>
timeline: ...`` in the service's log: queue, container created and started,
first log line, container exited, image named, result stored, container
removed, final event sent), with the client's own points (POST answered,
final event received).

The service builds with ``--DockerBuilder.check_images=False`` unless
``--check`` is given: the ratio compares the same work (repo2docker's build),
and the check of each built image, which the hand-run command does not do, is
measured on its own by ``bench_check.py``. With ``--check`` the service's
builds include it (about 2 s more each, on the project's machines).

``--seconds 0`` makes the shortest builds (``RUN`` without ``sleep``), where
what the service adds is the largest part; use more rounds (``--rounds 20``)
to see tens of milliseconds through the noise of a shared machine.
"""

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from common import ADMIN_SCOPES, percentile

from tests.helpers.fixtures import BUILDER_IMAGE, SINGLEUSER_IMAGE, running_hub  # noqa: E402
from tests.helpers.gitserver import GitServer, make_repo  # noqa: E402
from tests.helpers.utils import make_token, remove_test_images  # noqa: E402


def new_repo(root, git, seconds):
    name = f"wall-{uuid.uuid4().hex[:8]}"
    dockerfile = "\n".join(
        [
            f"FROM {SINGLEUSER_IMAGE}",
            f"ENV BENCH_RUN={uuid.uuid4().hex}",
            f"RUN echo building && sleep {seconds} && echo done"
            if seconds
            else "RUN echo building && echo done",
            "",
        ]
    )
    make_repo(root, name, {"Dockerfile": dockerfile})
    return git.url(name)


async def through_service(base_url, token, repo_url, points):
    """Seconds from the POST to the ``built`` event; ``points``: the client's moments (ms)."""
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(timeout=300) as client:
        start = time.perf_counter()
        r = await client.post(
            f"{base_url}api/environments",
            json={"repo": repo_url, "ref": "main", "name": f"wall-{uuid.uuid4().hex[:8]}"},
            headers=headers,
        )
        assert r.status_code == 202, r.text
        points["client: POST answered"] = (time.perf_counter() - start) * 1000
        uid = r.json()["uid"]
        points["uid"] = uid
        final = None
        async with client.stream("GET", f"{base_url}api/environments/{uid}/logs", headers=headers) as s:
            async for line in s.aiter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    if data["phase"] in ("built", "failed", "cancelled"):
                        final = data
                        break
        elapsed = time.perf_counter() - start
        points["client: final event received"] = elapsed * 1000
        assert final and final["phase"] == "built", final
        r = await client.delete(f"{base_url}api/environments/{uid}", headers=headers)
        assert r.status_code == 204, r.text
    return elapsed


def by_hand(repo_url):
    image = f"tljh-r2d-bench-hand-{uuid.uuid4().hex[:8]}:main"
    cmd = [
        "docker", "run", "--rm", "--network", "host",
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        BUILDER_IMAGE,
        "jupyter-repo2docker", "--no-run", "--ref", "main",
        "--user-id", "1000", "--user-name", "jovyan",
        "--image-name", image, "--", repo_url,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    subprocess.run(["docker", "rmi", image], capture_output=True)
    return elapsed


_TIMELINE_RE = re.compile(r"Build ([0-9a-f]+) timeline: (.*)$")


def service_timelines(log_path):
    """``{uid: {point: ms after submit}}`` from the service's debug lines in the hub's log."""
    timelines = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = _TIMELINE_RE.search(line)
        if match:
            points = {}
            for part in match.group(2).split(", "):
                name, _, offset = part.rpartition(" +")
                points[name] = float(offset.removesuffix(" ms"))
            timelines[match.group(1)] = points
    return timelines


def print_timeline(client_points, log_path):
    """Median moment of each point, over the measured builds through the service."""
    timelines = service_timelines(log_path)
    moments = collections.defaultdict(list)
    order = []
    for points in client_points:
        service = timelines.get(points["uid"], {})
        # The service's clock starts at submit, inside the POST; the client's
        # at the POST. Points are printed on the service's clock, the
        # client's as they are (both start within the POST's few ms).
        for name, at in list(service.items()) + [
            (k, v) for k, v in points.items() if k.startswith("client:")
        ]:
            if name not in order:
                order.append(name)
            moments[name].append(at)
    if not moments:
        print("(no timeline in the service's log: is it started with --debug?)")
        return
    print(f"\nwhere the time of a build through the service goes (median of {len(client_points)}):")
    rows = sorted(order, key=lambda name: statistics.median(moments[name]))
    previous = 0.0
    for name in rows:
        at = statistics.median(moments[name])
        print(f"  {name:32s} +{at:8.1f} ms   (+{at - previous:6.1f} ms)")
        previous = at
    # What has no counterpart in the run by hand: before the container is
    # made (request, database, queue) and after it exited (naming, database,
    # final event). The run by hand has its own: the docker CLI's start.
    own = []
    for points in client_points:
        service = timelines.get(points["uid"], {})
        try:
            own.append(
                service["repo2docker image checked"]
                + service["final event sent"] - service["container exited"]
            )
        except KeyError:
            continue
    if own:
        print(
            f"the service's own steps (submit -> image checked, container exited -> final "
            f"event sent): p50 {percentile(own, 50):.1f} ms, p95 {percentile(own, 95):.1f} ms "
            f"(limit 30 ms): {'OK' if percentile(own, 50) <= 30 else 'MISSED'}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (at most 50)")
    parser.add_argument(
        "--seconds", type=float, default=1, help="length of the Dockerfile's RUN step (sleep)"
    )
    parser.add_argument(
        "--check", action="store_true",
        help="keep the check of built images on (see bench_check.py for its cost alone)",
    )
    args = parser.parse_args()
    service_args = [] if args.check else ["--DockerBuilder.check_images=False"]
    service, hand, client_points = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "git"
        root.mkdir()
        workdir = Path(tmp) / "hub"
        workdir.mkdir()
        with GitServer(root) as git, running_hub(workdir, extra_service_args=service_args) as hub_info:
            token = make_token(hub_info, "admin", ADMIN_SCOPES)
            base_url = hub_info.service_url
            for number in range(min(args.rounds, 50) + 1):
                # Alternate which goes first, so that neither always follows the other.
                order = ("service", "hand") if number % 2 else ("hand", "service")
                times = {}
                for kind in order:
                    url = new_repo(root, git, args.seconds)
                    if kind == "service":
                        points = {}
                        times[kind] = asyncio.run(through_service(base_url, token, url, points))
                    else:
                        times[kind] = by_hand(url)
                print(f"round {number}: service {times['service']:.2f} s, by hand {times['hand']:.2f} s"
                      + (" (warm-up, left out)" if number == 0 else ""))
                if number:
                    service.append(times["service"])
                    hand.append(times["hand"])
                    client_points.append(points)
            print_timeline(client_points, hub_info.workdir / "jupyterhub.log")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"through the service: p50 {statistics.median(service):.3f} s, "
          f"p95 {percentile(service, 95):.3f} s (n={len(service)})")
    print(f"by hand:             p50 {statistics.median(hand):.3f} s, "
          f"p95 {percentile(hand, 95):.3f} s (n={len(hand)})")
    differences = [a - b for a, b in zip(service, hand)]
    extra = statistics.median(differences)
    print(f"service - by hand, per round: p25 {percentile(differences, 25) * 1000:.0f} ms, "
          f"p50 {extra * 1000:.0f} ms, p75 {percentile(differences, 75) * 1000:.0f} ms "
          f"(limit 30 ms): {'OK' if extra <= 0.030 else 'MISSED'}")
    per_round = statistics.median(a / b for a, b in zip(service, hand))
    print(f"service / by hand, median of the rounds' ratios: {per_round:.3f} (limit 1.03): "
          f"{'OK' if per_round <= 1.03 else 'MISSED'}")
    ratio = statistics.median(service) / statistics.median(hand)
    print(f"service / by hand, ratio of the medians: {ratio:.3f} (limit 1.03): "
          f"{'OK' if ratio <= 1.03 else 'MISSED'}")


if __name__ == "__main__":
    try:
        main()
    finally:
        remove_test_images()  # what a failed run left behind
