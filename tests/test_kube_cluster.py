"""Smoke test of the real cluster of `./dev kube up` (scripts/kube.sh).

An image pushed by Docker's engine to the cluster's registry runs as a pod on the node
labelled for users, its CPU and memory limits are in its cgroup on the host, and a claim
without a class gets the default StorageClass and is bound. Everything made is removed.
"""

import asyncio
import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers.fixtures import SINGLEUSER_IMAGE, image_exists, need
from tests.helpers.kubecluster import NODE_SELECTOR, kube_cluster, pod_manifest

pytest.importorskip("kubernetes_asyncio")

from kubernetes_asyncio import client, config  # noqa: E402

pytestmark = pytest.mark.kube

# The smallest image scripts/build-test-images.sh makes (Debian trixie with python3).
BASE_IMAGE = "tljh-repo2docker-test/base:trixie"
CPU_LIMIT_MILLI = 500
MEMORY_LIMIT = 256 * 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")


@pytest.fixture(scope="session")
def cluster():
    return kube_cluster()


@pytest.fixture
async def core(cluster):
    api = await config.new_client_from_config(config_file=cluster["kubeconfig"])
    try:
        yield client.CoreV1Api(api)
    finally:
        await api.close()


@pytest.fixture
def pushed_image(cluster, docker_engine):
    """A test image pushed by Docker's engine to the registry (plain HTTP on loopback,
    which Docker allows without configuration); deleted from both afterwards."""
    source = BASE_IMAGE if image_exists(BASE_IMAGE) else SINGLEUSER_IMAGE
    if not image_exists(source):
        need(f"no test image ({BASE_IMAGE}) to push: run ./dev images")
    ref = f"{cluster['registry']}/envs/kube-smoke:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "tag", source, ref], check=True)
    try:
        subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True, timeout=300)
        yield ref
    finally:
        subprocess.run(["docker", "rmi", ref], capture_output=True)
        _delete_from_registry(cluster["registry"], ref)


def _delete_from_registry(registry, ref):
    """Delete the manifest by digest (the registry runs with delete enabled)."""
    name, tag = ref.split("/", 1)[1].rsplit(":", 1)
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    head = urllib.request.Request(
        f"http://{registry}/v2/{name}/manifests/{tag}", method="HEAD", headers={"Accept": accept}
    )
    with urllib.request.urlopen(head, timeout=10) as r:
        digest = r.headers["Docker-Content-Digest"]
    delete = urllib.request.Request(f"http://{registry}/v2/{name}/manifests/{digest}", method="DELETE")
    with urllib.request.urlopen(delete, timeout=10) as r:
        assert r.status == 202


async def _wait(what, check, timeout, describe):
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout}s: {await describe()}")
        await asyncio.sleep(0.5)


def _pod_cgroup(controller, uid):
    """The pod's cgroup under kubepods (cgroupfs driver: .../kubepods[/<qos>]/pod<uid>)."""
    found = list((CGROUP_ROOT / controller / "kubepods").glob(f"**/pod{uid}"))
    assert found, f"no {controller} cgroup for pod {uid}"
    return found[0]


async def test_pod_from_registry_with_limits_and_claim(core, pushed_image):
    name = f"kube-smoke-{uuid.uuid4().hex[:8]}"
    pod = pod_manifest(
        name,
        pushed_image,
        ["python3", "-c", "import time; time.sleep(3600)"],
        labels={"app": "tljh-r2d-kube-smoke"},
        resources={
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": f"{CPU_LIMIT_MILLI}m", "memory": str(MEMORY_LIMIT)},
        },
    )
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }
    await core.create_namespaced_pod("default", pod)
    await core.create_namespaced_persistent_volume_claim("default", claim)
    try:

        async def running():
            p = await core.read_namespaced_pod(name, "default")
            assert p.status.phase not in ("Failed", "Succeeded"), p.status
            return p.status.phase == "Running"

        async def describe_pod():
            p = await core.read_namespaced_pod(name, "default")
            events = await core.list_namespaced_event(
                "default", field_selector=f"involvedObject.name={name}"
            )
            return json.dumps(
                {
                    "status": str(p.status),
                    "events": [f"{e.reason}: {e.message}" for e in events.items],
                }
            )

        await _wait("pod Running", running, 90, describe_pod)
        p = await core.read_namespaced_pod(name, "default")
        assert p.spec.node_name
        node = await core.read_node(p.spec.node_name)
        for key, value in NODE_SELECTOR.items():
            assert node.metadata.labels.get(key) == value

        # The limits, as the kernel enforces them (cgroup v1, read from the host).
        memory = _pod_cgroup("memory", p.metadata.uid)
        assert int((memory / "memory.limit_in_bytes").read_text()) == MEMORY_LIMIT
        cpu = _pod_cgroup("cpu", p.metadata.uid)
        quota = int((cpu / "cpu.cfs_quota_us").read_text())
        period = int((cpu / "cpu.cfs_period_us").read_text())
        assert quota * 1000 // period == CPU_LIMIT_MILLI

        async def bound():
            c = await core.read_namespaced_persistent_volume_claim(name, "default")
            return c.status.phase == "Bound"

        async def describe_claim():
            return str(await core.read_namespaced_persistent_volume_claim(name, "default"))

        await _wait("claim Bound", bound, 30, describe_claim)
        c = await core.read_namespaced_persistent_volume_claim(name, "default")
        assert c.spec.storage_class_name == "standard"
    finally:
        await core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        await core.delete_namespaced_persistent_volume_claim(name, "default")

    async def gone():
        pods = await core.list_namespaced_pod("default", field_selector=f"metadata.name={name}")
        return not pods.items

    async def nothing():
        return "pod still there"

    await _wait("pod deleted", gone, 60, nothing)
