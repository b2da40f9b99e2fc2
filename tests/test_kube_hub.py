"""Pods that run (issue 21): Repo2DockerKubeSpawner on the real cluster of ``./dev kube up``.

A real JupyterHub and its proxy on the host, the service as a managed service
building with the local Docker engine and pushing to the cluster's registry,
and ``Repo2DockerKubeSpawner`` starting the users' servers as pods in a
namespace of this module's own (``tests/helpers/kubehub.py``). One hub for the
module and three environments, all built from the single-user test image:

- ``lab``: the admin's, shared with everyone: 512M, 0.5 CPU, and the node
  selector the cluster's node matches (``hub.jupyter.org/node-purpose=user``);
- ``gpu``: the admin's, with a node selector (``gpu=yes``) no node matches;
- ``private``: sh-owner's (a builder), shared with nobody.

alice's server ``lab`` lives through the first tests (started once, stopped
and started again for her home); at most two pods run at a time. The hub's log
and everything in the namespace (pods, their events and logs, claims) are
printed when a test fails. The namespace (pods, claims), the pushed manifests,
the local images and those the node pulled are removed afterwards.

Fails (does not skip) under ``CI=true`` when the cluster cannot come up.
"""

import time

import httpx
import pytest

from tests.helpers.buildutils import FINAL, dockerfile, token
from tests.helpers.gitserver import make_repo
from tests.helpers.kubecluster import kube_cluster
from tests.helpers.kubehub import (
    BUILDER_PUSH,
    HOME_CLAIM,
    NODE_LABEL,
    START_TIMEOUT,
    UNSCHEDULABLE_TIMEOUT,
    Cluster,
    cleanup_images,
    kube_hub,
    new_namespace,
    node_images,
    parse_quantity,
    publish,
    registry_prefix,
)
from tests.helpers.servers import Files, wait_server
from tests.helpers.utils import HubUser, admin_api, figure, make_token
from tljh_repo2docker.contract import version_reference

pytestmark = [pytest.mark.kube, pytest.mark.hub, pytest.mark.docker]

USERS = ["admin", "alice", "sh-owner"]
WAIT = START_TIMEOUT + 30


@pytest.fixture(scope="module")
def cluster():
    return kube_cluster()


@pytest.fixture(scope="module")
async def kube(cluster):
    """The cluster's API, with this module's namespace (deleted afterwards)."""
    kube = await Cluster.connect(cluster["kubeconfig"], new_namespace())
    await kube.create_namespace()
    try:
        yield kube
    finally:
        await kube.delete_namespace()
        await kube.close()


@pytest.fixture(scope="module")
def image_prefix(cluster, docker_engine):
    prefix = registry_prefix(cluster)
    yield prefix
    left_on_node = node_images(cluster, prefix, remove=True)
    assert not cleanup_images(prefix)
    assert not left_on_node, left_on_node


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images, cluster, kube, image_prefix):
    """This module's hub (it shadows the session's): servers are pods."""
    with kube_hub(tmp_path_factory.mktemp("kube-hub"), cluster, kube.namespace, image_prefix) as info:
        yield info


