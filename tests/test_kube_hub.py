"""Pods that run (issue 21): Repo2DockerKubeSpawner on the real cluster of ``./dev kube up``.

A real JupyterHub and its proxy on the host, the service as a managed service
building with the local Docker engine and pushing to the cluster's registry,
and ``Repo2DockerKubeSpawner`` starting the users' servers as pods in a
namespace of this module's own (``tests/helpers/kubehub.py``). One hub for the
module and three environments, all built from the single-user test image:

- ``lab``: the admin's, shared with everyone: 512M, 0.5 CPU, and the node
  selector the cluster's node matches (``hub.jupyter.org/node-purpose=user``);
- ``gpu``: the admin's, with a node selector (``gpu=yes``) no node matches;
- ``private``: sh-owner's (a builder), shared with nobody;
- ``ver`` (the ``evolving`` fixture): the admin's, 384M, 0.25 CPU, rebuilt
  once (version 2) and rolled back to version 1 by the later tests.

alice's server ``lab`` lives through the tests (started once, stopped and
started again for her home); each later test runs at most one server of its
own beside it, so at most two pods run at a time. The hub's log
and everything in the namespace (pods, their events and logs, claims) are
printed when a test fails. The namespace (pods, claims), the pushed manifests,
the local images and those the node pulled are removed afterwards.

Fails (does not skip) under ``CI=true`` when the cluster cannot come up.
"""

import html
import re
import subprocess
import time

import httpx
import pytest

from tests.helpers.buildutils import FINAL, dockerfile, token
from tests.helpers.gitserver import GitServer, add_commit, make_repo
from tests.helpers.kubecluster import kube_cluster
from tests.helpers.kubehub import (
    BUILDER_PUSH,
    HOME_CLAIM,
    IMAGE_PULL_TIMEOUT,
    NODE_LABEL,
    START_TIMEOUT,
    UNSCHEDULABLE_TIMEOUT,
    Cluster,
    cgroup_limits,
    cleanup_images,
    content_puller_image,
    kube_hub,
    node_images,
    parse_quantity,
    publish,
    registry_delete,
    registry_prefix,
)
from tests.helpers.servers import Files, wait_server
from tests.helpers.utils import SERVICE, HubUser, admin_api, figure, make_token
from tljh_repo2docker.contract import version_reference
from tljh_repo2docker.limits import memory_bytes

pytestmark = [pytest.mark.kube, pytest.mark.hub, pytest.mark.docker]

USERS = ["admin", "alice", "sh-owner"]
WAIT = START_TIMEOUT + 30


@pytest.fixture(scope="module")
def cluster():
    return kube_cluster()


@pytest.fixture(scope="module")
async def kube(cluster):
    """The cluster's API, with this module's namespace (deleted afterwards)."""
    async with Cluster.with_namespace(cluster["kubeconfig"]) as kube:
        yield kube


@pytest.fixture(scope="module")
def image_prefix(cluster, docker_engine):
    prefix = registry_prefix(cluster)
    yield prefix
    left_on_node = node_images(cluster, prefix, remove=True)
    assert not cleanup_images(prefix)
    assert not left_on_node, left_on_node


@pytest.fixture(scope="module")
def puller_image(cluster, test_images):
    """The spawner's ``content_puller_image``: the builder test image, in the cluster's registry."""
    return content_puller_image(cluster)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images, cluster, kube, image_prefix, puller_image):
    """This module's hub (it shadows the session's): servers are pods."""
    workdir = tmp_path_factory.mktemp("kube-hub")
    with kube_hub(workdir, cluster, kube.namespace, image_prefix, content_puller=puller_image) as info:
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


