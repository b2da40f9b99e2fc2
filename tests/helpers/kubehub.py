"""A test hub whose servers are pods of the real cluster of ``./dev kube up``.

JupyterHub and its proxy run on the host, with the service as a managed
service building with the local Docker engine (as every test hub,
``tests/helpers/fixtures.py: running_hub``), and ``Repo2DockerKubeSpawner``
starting pods in a namespace of the test's own:

- ``kube_hub(workdir, cluster, namespace, image_prefix)``: that hub (a context
  manager). The hub listens on the host's address on the cluster's bridge
  (``host_ip``, 10.244.0.1), where pods reach its API; the proxy reaches pods by
  their IP (no cluster DNS, no kube-proxy). ``KUBECONFIG`` is set in the hub's
  environment only. The image prefix starts with the registry
  (``registry_prefix``), so built images are named for it.
- Images go to the registry by the service's ``DockerBuilder.push`` when the
  builder has it (``BUILDER_PUSH``), else by hand (``publish``, with
  ``docker push``): switching is that one line.
- ``Cluster``: the Kubernetes API (kubernetes_asyncio) for the checks: the
  namespace, a server's pod and claim, a dump of everything for a failing
  test; ``registry_digest``, ``cleanup_images`` and ``node_images`` for the
  registry, the local engine and the images the node pulled.
- ``content_puller_image(cluster)``: the image that pulls content at launch
  (the builder test image, which has git), pushed to the cluster's registry.
- ``cgroup_limits(pod)``: the memory and CPU limits the kernel enforces on a
  pod's container, read from its cgroup on this host (the cluster's node).

Nothing leaves loopback and the cluster's bridge.
"""

import asyncio
import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.helpers.fixtures import BUILDER_IMAGE, running_hub
from tests.helpers.utils import SERVICE, TEST_IMAGE_PREFIX
from tljh_repo2docker.builds.docker import DockerBuilder

#: The service pushes what it builds (``--DockerBuilder.push=True``); without
#: it the tests push by hand (``publish``). Set it to False to push by hand.
BUILDER_PUSH = "push" in DockerBuilder.class_trait_names()

#: The node selector choices the test hub's service offers: the label the
#: cluster's only node carries, and one that no node carries.
NODE_LABEL = "hub.jupyter.org/node-purpose"
NODE_CHOICES = {
    NODE_LABEL: {"description": "Node pool", "values": ["user", "core"]},
    "gpu": {"description": "GPU availability", "values": ["yes", "no"]},
}
#: Seconds a pod may stay unschedulable before its start fails (the default is 30).
UNSCHEDULABLE_TIMEOUT = 10
IMAGE_PULL_TIMEOUT = 10
START_TIMEOUT = 180
HOME_CLAIM = "tljh-r2d-home-{username}"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


def registry_prefix(cluster):
    """A fresh image prefix in the cluster's registry, e.g.
    ``127.0.0.1:5000/tljh-r2d-test-<pid>-k<random>/``."""
    return f"{cluster['registry']}/{TEST_IMAGE_PREFIX}-k{uuid.uuid4().hex[:8]}/"


def new_namespace():
    return f"tljh-r2d-test-{uuid.uuid4().hex[:8]}"


def service_args():
    """The service's extra options: push what it builds, when the builder can."""
    return ["--DockerBuilder.push=True"] if BUILDER_PUSH else []


