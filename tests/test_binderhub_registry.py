"""The real BinderHub pushes to the cluster's registry, and a pod starts from its image.

BinderHub runs as in ``tests/test_binderhub_real.py``
(``tests/helpers/binderhub_real.py``: a JupyterHub managed service ``binder``
next to ours, ``LocalRepo2dockerBuild`` on this machine's Docker engine,
API-only mode, repositories from a ``git daemon``), but with its registry: the plain-HTTP, no-auth registry of ``./dev kube up``
(``tests/helpers/kubecluster.py``). The settings that make it push:

- ``BinderHub.use_registry`` and an ``image_prefix`` starting with the
  registry: images are named ``<registry>/<prefix>/<slug>:<commit>``;
- ``LocalRepo2dockerBuild.push_secret``: any non-empty value makes BinderHub
  run repo2docker with ``--push`` (``docker buildx build --push``, through the
  engine, which pushes to a loopback registry over plain HTTP unasked). The
  local executor never reads the value: it is the Kubernetes executor's secret;
- ``DockerRegistry.url`` (``http://``) and an empty docker config for
  ``DockerRegistry.docker_config_path``: BinderHub looks images up in the
  registry without credentials (health check, "is it built already?").

An environment built through our service (``--binderhub_url``) gets
BinderHub's image name; the registry holds it; a pod on the cluster's user
node pulls it from the registry and reads the file the build wrote. Asked
again for the same commit, BinderHub finds the image in the registry instead
of building it. Everything made is removed: the namespace, the registry's
manifests and the local images under the run's prefix.
"""

import json
import os
import urllib.request
import uuid

import httpx
import pytest

from tests.helpers.binderhub_real import binderhub_hub, hub_user, local_images, need_binderhub, serve_git
from tests.helpers.buildutils import log_text, read_events, token, wait_for
from tests.helpers.fixtures import SINGLEUSER_IMAGE
from tests.helpers.kubecluster import NODE_SELECTOR, kube_cluster, pod_manifest
from tests.helpers.kubehub import Cluster, cleanup_images, registry_digest

pytestmark = [pytest.mark.kube, pytest.mark.hub, pytest.mark.docker]

DOCKERFILE = f"FROM {SINGLEUSER_IMAGE}\nRUN echo built by BinderHub > /tmp/built\n"
BUILD_TIMEOUT = 300
POD_TIMEOUT = 120
PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName"}


@pytest.fixture(scope="module")
def cluster():
    return kube_cluster()


@pytest.fixture(scope="module")
def image_prefix(cluster, docker_engine):
    """This run's image prefix in the registry; everything under it is removed afterwards."""
    prefix = f"{cluster['registry']}/tljh-r2d-bhreg-{os.getpid()}-{uuid.uuid4().hex[:6]}/"
    yield prefix
    problems = cleanup_images(prefix)
    assert not problems, problems
    assert not local_images(prefix)


@pytest.fixture(scope="module")
def binderhub_venv():
    return need_binderhub()


@pytest.fixture(scope="module")
def git_daemon(tmp_path_factory, test_images):
    with serve_git(tmp_path_factory.mktemp("git-daemon"), {"ok": DOCKERFILE}) as url:
        yield url


@pytest.fixture(scope="module")
def hub(tmp_path_factory, cluster, image_prefix, binderhub_venv, git_daemon):
    workdir = tmp_path_factory.mktemp("binderhub-registry-hub")
    with binderhub_hub(workdir, image_prefix, registry=cluster["registry"]) as hub_info:
        yield hub_info


admin = hub_user("admin")


@pytest.fixture(scope="module")
async def built(hub, admin, git_daemon):
    """One environment built by BinderHub through our service: ``(env, its build log)``."""
    env = await admin.create_env({"repo": git_daemon + "ok.git", "name": f"bhreg-{token()}"})
    events = await read_events(admin, env["uid"], timeout=BUILD_TIMEOUT)
    env = await admin.get_env(env["uid"])
    assert env["status"] == "built", (env, log_text(events)[-4000:])
    return env, log_text(events)


def registry_get(registry, path):
    with urllib.request.urlopen(f"http://{registry}{path}", timeout=10) as r:
        return r.read()


