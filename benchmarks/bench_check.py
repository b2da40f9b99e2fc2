"""The time the check of a built image adds to a build (issue 22).

Run on demand (the Docker engine, the test images, the test git server; all
on 127.0.0.1):

    .venv/bin/python benchmarks/bench_check.py [--rounds 10] [--warmup 1]

Each round builds two new repositories with the same kind of Dockerfile (on
the single-user test image, a line unique to the build so BuildKit's cache
never answers) with ``DockerBuilder`` itself: one with ``check_images`` on,
one with it off; the two alternate. Prints p50/p95 of each build's wall
time, of the difference per round, and of the check alone: from the build
container's exit to the moment the image was checked (the builder's own
timeline: starting ``jupyterhub-singleuser`` without network, the probe,
its output; listing what the image holds runs at the same time). With
``--command``, the checked builds also run that ``check_command``.
"""

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from common import percentile, summary

from tests.helpers.dockerbuilder import docker, make_builder  # noqa: E402
from tests.helpers.fixtures import SINGLEUSER_IMAGE  # noqa: E402
from tests.helpers.gitserver import GitServer, make_repo  # noqa: E402
from tljh_repo2docker.builds.base import BUILT, BuildRequest, Timeline  # noqa: E402


def new_repo(root, git):
    name = f"check-{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {SINGLEUSER_IMAGE}\nENV BENCH_RUN={uuid.uuid4().hex}\nRUN echo built\n"
    make_repo(root, name, {"Dockerfile": dockerfile})
    return git.url(name)


async def one_build(builder, repo_url, command):
    """``(wall seconds, check seconds or None)`` of one build of ``repo_url``."""
    uid = f"bench{uuid.uuid4().hex[:10]}"
    timeline = Timeline()
    request = BuildRequest(
        uid=uid,
        repo=repo_url,
        ref="main",
        image_name=f"tljh-r2d-bench-check-{uid}:1",
        number=1,
        check_command=command,
        memory="1G",
        cpu=1,
        timeline=timeline,
    )
    start = time.perf_counter()
    final = None
    try:
        async for event in builder.build(request):
            final = event
        wall = time.perf_counter() - start
    finally:
        docker("rmi", "-f", request.image_name, check=False)
    if final is None or final.phase != BUILT:
        raise RuntimeError(f"build {uid} did not succeed: {final}")
    points = dict(timeline.points)
    checked = None
    if "image checked" in points and "container exited" in points:
        checked = points["image checked"] - points["container exited"]
    return wall, checked


async def main(args):
    checked_builder = make_builder(check_images=True)
    plain_builder = make_builder(check_images=False)
    walls = {"checked": [], "unchecked": []}
    differences, checks = [], []
    with tempfile.TemporaryDirectory() as tmp, GitServer(Path(tmp)) as git:
        try:
            for number in range(args.warmup + args.rounds):
                checked, check_time = await one_build(
                    checked_builder, new_repo(Path(tmp), git), args.command
                )
                unchecked, _ = await one_build(plain_builder, new_repo(Path(tmp), git), None)
                if number < args.warmup:
                    continue
                walls["checked"].append(checked)
                walls["unchecked"].append(unchecked)
                differences.append(checked - unchecked)
                if check_time is not None:
                    checks.append(check_time)
                print(
                    f"round {number - args.warmup + 1}: checked {checked:.3f}s, "
                    f"unchecked {unchecked:.3f}s, check {check_time or 0:.3f}s",
                    flush=True,
                )
        finally:
            await checked_builder.close()
            await plain_builder.close()
    print()
    width = 26
    summary("build with the check", walls["checked"], width, 95)
    summary("build without it", walls["unchecked"], width, 95)
    summary("difference per round", differences, width, 95)
    if checks:
        summary("check (exit -> checked)", checks, width, 95)
        print(f"the check adds p50 {percentile(differences, 50):.3f}s to a build here")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="rounds left out at the start")
    parser.add_argument("--command", default=None, help="a check_command for the checked builds")
    asyncio.run(main(parser.parse_args()))