def hub_extra_config(cluster, namespace, content_puller=None):
    """The lines that make the test hub's servers pods of the cluster
    (``content_puller``: the spawner's ``content_puller_image``, an image of
    the cluster's registry, see :func:`content_puller_image`)."""
    host_ip = cluster["host_ip"]
    puller = f"c.Repo2DockerKubeSpawner.content_puller_image = {content_puller!r}" if content_puller else ""
    return f"""
# -- servers are pods of the cluster of ./dev kube up (tests/helpers/kubehub.py) --
import json as _json
c.JupyterHub.spawner_class = "tljh_repo2docker.Repo2DockerKubeSpawner"
# Pods reach the hub's API on the host's address on the cluster's bridge.
c.JupyterHub.hub_ip = "{host_ip}"
c.JupyterHub.hub_connect_ip = "{host_ip}"
c.KubeSpawner.namespace = "{namespace}"
c.KubeSpawner.image_pull_policy = "IfNotPresent"  # pods start a version's own tag
c.KubeSpawner.start_timeout = {START_TIMEOUT}
c.KubeSpawner.http_timeout = 120
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
# The limits come from the environments; small requests, so that the node's
# 2 CPUs, shared with other test sessions, always have room.
c.KubeSpawner.cpu_guarantee = 0.05
c.KubeSpawner.mem_guarantee = "64M"
c.KubeSpawner.storage_capacity = "100Mi"
c.Repo2DockerKubeSpawner.unschedulable_timeout = {UNSCHEDULABLE_TIMEOUT}
c.Repo2DockerKubeSpawner.image_pull_timeout = {IMAGE_PULL_TIMEOUT}
{puller}


def _home_to_the_image_user(spawner, pod):
    # The cluster's claims are hostPath volumes (kube-controller-manager's
    # hostpath provisioner: directories 0750 root:root), and Kubernetes never
    # applies fsGroup to hostPath (nor to NFS): give the home to the image's
    # user before the server starts, as an operator does for such storage;
    # first of the init containers: the content pull writes into the home.
    from kubernetes_asyncio.client import V1Container, V1SecurityContext, V1VolumeMount
    mounts = [m for m in pod.spec.containers[0].volume_mounts or [] if m.mount_path == spawner.home_path]
    if mounts:
        uid = spawner.image_user_id
        pod.spec.init_containers = [V1Container(
            name="home-owner",
            image=pod.spec.containers[0].image,
            image_pull_policy=pod.spec.containers[0].image_pull_policy,
            command=["chown", f"{{uid}}:{{uid}}", spawner.home_path],
            security_context=V1SecurityContext(run_as_user=0),
            volume_mounts=[V1VolumeMount(name=mounts[0].name, mount_path=spawner.home_path)],
        )] + list(pod.spec.init_containers or [])
    return pod


c.KubeSpawner.modify_pod_hook = _home_to_the_image_user

# The service's node selector choices: replace the test template's.
for _service in c.JupyterHub.services:
    if _service["name"] == "{SERVICE}":
        _service["command"] = [
            a for a in _service["command"] if not a.startswith("--node_selector=")
        ] + ["--node_selector=" + _json.dumps({NODE_CHOICES!r})]
"""


@contextlib.contextmanager
def kube_hub(workdir, cluster, namespace, image_prefix, content_puller=None):
    """A running test hub (``running_hub``) whose spawner starts pods in
    ``namespace`` (``content_puller``: see :func:`hub_extra_config`)."""
    with contextlib.ExitStack() as stack:
        # running_hub starts the hub with this process's environment; kubespawner
        # reads $KUBECONFIG. Set while the hub starts only.
        saved = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = cluster["kubeconfig"]
        try:
            info = stack.enter_context(
                running_hub(
                    workdir,
                    extra_service_args=service_args(),
                    extra_config=hub_extra_config(cluster, namespace, content_puller),
                    image_prefix=image_prefix,
                )
            )
        finally:
            if saved is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = saved
        yield info


# -- images: the registry and the local engine -----------------------------------------


def _split(ref):
    """``("127.0.0.1:5000", "prefix/name", "tag")`` of ``ref``."""
    registry, rest = ref.split("/", 1)
    name, tag = rest.rsplit(":", 1)
    return registry, name, tag


def registry_digest(ref):
    """The manifest digest the registry holds for ``ref``, or None."""
    registry, name, tag = _split(ref)
    request = urllib.request.Request(
        f"http://{registry}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": MANIFEST_TYPES},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def registry_delete(ref):
    """Remove ``ref``'s manifest from the registry (every tag of it goes with it)."""
    registry, name, _tag = _split(ref)
    digest = registry_digest(ref)
    assert digest, f"the registry has no {ref}"
    request = urllib.request.Request(f"http://{registry}/v2/{name}/manifests/{digest}", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 202, r.status


def publish(refs):
    """Make sure the registry holds each of ``refs`` (local images): pushed by
    the service when ``BUILDER_PUSH``, else pushed here. Returns their digests."""
    digests = {}
    for ref in refs:
        if not BUILDER_PUSH:
            subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True, timeout=600)
        # The service pushes a version's tag just after it reports the build
        # (tens of milliseconds later): wait for it, briefly.
        deadline = time.monotonic() + 30
        while (digest := registry_digest(ref)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert digest, f"the registry has no {ref} (pushed by {'the service' if BUILDER_PUSH else 'hand'})"
        digests[ref] = digest
    return digests


#: The content puller's name in the cluster's registry (``{registry}/...``):
#: shared by the test sessions, pushed again by each (the same image).
CONTENT_PULLER = "tljh-r2d-test-tools/content-puller:latest"


def content_puller_image(cluster, image=BUILDER_IMAGE):
    """The content puller's image in the cluster's registry, for the
    spawner's ``content_puller_image``: the builder test image (it has
    ``sh``, ``git`` and coreutils' ``timeout``), tagged for the registry and
    pushed, since the node pulls only from there."""
    ref = f"{cluster['registry']}/{CONTENT_PULLER}"
    subprocess.run(["docker", "tag", image, ref], check=True, capture_output=True, timeout=60)
    subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True, timeout=600)
    assert registry_digest(ref), f"the registry has no {ref} after docker push"
    return ref