def split_image(registry, image):
    """``<registry>/<repository>:<tag>`` -> ``(repository, tag)``."""
    assert image.startswith(registry + "/"), image
    repository, _, tag = image[len(registry) + 1 :].rpartition(":")
    return repository, tag


async def test_binderhub_checks_the_registry(hub, image_prefix):
    """BinderHub's health lists its registry check, and the check passes (no auth, plain HTTP)."""
    health = httpx.get(hub.binder_url + "health", timeout=10).json()
    checks = {c["service"]: c["ok"] for c in health["checks"]}
    assert checks.get("Docker registry") is True, health
    assert health["ok"] is True, health


async def test_image_pushed_and_stored_as_the_environment(cluster, image_prefix, built, admin):
    env, log = built
    registry = cluster["registry"]
    image = env["image_name"]
    # BinderHub's name: <prefix><slug>:<commit>, in the registry.
    assert image.startswith(image_prefix), env
    repository, tag = split_image(registry, image)
    assert tag == env["commit"] and len(tag) == 40, env
    assert "built by BinderHub" in log
    assert f"pushing {image} with docker" in log, log[-3000:]  # buildx --push

    body = registry_get(registry, f"/v2/{repository}/tags/list")
    assert json.loads(body)["tags"] == [tag]
    assert registry_digest(image).startswith("sha256:")

    # Our service keeps BinderHub's name, as the environment and as its version.
    r = await admin.api("GET", f"api/environments/{env['uid']}/versions")
    assert r.status_code == 200, r.text
    (version,) = r.json()["versions"]
    assert (version["image_name"], version["commit"]) == (image, env["commit"])


async def test_pod_starts_from_the_pushed_image(cluster, built):
    env, _ = built
    # Pulled from the registry, not taken from the engine: the node's
    # containerd and Docker's engine share no images.
    namespace = f"tljh-r2d-bhreg-{uuid.uuid4().hex[:8]}"
    kube = await Cluster.connect(cluster["kubeconfig"], namespace)
    name = "from-binderhub"
    pod = pod_manifest(name, env["image_name"], ["python3", "-c", "print(open('/tmp/built').read())"])
    try:
        await kube.create_namespace()
        await kube.core.create_namespaced_pod(namespace, pod)

        async def finished():
            p = await kube.core.read_namespaced_pod(name, namespace)
            for status in p.status.container_statuses or []:
                waiting = status.state.waiting
                if waiting is not None and waiting.reason in PULL_FAILURES:
                    pytest.fail(f"the node could not pull the image:\n{await kube.describe()}")
            return p.status.phase in ("Succeeded", "Failed") and p

        try:
            p = await wait_for(finished, timeout=POD_TIMEOUT, interval=0.5, what="the pod finished")
        except TimeoutError:
            pytest.fail(f"the pod did not finish within {POD_TIMEOUT}s:\n{await kube.describe()}")
        assert p.status.phase == "Succeeded", await kube.describe()
        node = await kube.core.read_node(p.spec.node_name)
        for key, value in NODE_SELECTOR.items():
            assert node.metadata.labels.get(key) == value
        (status,) = p.status.container_statuses
        # the image the node ran is the one in the registry
        assert status.image_id.endswith(registry_digest(env["image_name"])), (
            status.image_id
        )
        log = await kube.core.read_namespaced_pod_log(name, namespace)
        assert log.strip() == "built by BinderHub", log
    finally:
        try:
            await kube.delete_namespace()
        finally:
            await kube.close()


async def test_binderhub_finds_the_pushed_image(cluster, built, admin, git_daemon):
    """Asked again for the same commit, BinderHub finds the image in the registry."""
    env, _ = built
    again = await admin.create_env({"repo": git_daemon + "ok.git", "name": f"bhreg-{token()}"})
    events = await read_events(admin, again["uid"], timeout=BUILD_TIMEOUT)
    again = await admin.get_env(again["uid"])
    log = log_text(events)
    assert again["status"] == "built", (again, log[-3000:])
    assert again["image_name"] == env["image_name"], again
    assert "Found built image" in log, log[-3000:]
    assert "pushing layer" not in log, log[-3000:]
    repository, tag = split_image(cluster["registry"], env["image_name"])
    body = registry_get(cluster["registry"], f"/v2/{repository}/tags/list")
    assert json.loads(body)["tags"] == [tag]