async def failed_start(user, kube, name, environment, what):
    """Start ``user``'s server ``name`` from ``environment``, which must fail:
    wait until it is stopped, note how long ``what`` took to be reported, check
    that the start did not merely time out and that no pod is left; remove the
    server. Returns the server's error."""
    started = time.monotonic()
    r = await user.api("POST", "api/servers", json={"name": name, "environment": environment})
    assert r.status_code in (202, 400, 500), r.text
    try:
        server = await wait_server(user, name, "stopped", timeout=WAIT)
        took = time.monotonic() - started
        figure(f"kube: {what} reported after {took:.1f} s")
        assert took < START_TIMEOUT - 30, f"took {took:.0f}s: the start timed out"
        await kube.wait_no_pod(user.name, name)
    finally:
        await user.api("DELETE", f"api/servers/{name}", params={"remove": "true"})
    return server["error"] or ""


async def test_no_node_matching_the_selector_fails_saying_so(callers, environments, kube):
    error = await failed_start(
        callers["alice"], kube, "gpu", environments["gpu"]["name"],
        f"unschedulable pod (unschedulable_timeout {UNSCHEDULABLE_TIMEOUT} s)",
    )
    assert "gpu=yes (its node selector)" in error, error
    assert "0/1 nodes are available" in error, error  # the scheduler's own words


# -- (4b) an image the node cannot pull: a clear failure, not a timeout ----------------------


async def test_an_image_gone_from_the_registry_fails_the_start_saying_so(
    hub, callers, git_server, git_root, kube
):
    admin, alice = callers["admin"], callers["alice"]
    name = f"k-gone-{token()}"
    make_repo(git_root, name, {"Dockerfile": dockerfile()})
    env = await admin.create_env({"repo": git_server.url(name), "name": name})
    env = await admin.wait_env(env["uid"], FINAL, timeout=600)
    assert env["status"] == "built", env
    version = version_reference(env["image_name"], 1)
    publish([env["image_name"], version])
    # Never pulled by the node, and now gone from the registry: no node can have it.
    registry_delete(version)
    try:
        error = await failed_start(
            alice, kube, "gone", name, f"unpullable image (image_pull_timeout {IMAGE_PULL_TIMEOUT} s)"
        )
        assert f"could not pull the image {version}" in error, error
        assert "rebuild the environment" in error, error
    finally:
        await admin.api("DELETE", f"api/environments/{env['uid']}")


# -- helpers of the tests below ----------------------------------------------------------------


async def start_server(user, name, env):
    """Start ``user``'s server ``name`` from ``env`` through the service; its model once running."""
    r = await user.api("POST", "api/servers", json={"name": name, "environment": env["name"]})
    assert r.status_code == 202, r.text
    return await wait_server(user, name, timeout=WAIT)


async def running_pod(kube, server, user="alice"):
    """The pod of ``user``'s server ``server``, which must be Running and ready."""
    pod = await kube.pod_of(user, server)
    assert pod is not None, f"no pod for {user}/{server}"
    [status] = [s for s in pod.status.container_statuses or [] if s.name == "notebook"] or [None]
    assert pod.status.phase == "Running" and status is not None and status.ready, (
        f"pod {pod.metadata.name}: {pod.status.phase}, "
        f"events: {await kube.events_of(pod.metadata.name)}"
    )
    return pod


def image_digest_of(pod):
    """The digest of the image the pod's container runs (``containerStatuses[].imageID``)."""
    [status] = [s for s in pod.status.container_statuses if s.name == "notebook"]
    return status.image_id.rpartition("@")[2]


def home_claim_of(pod):
    """The claim mounted at the image user's home in ``pod``, or None."""
    mounts = [m for m in container_of(pod).volume_mounts if m.mount_path == "/home/jovyan"]
    if not mounts:
        return None
    [volume] = [v for v in pod.spec.volumes if v.name == mounts[0].name]
    return volume.persistent_volume_claim and volume.persistent_volume_claim.claim_name


def spawner_state(hub, server, user="alice"):
    with admin_api(hub) as api:
        return api.get(f"users/{user}").json()["servers"][server]["state"]