def _registry_get(registry, path):
    with urllib.request.urlopen(f"http://{registry}{path}", timeout=10) as r:
        return json.loads(r.read() or b"{}")


def node_images(cluster, image_prefix, remove=False):
    """The images named with ``image_prefix`` that the node's containerd pulled
    (by name and by digest); ``remove``: remove them first (their layers go with
    containerd's garbage collection). None when its socket is not there."""
    socket = Path(cluster["kubeconfig"]).parent / "containerd" / "containerd.sock"
    if not socket.exists():
        return None
    ctr = ["ctr", "-a", str(socket), "-n", "k8s.io", "images"]

    def listed():
        out = subprocess.run([*ctr, "ls", "-q"], capture_output=True, text=True, timeout=60)
        return [name for name in out.stdout.split() if name.startswith(image_prefix)]

    if remove and listed():
        subprocess.run([*ctr, "rm", *listed()], capture_output=True, timeout=120)
    return listed()


def cleanup_images(image_prefix):
    """Delete every manifest under ``image_prefix`` from the registry (by digest:
    it runs with delete enabled) and every local image named with it."""
    registry, path = image_prefix.split("/", 1)
    problems = []
    try:
        catalog = _registry_get(registry, "/v2/_catalog?n=1000").get("repositories") or []
    except (OSError, ValueError) as e:
        catalog = []
        problems.append(f"registry catalog: {e}")
    for name in catalog:
        if not name.startswith(path):
            continue
        tags = _registry_get(registry, f"/v2/{name}/tags/list").get("tags") or []
        digests = {registry_digest(f"{registry}/{name}:{tag}") for tag in tags} - {None}
        for digest in digests:
            request = urllib.request.Request(
                f"http://{registry}/v2/{name}/manifests/{digest}", method="DELETE"
            )
            try:
                with urllib.request.urlopen(request, timeout=10):
                    pass
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    problems.append(f"DELETE {name}@{digest}: {e.code}")
    names = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    mine = [n for n in names if n.startswith(image_prefix)]
    if mine:
        subprocess.run(["docker", "rmi", "-f", *mine], capture_output=True)
    return problems


# -- the node's cgroups ----------------------------------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")


def container_cgroup(controller, pod, container):
    """The cgroup of ``pod``'s container ``container`` on this host, the cluster's
    node (the kubelet's cgroupfs driver: ``kubepods[/<qos>]/pod<uid>/<container id>``
    under the ``controller``'s hierarchy with cgroup v1, under the root with v2)."""
    statuses = [s for s in pod.status.container_statuses or [] if s.name == container]
    assert statuses and statuses[0].container_id, (
        f"pod {pod.metadata.name}: no container {container} running: {pod.status.container_statuses}"
    )
    container_id = statuses[0].container_id.split("://", 1)[-1]
    unified = (CGROUP_ROOT / "cgroup.controllers").exists()
    kubepods = CGROUP_ROOT / ("" if unified else controller) / "kubepods"
    found = list(kubepods.glob(f"**/pod{pod.metadata.uid}/{container_id}"))
    assert found, (
        f"no {controller} cgroup under {kubepods} for container {container} "
        f"({container_id}) of pod {pod.metadata.name} (uid {pod.metadata.uid})"
    )
    return found[0]


def cgroup_limits(pod, container="notebook"):
    """``(memory bytes, CPUs)`` the kernel enforces on ``pod``'s container: cgroup
    v1's ``memory.limit_in_bytes`` and ``cpu.cfs_quota_us / cpu.cfs_period_us``
    (v2's ``memory.max`` and ``cpu.max``); None for either when unlimited."""
    memory_dir = container_cgroup("memory", pod, container)
    cpu_dir = container_cgroup("cpu", pod, container)
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        memory = (memory_dir / "memory.max").read_text().strip()
        quota, period = (cpu_dir / "cpu.max").read_text().split()
        memory = None if memory == "max" else int(memory)
        cpus = None if quota == "max" else int(quota) / int(period)
        return memory, cpus
    memory = int((memory_dir / "memory.limit_in_bytes").read_text())
    quota = int((cpu_dir / "cpu.cfs_quota_us").read_text())
    period = int((cpu_dir / "cpu.cfs_period_us").read_text())
    # v1 says "unlimited" with the largest page-aligned value, and a quota of -1
    return (None if memory >= 2**62 else memory), (None if quota < 0 else quota / period)


