"""Build log latency: from a line printed inside the build to its arrival at SSE clients.

Run on demand (real JupyterHub + proxy + the service + Docker; all on 127.0.0.1):

    .venv/bin/python benchmarks/bench_sse.py [--clients 1 100]

Each measurement builds a new environment whose Dockerfile prints 50 wall
clock timestamps, 50 ms apart, during the image build::

    RUN for i in $(seq 1 50); do date +%s.%N; sleep 0.05; done

The build step runs in a container on the same kernel, so its clock is the
client's. ``N`` clients open ``GET api/environments/<uid>/logs`` as soon as
the build is queued (a ``RUN sleep 3`` step first gives them time to
connect) and note when each timestamp line arrives. The path of a line:
BuildKit -> docker buildx in the repo2docker container -> the container's
log -> the service (aiodocker) -> the build manager's fan-out -> SSE.

Prints p50/p99 of (arrival - timestamp) per client count, through the proxy
(the browser's path) and straight to the service's port. Target: p99 < 100 ms.
The clients run in this one Python process, on the same 2 cores as
everything else: with 100 clients, part of the figure is the clients' own
queueing.
"""

import argparse
import asyncio
import json
import re
import tempfile
import time
import uuid
from pathlib import Path

from urllib.parse import urlsplit

import aiodocker
import httpx

from common import ADMIN_SCOPES, ms, percentile

from tests.helpers.fixtures import SINGLEUSER_IMAGE, running_hub  # noqa: E402
from tests.helpers.gitserver import GitServer, make_repo  # noqa: E402
from tests.helpers.utils import make_token, remove_test_images  # noqa: E402

LINES = 50
# BuildKit's plain progress output: "#<step> <seconds since the step started> <line>".
STAMP = re.compile(r"^#\d+ [\d.]+ (\d{9,11}\.\d+)$")


async def watch(url, token, arrivals):
    """A minimal SSE client on a raw socket: ``arrivals[stamp] = arrival time``.

    Lighter than an HTTP library, so that 100 of them in this process
    measure the service more than themselves. Tornado sends each event as
    one chunk; chunk-size lines are skipped like any line without "data:".
    """
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: token {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    buffer = b""
    try:
        while True:
            chunk = await reader.read(65536)
            now = time.time()
            if not chunk:
                raise RuntimeError("the stream ended before the final event")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                data = json.loads(line[5:])
                match = STAMP.match(data["message"])
                if match:
                    arrivals[match.group(1)] = now
                if data["phase"] in ("built", "failed", "cancelled"):
                    return data
    finally:
        writer.close()


async def docker_log(uid, arrivals):
    """What the service reads: the build container's log, followed through the Docker API."""
    async with aiodocker.Docker() as docker:
        for _ in range(300):
            found = await docker.containers.list(
                all=True, filters={"label": [f"tljh_repo2docker.build={uid}"]}
            )
            if found and found[0]["State"] != "created":
                break  # a log followed before the start ends at once
            await asyncio.sleep(0.05)
        buffer = ""
        try:
            async for chunk in found[0].log(stdout=True, stderr=True, follow=True):
                now = time.time()
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    match = STAMP.match(line.rstrip("\r"))
                    if match:
                        arrivals[match.group(1)] = now
        except aiodocker.DockerError as e:
            print("docker log:", e)  # removed at the end of the build


async def one_build(base_url, token, repo_url, clients):
    """``(printed -> client, printed -> Docker log, Docker log -> client)`` latencies."""
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.post(
            f"{base_url}api/environments",
            json={"repo": repo_url, "ref": "main", "name": f"sse-{uuid.uuid4().hex[:8]}"},
            headers=headers,
        )
        assert r.status_code == 202, r.text
        uid = r.json()["uid"]
        url = f"{base_url}api/environments/{uid}/logs"
        source = {}
        source_task = asyncio.ensure_future(docker_log(uid, source))
        per_client = [{} for _ in range(clients)]
        finals = await asyncio.gather(*(watch(url, token, arrivals) for arrivals in per_client))
        await source_task
        assert all(f["phase"] == "built" for f in finals), finals[0]
        for arrivals in per_client:
            assert len(arrivals) == LINES, len(arrivals)
        assert len(source) == LINES, len(source)
        await client.delete(f"{base_url}api/environments/{uid}", headers=headers)
    total = [t - float(stamp) for arrivals in per_client for stamp, t in arrivals.items()]
    upstream = [t - float(stamp) for stamp, t in source.items()]
    added = [t - source[stamp] for arrivals in per_client for stamp, t in arrivals.items()]
    return total, upstream, added


def new_repo(root, git):
    name = f"sse-{uuid.uuid4().hex[:8]}"
    make_repo(
        root,
        name,
        {
            "Dockerfile": "\n".join(
                [
                    f"FROM {SINGLEUSER_IMAGE}",
                    f"ENV BENCH_RUN={uuid.uuid4().hex}",
                    "RUN sleep 3",
                    f"RUN for i in $(seq 1 {LINES}); do date +%s.%N; sleep 0.05; done",
                    "",
                ]
            )
        },
    )
    return git.url(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 100])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "git"
        root.mkdir()
        workdir = Path(tmp) / "hub"
        workdir.mkdir()
        with GitServer(root) as git, running_hub(workdir) as hub_info:
            token = make_token(hub_info, "admin", ADMIN_SCOPES)
            paths = {
                "proxy": hub_info.service_url,
                "direct": f"http://127.0.0.1:{hub_info.service_port}/services/tljh_repo2docker/",
            }
            for clients in args.clients:
                for label, base_url in paths.items():
                    measured = asyncio.run(
                        one_build(base_url, token, new_repo(root, git), min(clients, 500))
                    )
                    results.append((clients, label, measured))
    print()
    for clients, label, (total, upstream, added) in results:
        for what, values in (
            ("printed -> SSE client", total),
            ("printed -> Docker log", upstream),
            ("Docker log -> SSE client", added),
        ):
            print(
                f"{clients:4d} client(s) {label:6s} {what:25s} n={len(values):5d} "
                f"p50={ms(percentile(values, 50))} p99={ms(percentile(values, 99))} "
                f"max={ms(max(values))}"
            )
    worst = max(percentile(total, 99) for _, _, (total, _, _) in results)
    print(f"worst p99 printed -> SSE client: {ms(worst)} (target < 100 ms): {'OK' if worst < 0.1 else 'MISSED'}")


if __name__ == "__main__":
    try:
        main()
    finally:
        remove_test_images()  # what a failed run left behind