async def versions_of(user, uid):
    """``{number: version}`` of the environment ``uid`` (GET api/environments/{uid}/versions)."""
    r = await user.api("GET", f"api/environments/{uid}/versions")
    assert r.status_code == 200, r.text
    return {v["number"]: v for v in r.json()["versions"]}


@pytest.fixture(scope="module")
async def evolving(callers, git_server, git_root):
    """``ver``: the admin's environment (384M, 0.25 CPU) that the tests rebuild
    and roll back; built (version 1, in the registry). ``versions``: ``{number:
    {"image", "digest", "image_id", "id"}}``, which ``second_version`` completes."""
    admin = callers["admin"]
    name = f"k-ver-{token()}"
    make_repo(git_root, name, {"Dockerfile": dockerfile("RUN echo version-1")})
    body = {
        "repo": git_server.url(name),
        "name": name,
        "memory": "384M",
        "cpu": "0.25",
        "node_selector": {NODE_LABEL: "user"},
    }
    env = await admin.create_env(body)
    env = await admin.wait_env(env["uid"], FINAL, timeout=600)
    assert env["status"] == "built", env
    image = version_reference(env["image_name"], 1)
    [v1] = (await versions_of(admin, env["uid"])).values()
    assert v1["image_name"] == image and v1["image_id"] == env["image_id"], v1
    version = {"image": image, "digest": publish([image])[image], "image_id": v1["image_id"], "id": v1["id"]}
    return {**env, "versions": {1: version}}


async def second_version(admin, env, git_root):
    """Rebuild ``env`` (``evolving``) from a new commit through the service, once:
    version 2, built, current and in the registry (``env["versions"][2]``)."""
    if 2 in env["versions"]:
        return env["versions"][2]
    started = time.monotonic()
    add_commit(git_root, env["name"], {"Dockerfile": dockerfile("RUN echo version-2")})
    r = await admin.api("POST", f"api/environments/{env['uid']}/rebuild")
    assert r.status_code == 202, r.text
    rebuilt = await admin.wait_env(env["uid"], FINAL, timeout=600)
    assert rebuilt["status"] == "built", rebuilt
    versions = await versions_of(admin, env["uid"])
    assert sorted(versions) == [1, 2], versions
    v2 = versions[2]
    image = version_reference(env["image_name"], 2)
    assert v2["image_name"] == image and v2["current"] is True, v2
    assert v2["image_id"] == rebuilt["image_id"] != env["versions"][1]["image_id"], (v2, rebuilt)
    digest = publish([image])[image]
    assert digest != env["versions"][1]["digest"], "version 2 has version 1's manifest"
    env["versions"][2] = {"image": image, "digest": digest, "image_id": v2["image_id"], "id": v2["id"]}
    figure(f"kube: rebuild (version 2) built and in the registry in {time.monotonic() - started:.1f} s")
    return env["versions"][2]


# -- (6) the environment's limits are in force: the container's cgroup on the node -------------


async def test_the_environments_limits_are_in_the_containers_cgroup(callers, environments, kube):
    alice, lab = callers["alice"], environments["lab"]
    await ensure_running(alice, "lab", lab)
    pod = await running_pod(kube, "lab")
    # what the kernel enforces on the server's processes, not only what the spec asks
    memory, cpus = cgroup_limits(pod)
    assert memory == memory_bytes(lab["memory"]) == 512 * 2**20, (memory, lab["memory"])
    assert cpus == pytest.approx(float(lab["cpu"])), (cpus, lab["cpu"])
    assert cpus == pytest.approx(0.5)


# -- (7) servers start from the hub's spawn form and from a direct link -------------------------


def spawn_form(text):
    """The spawn page's form: ``(action URL, {environment name: the "image" value offered})``."""
    action = re.search(r'id="spawn_form"\s+action="([^"]+)"', text)
    assert action, f"no spawn form in the page: {text[:1000]}"
    offered = re.findall(
        r'name="image"[^>]*value="([^"]*)"[^>]*>\s*<label[^>]*>\s*<strong>([^<]*)</strong>', text
    )
    return html.unescape(action.group(1)), {html.unescape(n): html.unescape(v) for v, n in offered}