# -- the Kubernetes API ----------------------------------------------------------------


def parse_quantity(value):
    """A Kubernetes quantity (``"500m"``, ``"536870912"``, ``"64M"``, ``"1Gi"``) as a float."""
    value = str(value)
    units = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


class Cluster:
    """The cluster's API for one test module (``await Cluster.connect(kubeconfig)``)."""

    def __init__(self, api_client, namespace):
        from kubernetes_asyncio import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    @classmethod
    async def connect(cls, kubeconfig, namespace):
        from kubernetes_asyncio import config

        api_client = await config.new_client_from_config(config_file=kubeconfig)
        return cls(api_client, namespace)

    @classmethod
    @contextlib.asynccontextmanager
    async def with_namespace(cls, kubeconfig):
        """The cluster's API with a new namespace of its own, deleted afterwards."""
        kube = await cls.connect(kubeconfig, new_namespace())
        await kube.create_namespace()
        try:
            yield kube
        finally:
            await kube.delete_namespace()
            await kube.close()

    async def close(self):
        await self.api_client.close()

    async def create_namespace(self):
        await self.core.create_namespace({"metadata": {"name": self.namespace}})

        # pods need the namespace's "default" service account, made by the controller
        async def account():
            accounts = await self.core.list_namespaced_service_account(self.namespace)
            return any(a.metadata.name == "default" for a in accounts.items)

        await wait_until(account, 60, f"the service account of {self.namespace}")

    async def delete_namespace(self, timeout=120):
        """Delete the namespace (its pods and claims with it) and wait until it is gone."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await self.core.delete_namespace(self.namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise

        async def gone():
            try:
                await self.core.read_namespace(self.namespace)
            except ApiException as e:
                if e.status == 404:
                    return True
                raise
            return False

        await wait_until(gone, timeout, f"namespace {self.namespace} deleted")

    async def pods(self):
        return (await self.core.list_namespaced_pod(self.namespace)).items

    async def pod_of(self, user, server):
        """The pod of ``user``'s server ``server`` (by KubeSpawner's annotations), or None."""
        for pod in await self.pods():
            annotations = pod.metadata.annotations or {}
            if (
                annotations.get("hub.jupyter.org/username") == user
                and annotations.get("hub.jupyter.org/servername") == server
            ):
                return pod
        return None

    async def wait_no_pod(self, user, server, timeout=90):
        async def gone():
            return await self.pod_of(user, server) is None

        await wait_until(gone, timeout, f"pod of {user}/{server} deleted")

    async def claim(self, name):
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await self.core.read_namespaced_persistent_volume_claim(name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def claims(self):
        return (await self.core.list_namespaced_persistent_volume_claim(self.namespace)).items

    async def events_of(self, name):
        events = await self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        )
        return [f"{e.type} {e.reason}: {e.message}" for e in events.items]

    async def describe(self):
        """Everything in the namespace, for a failing test: pods (status, events,
        logs of each container) and claims."""
        lines = [f"---- namespace {self.namespace} ----"]
        try:
            for pod in await self.pods():
                name = pod.metadata.name
                lines.append(f"pod {name}: {pod.status.phase} on {pod.spec.node_name}")
                for condition in pod.status.conditions or []:
                    why = f"{condition.reason or ''} {condition.message or ''}"
                    lines.append(f"  {condition.type}={condition.status} {why}")
                lines += [f"  event {e}" for e in await self.events_of(name)]
                containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
                for container in containers:
                    try:
                        log = await self.core.read_namespaced_pod_log(
                            name, self.namespace, container=container.name, tail_lines=40
                        )
                    except Exception as e:  # noqa: BLE001 (a dump for a failing test)
                        log = f"(no log: {e.__class__.__name__})"
                    lines.append(f"  log of {container.name}:\n{log}")
            for claim in await self.claims():
                lines.append(f"claim {claim.metadata.name}: {claim.status.phase}")
        except Exception as e:  # noqa: BLE001
            lines.append(f"(could not describe: {e!r})")
        return "\n".join(lines)


async def wait_until(check, timeout, what, interval=0.5):
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)
