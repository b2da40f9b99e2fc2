"""Helpers for the tests of DockerBuilder against a real Docker engine, real
repo2docker and a real git server (``tests/test_docker_builder.py``, and
``tests/test_log_kills.py``).

The test images are ``TLJH_R2D_TEST_REPO2DOCKER_IMAGE`` (default
``tljh-repo2docker-test/repo2docker:latest``) and
``TLJH_R2D_TEST_SINGLEUSER_IMAGE`` (default
``tljh-repo2docker-test/singleuser:latest``), built by
``scripts/build-test-images.sh``.
"""

import asyncio
import os
import subprocess
import uuid

from tests.helpers.gitserver import make_repo
from tljh_repo2docker.builds.base import LOG, BuildRequest
from tljh_repo2docker.builds.docker import BUILD_LABEL, DockerBuilder

R2D_IMAGE = os.environ.get(
    "TLJH_R2D_TEST_REPO2DOCKER_IMAGE", "tljh-repo2docker-test/repo2docker:latest"
)
SINGLEUSER_IMAGE = os.environ.get(
    "TLJH_R2D_TEST_SINGLEUSER_IMAGE", "tljh-repo2docker-test/singleuser:latest"
)
# Upper bound for one build here; builds of these repositories take seconds.
BUILD_TIMEOUT = 180


def make_builder(**kwargs):
    kwargs.setdefault("repo2docker_image", R2D_IMAGE)
    kwargs.setdefault("network_mode", "host")
    kwargs.setdefault("pull_repo2docker_image", False)
    return DockerBuilder(**kwargs)


def docker(*args, check=True):
    result = subprocess.run(["docker", *args], check=False, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr}")
    return result


def new_request(made, repo, **kwargs):
    uid = f"t{uuid.uuid4().hex[:12]}"
    image = f"tljh-r2d-builder-test-{uid}:1"
    made["uids"].append(uid)
    made["images"].append(image)
    kwargs.setdefault("ref", "main")
    return BuildRequest(uid=uid, repo=repo, image_name=image, **kwargs)


def dockerfile(*lines):
    """A Dockerfile on the single-user image whose steps are never cached.

    BuildKit would otherwise reuse the steps of an earlier run and finish at
    once, which defeats tests that need a build to be running.
    """
    return "\n".join([f"FROM {SINGLEUSER_IMAGE}", f"ENV TEST_RUN={uuid.uuid4().hex}", *lines, ""])


def new_repo(git_root, files):
    name = f"repo-{uuid.uuid4().hex[:8]}"
    make_repo(git_root, name, files)
    return name


async def collect(events):
    """All events of a build, checking that exactly the last one is final."""

    async def run():
        result = []
        async for event in events:
            assert not (result and result[-1].final), "events after the final event"
            result.append(event)
        return result

    result = await asyncio.wait_for(run(), BUILD_TIMEOUT)
    assert result and result[-1].final, f"no final event: {result[-3:]}"
    return result


def logs_of(events):
    return [e.message for e in events if e.phase == LOG]


def explain(events):
    """The end of a build log, for assertion messages."""
    return "\n".join(f"{e.phase}: {e.message}" for e in events[-25:])


async def build_containers(builder, uid):
    return await builder.docker.containers.list(
        all=True, filters={"label": [f"{BUILD_LABEL}={uid}"]}
    )