async def test_servers_start_from_the_spawn_form_and_from_a_direct_link(hub, callers, environments, kube):
    alice, lab = callers["alice"], environments["lab"]

    async def check_running(server):
        model = await wait_server(alice, server, timeout=WAIT)
        assert model["environment_uid"] == lab["uid"], model
        pod = await running_pod(kube, server)
        assert container_of(pod).image == lab["version_image"]
        assert pod.spec.node_selector == {NODE_LABEL: "user"}
        assert spawner_state(hub, server)["environment_uid"] == lab["uid"]

    # the hub's spawn form, by the image it offers and by the environment's uid
    for server, choice in [("k-form", "image"), ("k-form-uid", "environment")]:
        try:
            r = await alice.client.get(f"hub/spawn/alice/{server}")
            assert r.status_code == 200, (r.status_code, r.text[:500])
            action, offered = spawn_form(r.text)
            assert environments["private"]["name"] not in offered, offered  # not shared with her
            # the current version's own tag, as the spawner starts it
            assert offered.get(lab["name"]) == lab["version_image"], offered
            data = {"image": offered[lab["name"]]} if choice == "image" else {"environment": lab["uid"]}
            r = await alice.client.post(action, data=data)
            error = re.search(r'class="spawn-error-msg[^>]*>(.*?)</p>', r.text, re.S)
            assert r.status_code == 200 and not error, (r.status_code, error and error.group(1))
            await check_running(server)
        finally:
            await remove_server(hub, kube, server)

    # the service's direct link: ?name=…&environment=<uid> starts a new server
    try:
        r = await alice.client.get(
            f"services/{SERVICE}/servers", params={"name": "k-link", "environment": lab["uid"]}
        )
        assert r.status_code == 200, (r.status_code, r.text[:500])
        assert "/user/alice/k-link/" in r.text, r.text[:2000]  # the page follows the launch
        await check_running("k-link")
    finally:
        await remove_server(hub, kube, "k-link")


# -- (8) the home claim outlives a change of environment, a rebuild and the server's removal -----


