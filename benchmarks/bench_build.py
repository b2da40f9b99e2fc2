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
medians and their ratio (target: < 1.05).
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from common import ADMIN_SCOPES

from tests.fixtures import BUILDER_IMAGE, SINGLEUSER_IMAGE, running_hub  # noqa: E402
from tests.gitserver import GitServer, make_repo  # noqa: E402
from tests.utils import make_token, remove_test_images  # noqa: E402


def new_repo(root, git, seconds):
    name = f"wall-{uuid.uuid4().hex[:8]}"
    dockerfile = "\n".join(
        [
            f"FROM {SINGLEUSER_IMAGE}",
            f"ENV BENCH_RUN={uuid.uuid4().hex}",
            f"RUN echo building && sleep {seconds} && echo done",
            "",
        ]
    )
    make_repo(root, name, {"Dockerfile": dockerfile})
    return git.url(name)


async def through_service(base_url, token, repo_url):
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(timeout=300) as client:
        start = time.perf_counter()
        r = await client.post(
            f"{base_url}api/environments",
            json={"repo": repo_url, "ref": "main", "name": f"wall-{uuid.uuid4().hex[:8]}"},
            headers=headers,
        )
        assert r.status_code == 202, r.text
        uid = r.json()["uid"]
        final = None
        async with client.stream("GET", f"{base_url}api/environments/{uid}/logs", headers=headers) as s:
            async for line in s.aiter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    if data["phase"] in ("built", "failed", "cancelled"):
                        final = data
                        break
        elapsed = time.perf_counter() - start
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=1, help="length of the Dockerfile's RUN step (sleep)"
    )
    args = parser.parse_args()
    service, hand = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "git"
        root.mkdir()
        workdir = Path(tmp) / "hub"
        workdir.mkdir()
        with GitServer(root) as git, running_hub(workdir) as hub_info:
            token = make_token(hub_info, "admin", ADMIN_SCOPES)
            base_url = hub_info.service_url
            for number in range(min(args.rounds, 50) + 1):
                # Alternate which goes first, so that neither always follows the other.
                order = ("service", "hand") if number % 2 else ("hand", "service")
                times = {}
                for kind in order:
                    url = new_repo(root, git, args.seconds)
                    if kind == "service":
                        times[kind] = asyncio.run(through_service(base_url, token, url))
                    else:
                        times[kind] = by_hand(url)
                print(f"round {number}: service {times['service']:.2f} s, by hand {times['hand']:.2f} s"
                      + (" (warm-up, left out)" if number == 0 else ""))
                if number:
                    service.append(times["service"])
                    hand.append(times["hand"])
    per_round = statistics.median(a / b for a, b in zip(service, hand))
    print(f"service / by hand, median of the rounds' ratios: {per_round:.3f}")
    ratio = statistics.median(service) / statistics.median(hand)
    print(f"\nthrough the service: median {statistics.median(service):.2f} s (n={len(service)})")
    print(f"by hand:             median {statistics.median(hand):.2f} s (n={len(hand)})")
    extra = statistics.median(a - b for a, b in zip(service, hand))
    print(f"service - by hand, median of the rounds: {extra * 1000:.0f} ms")
    print(f"ratio service / by hand = {ratio:.3f} (target < 1.05): {'OK' if ratio < 1.05 else 'MISSED'}")


if __name__ == "__main__":
    try:
        main()
    finally:
        remove_test_images()  # what a failed run left behind
