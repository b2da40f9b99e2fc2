"""Pulling an existing image's reference: DockerBuilder against the real engine
and the registry on 127.0.0.1:5000 (the only one these offline machines reach).

A reference that names a registry is pulled at each import and re-pull
(``image_content_id``); the import of one then goes like any other (labelled,
checked, published); a pull that fails fails the build with a plain reason.
"""

import os
import subprocess
import uuid

import pytest

from tests.helpers.dockerbuilder import SINGLEUSER_IMAGE, collect, docker, make_builder
from tests.helpers.fixtures import need
from tests.helpers.kubecluster import kube_cluster
from tljh_repo2docker.builds.base import BUILT, FAILED, BuildRequest
from tljh_repo2docker.builds.docker.imported import PullFailed

pytestmark = [pytest.mark.docker]



@pytest.fixture
def pushed(test_images):
    """A copy of the single-user image in the registry of ``./dev kube up``
    (brought up when it is not), with no local name."""
    registry = os.environ.get("TLJH_R2D_REGISTRY") or kube_cluster()["registry"]
    reference = f"{registry}/tljh-r2d-imgtest-{uuid.uuid4().hex[:10]}/img:v1"
    docker("tag", SINGLEUSER_IMAGE, reference)
    result = docker("push", reference, check=False)
    if result.returncode != 0:
        docker("rmi", "--no-prune", reference, check=False)
        need(f"the registry at {registry} does not answer: {result.stderr[-300:]}")
    docker("rmi", "--no-prune", reference)
    yield reference
    docker("rmi", "--no-prune", reference, check=False)


@pytest.mark.kube
async def test_a_registry_reference_is_pulled_imported_and_checked(pushed):
    builder = make_builder()
    uid = f"t{uuid.uuid4().hex[:12]}"
    image_name = f"tljh-r2d-builder-test-{uid}:latest"
    try:
        assert docker("image", "inspect", pushed, check=False).returncode != 0
        source_id = await builder.image_content_id(pushed)
        assert source_id and source_id.startswith("sha256:")
        docker("rmi", "--no-prune", pushed)  # the import pulls it again

        request = BuildRequest(
            uid=uid, repo=pushed, ref="", image_name=image_name, source="image", number=1,
            labels={"tljh_repo2docker.uid": uid},
        )
        events = await collect(builder.build(request))
        final = events[-1]
        assert final.phase == BUILT, final
        assert final.commit == source_id and final.image_id != source_id
        text = "\n".join(e.message for e in events)
        assert f"pulling {pushed}" in text
        assert final.check["status"] == "passed"
    finally:
        docker("rmi", image_name, check=False)
        await builder.close()


async def test_a_pull_that_fails_fails_the_build_plainly(test_images):
    builder = make_builder()
    # nothing listens on the discard port: the pull fails without leaving loopback
    missing = f"127.0.0.1:9/tljh-r2d-imgtest-missing-{uuid.uuid4().hex[:8]}/img:none"
    uid = f"t{uuid.uuid4().hex[:12]}"
    try:
        with pytest.raises(PullFailed, match=f"Cannot pull {missing}"):
            await builder.image_content_id(missing)
        request = BuildRequest(
            uid=uid, repo=missing, ref="", image_name=f"tljh-r2d-builder-test-{uid}:latest",
            source="image",
        )
        events = await collect(builder.build(request))
        assert events[-1].phase == FAILED
        assert events[-1].message.startswith(f"Cannot pull {missing}: "), events[-1].message
        # a local name that is not on the engine is never pulled
        local = f"tljh-r2d-imgtest-missing-{uuid.uuid4().hex[:8]}:x"
        assert await builder.image_content_id(local) is None
        request = BuildRequest(
            uid=uid, repo=local, ref="", image_name=f"tljh-r2d-builder-test-{uid}:latest",
            source="image",
        )
        events = await collect(builder.build(request))
        assert events[-1].phase == FAILED and "is not on the Docker engine" in events[-1].message
    finally:
        await builder.close()


async def test_what_an_import_cut_short_by_a_stop_left_is_removed(test_images):
    """A service stopped during an import's check leaves its check server and
    its labelled image: found by running(), removed by attach()."""
    builder = make_builder()
    uid = f"t{uuid.uuid4().hex[:12]}"
    staging = f"{builder._container_name(uid).lower()}:{uuid.uuid4().hex[:12]}"
    subprocess.run(
        ["docker", "build", "-q", "--label", f"tljh_repo2docker.uid={uid}", "-t", staging, "-"],
        input=f"FROM {SINGLEUSER_IMAGE}\n", text=True, capture_output=True, check=True,
    )
    docker(
        "run", "-d", "--network", "none", "--label", f"tljh_repo2docker.check={uid}",
        "--label", "tljh_repo2docker.check_role=server", staging, "sleep", "300",
    )
    try:
        assert uid in await builder.running()
        events = [event async for event in builder.attach(uid, 0)]
        assert [e.phase for e in events] == [FAILED]
        left = docker("ps", "-aq", "--filter", f"label=tljh_repo2docker.check={uid}").stdout
        assert not left.split()
        assert docker("image", "inspect", staging, check=False).returncode != 0
        assert uid not in await builder.running()
    finally:
        for cid in docker("ps", "-aq", "--filter", f"label=tljh_repo2docker.check={uid}").stdout.split():
            docker("rm", "-f", cid, check=False)
        docker("rmi", "-f", staging, check=False)
        await builder.close()