async def test_the_home_claim_survives_another_environment_a_rebuild_and_removal(
    hub, callers, environments, evolving, kube, alice_files, alice_api, git_root
):
    alice, admin, lab, ver = callers["alice"], callers["admin"], environments["lab"], evolving
    claim_name = HOME_CLAIM.format(username="alice")
    text, path = f"moves {token()}", "kube-home/moves.txt"

    async def file_and_claim(pod):
        mounted = home_claim_of(pod)
        assert mounted == claim_name, f"the pod mounts {mounted!r} at the home, not {claim_name}"
        assert await alice_files.read("home", path) == text, "the file written before is gone"
        claim = await kube.claim(claim_name)
        assert claim is not None, f"the claim {claim_name} is gone"
        assert claim.metadata.uid == first_claim.metadata.uid, (
            f"the claim {claim_name} was made anew", claim.metadata,
        )

    try:
        await start_server(alice, "home", lab)
        pod = await running_pod(kube, "home")
        assert container_of(pod).image == lab["version_image"]
        await alice_files.write("home", path, text)
        assert home_claim_of(pod) == claim_name, pod.spec.volumes
        first_claim = await kube.claim(claim_name)
        assert first_claim is not None, f"no claim {claim_name}: {await kube.claims()}"
        assert first_claim.status.phase == "Bound", first_claim.status

        # another environment for the same server name (home_scope "user"): the
        # service removes the stopped server and starts it anew from ver
        r = await alice.api("DELETE", "api/servers/home")
        assert r.status_code == 202, r.text
        await wait_server(alice, "home", "stopped", timeout=WAIT)
        await kube.wait_no_pod("alice", "home")
        server = await start_server(alice, "home", ver)
        assert server["environment_uid"] == ver["uid"] and server["version"] == 1, server
        pod = await running_pod(kube, "home")
        assert container_of(pod).image == ver["versions"][1]["image"]
        await file_and_claim(pod)
        # the new environment's limits, in force
        memory, cpus = cgroup_limits(pod)
        assert memory == 384 * 2**20 and cpus == pytest.approx(0.25), (memory, cpus)

        # a rebuild: the running server keeps version 1 until it restarts
        v2 = await second_version(admin, ver, git_root)
        assert container_of(await running_pod(kube, "home")).image == ver["versions"][1]["image"]
        r = await alice_api.delete("users/alice/servers/home")
        assert r.status_code in (202, 204), r.text
        await wait_server(alice, "home", "stopped", timeout=WAIT)
        await kube.wait_no_pod("alice", "home")
        # restarted as it is (the hub's stored user_options, which name version 1's tag)
        r = await alice_api.post("users/alice/servers/home", json={"user_options": None})
        assert r.status_code in (201, 202), r.text
        server = await wait_server(alice, "home", timeout=WAIT)
        assert server["version"] == 2 and server["newer_version"] is False, server
        pod = await running_pod(kube, "home")
        assert container_of(pod).image == v2["image"], container_of(pod).image
        assert image_digest_of(pod) == v2["digest"], (image_digest_of(pod), v2["digest"])
        assert spawner_state(hub, "home")["image_id"] == v2["image_id"]
        await file_and_claim(pod)

        # the server removed through the hub's REST API: the claim stays
        r = await alice_api.request("DELETE", "users/alice/servers/home", json={"remove": True})
        assert r.status_code in (202, 204), r.text
        await wait_server(alice, "home", "absent", timeout=WAIT)
        await kube.wait_no_pod("alice", "home")
        claim = await kube.claim(claim_name)
        assert claim is not None, f"removing the server deleted the claim {claim_name}"
        assert claim.metadata.uid == first_claim.metadata.uid, claim.metadata
        assert claim.status.phase == "Bound", claim.status
        # a new server finds the files
        await start_server(alice, "home", ver)
        pod = await running_pod(kube, "home")
        assert container_of(pod).image == v2["image"]
        await file_and_claim(pod)
    finally:
        await remove_server(hub, kube, "home")


# -- (9) a rollback: a new pod starts the older version's own tag --------------------------------