@pytest.fixture(autouse=True)
async def _namespace_on_failure(request, kube):
    """Print the namespace's pods, events, logs and claims when a test fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(await kube.describe())


@pytest.fixture(scope="module")
async def callers(hub):
    users = {name: await HubUser.login(hub, name) for name in USERS}
    yield users
    for user in users.values():
        await user.close()


@pytest.fixture(scope="module")
async def environments(hub, callers, git_server, git_root):
    """``{"lab", "gpu", "private"}``: built, and in the registry with their version tag
    (``digest``: the registry's manifest digest of the version tag)."""
    specs = {
        "lab": ("admin", {"memory": "512M", "cpu": "0.5", "node_selector": {NODE_LABEL: "user"}}),
        "gpu": ("admin", {"memory": "256M", "cpu": "0.25", "node_selector": {"gpu": "yes"}}),
        "private": ("sh-owner", {}),
    }
    started = time.monotonic()
    made = {}
    for key, (user, body) in specs.items():
        name = f"k-{key}-{token()}"
        make_repo(git_root, name, {"Dockerfile": dockerfile()})
        body = {"repo": git_server.url(name), "name": name, **body}
        made[key] = (callers[user], await callers[user].create_env(body))
    built = {}
    for key, (user, env) in made.items():
        env = await user.wait_env(env["uid"], FINAL, timeout=600)
        assert env["status"] == "built", env
        version = version_reference(env["image_name"], 1)
        digests = publish([env["image_name"], version])
        built[key] = {**env, "version_image": version, "digest": digests[version]}
    figure(
        f"kube: 3 environments built and in the registry in {time.monotonic() - started:.1f} s "
        f"(pushed by {'the service' if BUILDER_PUSH else 'hand'})"
    )
    assert built["private"]["sharing"]["everyone"] is False
    return built


async def ensure_running(user, name, env):
    """``user``'s server ``name`` from ``env``, started through the service if it is not running."""
    r = await user.api("GET", "api/servers")
    servers = {s["name"]: s for s in r.json()["servers"]}
    if servers.get(name, {}).get("status") == "running":
        return servers[name]
    r = await user.api("POST", "api/servers", json={"name": name, "environment": env["name"]})
    assert r.status_code == 202, r.text
    return await wait_server(user, name, timeout=WAIT)


@pytest.fixture(scope="module")
def alice_files(hub):
    return Files(hub, "alice")


@pytest.fixture(scope="module")
async def alice_api(hub):
    """The hub's REST API with a token of alice's own (what she may send herself)."""
    token = make_token(hub, "alice", ["servers!user=alice", "read:users!user=alice"])
    async with httpx.AsyncClient(
        base_url=hub.api, headers={"Authorization": f"token {token}"}, timeout=60
    ) as client:
        yield client


def container_of(pod):
    [container] = [c for c in pod.spec.containers if c.name == "notebook"]
    return container


# -- (1) a server from an environment is a pod that runs its image -------------------------


async def test_a_server_is_a_pod_of_the_environments_image_behind_the_proxy(
    hub, callers, environments, kube, alice_files
):
    alice, env = callers["alice"], environments["lab"]
    started = time.monotonic()
    r = await alice.api("POST", "api/servers", json={"name": "lab", "environment": env["name"]})
    assert r.status_code == 202, r.text
    assert r.json()["url"] == "/user/alice/lab/"
    server = await wait_server(alice, "lab", timeout=WAIT)
    assert server["environment"] == env["name"] and server["environment_uid"] == env["uid"]

    pod = await kube.pod_of("alice", "lab")
    assert pod is not None and pod.status.phase == "Running", pod and pod.status
    container = container_of(pod)
    # the current version's own tag, pulled from the registry (its digest)
    assert container.image == env["version_image"]
    assert container.image.startswith(hub.image_prefix)
    [status] = [s for s in pod.status.container_statuses if s.name == "notebook"]
    assert status.ready
    assert status.image_id.endswith(env["digest"]), (status.image_id, env["digest"])
    # the environment's limits and node selector, on the node that matches it
    limits = container.resources.limits
    assert parse_quantity(limits["cpu"]) == pytest.approx(0.5)
    assert parse_quantity(limits["memory"]) == 512 * 2**20
    assert pod.spec.node_selector == {NODE_LABEL: "user"}
    node = await kube.core.read_node(pod.spec.node_name)
    assert node.metadata.labels[NODE_LABEL] == "user"
    # the user's home is a claim of its own, mounted where the image's user lives
    [mount] = [m for m in container.volume_mounts if m.mount_path == "/home/jovyan"]
    [volume] = [v for v in pod.spec.volumes if v.name == mount.name]
    assert volume.persistent_volume_claim.claim_name == HOME_CLAIM.format(username="alice")

    # the spawner's state names what the pod runs (README: environment_image, image_id)
    with admin_api(hub) as api:
        state = api.get("users/alice").json()["servers"]["lab"]["state"]
    assert state["environment_image"] == env["version_image"]
    assert state["environment_uid"] == env["uid"]
    assert state["image_id"] == env["image_id"]
    assert state["pod_name"] == pod.metadata.name

    # the single-user server answers through the hub's proxy, with the user's token
    r = await alice_files.client.get("user/alice/lab/api")
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert "version" in r.json()
    r = await alice_files.client.get("user/alice/lab/api/status")
    assert r.status_code == 200 and "started" in r.json()
    # and the browser's way in: opening it runs the single-user server's own
    # OAuth with the hub, then its API answers with that cookie
    r = await alice.client.get("user/alice/lab/")
    assert r.status_code == 200, (r.status_code, r.url)
    r = await alice.client.get("user/alice/lab/api/status")
    assert r.status_code == 200, (r.status_code, r.url)
    figure(f"kube: first server start (image pulled) to answering: {time.monotonic() - started:.1f} s")


# -- (5) the service's list of servers shows the pod's server ----------------------------


async def test_the_servers_list_shows_the_pods_server_with_status_and_version(callers, environments):
    alice, env = callers["alice"], environments["lab"]
    server = await ensure_running(alice, "lab", env)
    assert server["status"] == "running"
    assert server["environment"] == env["name"]
    assert server["environment_uid"] == env["uid"]
    assert server["url"] == "/user/alice/lab/"
    assert server["error"] is None
    assert server["version"] == 1, server
    assert server["newer_version"] is False, server


# -- (2) the home is a claim that outlives the pod -----------------------------------------


async def test_the_home_claim_survives_stop_and_start(callers, environments, kube, alice_files):
    alice, env = callers["alice"], environments["lab"]
    await ensure_running(alice, "lab", env)
    text = f"kept {token()}"
    await alice_files.write("lab", "kube-home/note.txt", text)
    first = await kube.pod_of("alice", "lab")

    r = await alice.api("DELETE", "api/servers/lab")
    assert r.status_code == 202, r.text
    await wait_server(alice, "lab", "stopped", timeout=WAIT)
    await kube.wait_no_pod("alice", "lab")
    claim = await kube.claim(HOME_CLAIM.format(username="alice"))
    assert claim is not None and claim.status.phase == "Bound"
    labels = claim.metadata.labels
    assert labels["tljh_repo2docker.home"] == "1"
    assert labels["tljh_repo2docker.home.user"] == "alice"

    started = time.monotonic()
    r = await alice.api("POST", "api/servers", json={"name": "lab", "environment": env["name"]})
    assert r.status_code == 202, r.text
    await wait_server(alice, "lab", timeout=WAIT)
    second = await kube.pod_of("alice", "lab")
    assert second.metadata.uid != first.metadata.uid  # a new pod, the same claim
    assert await alice_files.read("lab", "kube-home/note.txt") == text
    figure(f"kube: server start again (image on the node) to running: {time.monotonic() - started:.1f} s")


# -- (3) what a user sends the hub's REST API cannot pick image, limits or nodes -------------


async def spawn_outcome(api, hub, name, options, timeout=WAIT):
    """Start alice's server ``name`` with ``options`` through the hub's REST API:
    ``("refused", message)`` or ``("running", None)``."""
    r = await api.post(f"users/alice/servers/{name}", json={"user_options": options})
    if r.status_code >= 400:
        return "refused", r.json().get("message", r.text)
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + timeout
    with admin_api(hub) as admin:
        while time.monotonic() < deadline:
            model = admin.get("users/alice", params={"include_stopped_servers": "1"}).json()
            server = model["servers"].get(name) or {}
            if server.get("ready"):
                return "running", None
            if not server.get("pending"):
                r = admin.get(f"users/alice/servers/{name}/progress")
                messages = [line for line in r.text.splitlines() if line.startswith("data:")]
                return "refused", messages[-1] if messages else ""
            time.sleep(0.5)
    raise TimeoutError(f"alice/{name} still pending after {timeout}s")


async def remove_server(hub, kube, name):
    with admin_api(hub) as admin:
        admin.request("DELETE", f"users/alice/servers/{name}", json={"remove": True})
        for _ in range(240):
            if name not in admin.get("users/alice").json()["servers"]:
                break
            time.sleep(0.5)
    await kube.wait_no_pod("alice", name)


async def test_forged_user_options_cannot_pick_image_limits_or_nodes(
    hub, callers, environments, kube, alice_api
):
    lab, private = environments["lab"], environments["private"]

    # another user's private environment, by its uid and its image: refused
    outcome = await spawn_outcome(
        alice_api, hub, "forged-private",
        {"environment": private["uid"], "image": private["version_image"]},
    )
    assert outcome[0] == "refused" and "You may not start the environment" in outcome[1], outcome
    assert await kube.pod_of("alice", "forged-private") is None
    await remove_server(hub, kube, "forged-private")

    # an image of the hub's registry without an environment: refused
    outcome = await spawn_outcome(
        alice_api, hub, "forged-image", {"image": lab["version_image"]}
    )
    assert outcome[0] == "refused" and "No environment was chosen" in outcome[1], outcome
    assert await kube.pod_of("alice", "forged-image") is None
    await remove_server(hub, kube, "forged-image")

    # the lab environment with a foreign image, bigger limits and another node:
    # the pod gets what the database says
    forged = {
        "environment": lab["uid"],
        "image": "docker.io/library/busybox:latest",
        "metadata": {
            "memory": "8G",
            "cpu": 2,
            "node_selector": {"kubernetes.io/hostname": "elsewhere"},
            "display_name": "forged",
        },
    }
    try:
        outcome = await spawn_outcome(alice_api, hub, "forged-lab", forged)
        assert outcome == ("running", None), outcome
        pod = await kube.pod_of("alice", "forged-lab")
        container = container_of(pod)
        assert container.image == lab["version_image"]
        assert parse_quantity(container.resources.limits["cpu"]) == pytest.approx(0.5)
        assert parse_quantity(container.resources.limits["memory"]) == 512 * 2**20
        assert pod.spec.node_selector == {NODE_LABEL: "user"}
    finally:
        await remove_server(hub, kube, "forged-lab")


# -- (4) no node for the environment: a clear failure, not a timeout -------------------------


async def test_no_node_matching_the_selector_fails_saying_so(callers, environments, kube):
    alice, env = callers["alice"], environments["gpu"]
    started = time.monotonic()
    r = await alice.api("POST", "api/servers", json={"name": "gpu", "environment": env["name"]})
    assert r.status_code in (202, 400, 500), r.text
    try:
        server = await wait_server(alice, "gpu", "stopped", timeout=WAIT)
        took = time.monotonic() - started
        figure(
            f"kube: unschedulable pod reported after {took:.1f} s "
            f"(unschedulable_timeout {UNSCHEDULABLE_TIMEOUT} s)"
        )
        error = server["error"] or ""
        assert "gpu=yes (its node selector)" in error, server
        assert "0/1 nodes are available" in error, server  # the scheduler's own words
        assert took < START_TIMEOUT - 30, f"took {took:.0f}s: the start timed out"
        await kube.wait_no_pod("alice", "gpu")
    finally:
        await alice.api("DELETE", "api/servers/gpu", params={"remove": "true"})