async def test_a_rollback_makes_a_new_pod_start_the_older_versions_tag(
    hub, callers, evolving, kube, git_root
):
    alice, admin, ver = callers["alice"], callers["admin"], evolving
    v1 = ver["versions"][1]
    v2 = await second_version(admin, ver, git_root)
    versions = await versions_of(admin, ver["uid"])
    assert [versions[1]["current"], versions[2]["current"]] == [False, True], versions

    r = await admin.api("POST", f"api/environments/{ver['uid']}/rollback", json={"version": v1["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == v1["id"] and r.json()["image_id"] == v1["image_id"], r.json()
    versions = await versions_of(admin, ver["uid"])
    assert [versions[1]["current"], versions[2]["current"]] == [True, False], versions
    try:
        server = await start_server(alice, "rolled", ver)
        assert server["version"] == 1 and server["newer_version"] is True, server
        pod = await running_pod(kube, "rolled")
        # version 1's own tag in the pod's spec, and the node runs version 1's manifest
        assert container_of(pod).image == v1["image"], container_of(pod).image
        assert image_digest_of(pod) == v1["digest"] != v2["digest"], (image_digest_of(pod), v1, v2)
        state = spawner_state(hub, "rolled")
        assert state["environment_image"] == v1["image"] and state["image_id"] == v1["image_id"], state
    finally:
        await remove_server(hub, kube, "rolled")


# -- (10) content pulled at launch: cloned into the home claim, then merged keeping the user's edit --


@pytest.fixture(scope="module")
def pod_git(cluster, tmp_path_factory):
    """A git server the pods reach: ``(root, server)``, bare repositories over
    HTTP on the host's address on the cluster's bridge (``host_ip``)."""
    root = tmp_path_factory.mktemp("pod-git")
    with GitServer(root, host=cluster["host_ip"]) as server:
        yield root, server


async def content_log(kube, pod):
    """The log of ``pod``'s content init container (what the pull said)."""
    return await kube.core.read_namespaced_pod_log(
        pod.metadata.name, kube.namespace, container="tljh-r2d-content"
    )


async def test_content_at_launch_is_cloned_into_the_claim_then_merged_keeping_the_users_edit(
    hub, callers, environments, kube, alice_files, pod_git, puller_image
):
    alice, lab = callers["alice"], environments["lab"]
    root, git = pod_git
    name = f"course-{token()}"
    make_repo(root, name, {"lesson.md": "line 1\nline 2\n", "README.md": "readme\n"})
    url = git.url(name)

    async def start():
        r = await alice.api(
            "POST", "api/servers", json={"name": "k-content", "environment": lab["name"], "content": url}
        )
        assert r.status_code == 202, r.text
        assert r.json()["url"] == f"/user/alice/k-content/lab/tree/{name}", r.json()
        await wait_server(alice, "k-content", timeout=WAIT)
        return await running_pod(kube, "k-content")

    try:
        started = time.monotonic()
        pod = await start()
        # the home's owner is fixed first, then the pull writes into the claim
        assert [c.name for c in pod.spec.init_containers] == ["home-owner", "tljh-r2d-content"]
        [init] = [c for c in pod.spec.init_containers if c.name == "tljh-r2d-content"]
        assert init.image == puller_image
        # the repository is in the init container's environment, never its command
        assert {e.name: e.value for e in init.env}["CONTENT_REPO"] == url
        assert url not in " ".join(init.command) and git.host not in " ".join(init.command)
        assert "timeout" in init.command[2]
        assert home_claim_of(pod) == HOME_CLAIM.format(username="alice")
        assert "cloned into ~/" + name in await content_log(kube, pod)
        assert await alice_files.read("k-content", f"{name}/lesson.md") == "line 1\nline 2\n"
        env = {e.name: e.value for e in container_of(pod).env}
        assert env["JUPYTERHUB_DEFAULT_URL"] == f"/lab/tree/{name}"
        figure(f"kube: server start with content cloned at launch to running: {time.monotonic() - started:.1f} s")

        # the user edits the lesson in the claim; upstream changes it too and adds a file
        await alice_files.write("k-content", f"{name}/lesson.md", "line 1\nmy answer\n")
        add_commit(root, name, {"lesson.md": "line 1\nline 2, fixed\n", "week2.md": "week 2\n"})
        r = await alice.api("DELETE", "api/servers/k-content")
        assert r.status_code == 202, r.text
        await wait_server(alice, "k-content", "stopped", timeout=WAIT)
        await kube.wait_no_pod("alice", "k-content")

        second = await start()
        assert second.metadata.uid != pod.metadata.uid  # a new pod on the same claim
        assert home_claim_of(second) == HOME_CLAIM.format(username="alice")
        assert "updated ~/" + name in await content_log(kube, second)
        assert await alice_files.read("k-content", f"{name}/lesson.md") == "line 1\nmy answer\n"
        assert await alice_files.read("k-content", f"{name}/week2.md") == "week 2\n"
        assert await alice_files.read("k-content", f"{name}/README.md") == "readme\n"
        # nothing went upstream: no push was tried, and the history is upstream's own
        assert not [r for r in git.requests_for(name) if "receive-pack" in r.path], git.requests_for(name)
        log = subprocess.run(
            ["git", "log", "--format=%s", "main"], cwd=root / f"{name}.git", capture_output=True, text=True
        )
        assert log.stdout.split("\n")[:2] == ["Update", "Initial commit"], log.stdout
    finally:
        await remove_server(hub, kube, "k-content")

