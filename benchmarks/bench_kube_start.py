"""Server start on Kubernetes vs Docker: the hub's REST API to the server answering.

Run on demand (real Docker, JupyterHub, proxy, and the one-node cluster of
``./dev kube up`` with its registry; everything on 127.0.0.1 and the cluster's
bridge):

    .venv/bin/python benchmarks/bench_kube_start.py [--rounds 5] [--warmup 1]

For each engine, a hub of the tests' configuration with the service builds
one environment (a Dockerfile on the single-user test image), then starts a
named server from it ``--warmup + --rounds`` times through the hub's REST API
(``POST /hub/api/users/admin/servers/<name>`` with the environment in
``user_options``, as the service sends it) and measures the time until
``GET /user/admin/<name>/api/status`` answers 200 through the proxy; each
server is removed (and its pod or container gone) before the next round.

1. Kubernetes: ``Repo2DockerKubeSpawner``, pods in a namespace of its own,
   the image pushed to the cluster's registry by the service and pulled by
   the node (in the warm-up round), the home a claim made in the warm-up
   round (``tests/helpers/kubehub.py``'s hub).
2. Docker: ``Repo2DockerSpawner`` on the local engine (the tests' hub).

Prints p50/p90/mean for each and the ratio of the medians Kubernetes /
Docker. The warm-up rounds (image pull, claim) are printed apart. Everything
made is removed afterwards: the namespace, pushed manifests, the images the
node pulled, the local images.
"""

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
from common import time_starts

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.buildutils import dockerfile  # noqa: E402
from tests.helpers.fixtures import running_hub  # noqa: E402
from tests.helpers.gitserver import GitServer, make_repo  # noqa: E402
from tests.helpers.kubecluster import kube_cluster  # noqa: E402
from tests.helpers.kubehub import (  # noqa: E402
    Cluster,
    cleanup_images,
    kube_hub,
    new_namespace,
    node_images,
    publish,
    registry_prefix,
)
from tests.helpers.utils import HubUser, admin_api, remove_test_images  # noqa: E402
from tljh_repo2docker.contract import version_reference  # noqa: E402


async def build(hub_info, git, name):
    """One environment built through the service's API: its model."""
    admin = await HubUser.login(hub_info, "admin")
    try:
        env = await admin.create_env({"repo": git.url(name), "name": f"bench-{name}"})
        env = await admin.wait_env(env["uid"], {"built", "failed"}, timeout=600)
    finally:
        await admin.close()
    if env["status"] != "built":
        raise RuntimeError(f"the build failed: {env}")
    return env


def remove(hub_info, name, timeout=300):
    with admin_api(hub_info) as api:
        api.request("DELETE", f"users/admin/servers/{name}", json={"remove": True})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name not in api.get("users/admin").json().get("servers", {}):
                return
            time.sleep(0.1)
    raise TimeoutError(f"server {name} not removed")


async def start_rounds(hub_info, env, rounds, prefix, gone=None):
    """Seconds from the POST to the answer through the proxy, for each round."""
    options = {"environment": env["uid"], "image": env["image_name"]}

    async def after(name):
        remove(hub_info, name)
        if gone is not None:
            await gone(name)

    names = [f"{prefix}{number}" for number in range(rounds)]
    return await time_starts(
        hub_info, names, {"user_options": options}, after, timeout=300, client_timeout=60
    )


async def on_kubernetes(git, rounds):
    cluster = kube_cluster()
    kube = await Cluster.connect(cluster["kubeconfig"], new_namespace())
    prefix = registry_prefix(cluster)
    await kube.create_namespace()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            with kube_hub(Path(tmp), cluster, kube.namespace, prefix) as hub_info:
                env = await build(hub_info, git, "kube")
                publish([env["image_name"], version_reference(env["image_name"], 1)])

                async def gone(name):
                    await kube.wait_no_pod("admin", name, timeout=120)

                return await start_rounds(hub_info, env, rounds, "kube", gone)
    finally:
        await kube.delete_namespace()
        await kube.close()
        node_images(cluster, prefix, remove=True)
        cleanup_images(prefix)


async def on_docker(git, rounds):
    with tempfile.TemporaryDirectory() as tmp:
        with running_hub(Path(tmp)) as hub_info:
            env = await build(hub_info, git, "docker")
            return await start_rounds(hub_info, env, rounds, "dock")


def summary(label, times):
    common.summary(label, times, width=44, high=90)


def main():
    args = common.rounds_args(
        __doc__.splitlines()[0],
        warmup_help="first starts of each engine left out (image pull, home claim, cold caches)",
    )
    root = Path(tempfile.mkdtemp())
    git = GitServer(root).start()
    for name in ("kube", "docker"):
        make_repo(root, name, {"Dockerfile": dockerfile()})
    try:
        kube_times = asyncio.run(on_kubernetes(git, args.rounds + args.warmup))
        docker_times = asyncio.run(on_docker(git, args.rounds + args.warmup))
    finally:
        git.stop()
        remove_test_images()
    warm = args.warmup
    for label, times in (("Kubernetes", kube_times), ("Docker", docker_times)):
        if warm:
            print(f"{label} warm-up: " + ", ".join(f"{t:.3f}s" for t in times[:warm]))
    summary("Repo2DockerKubeSpawner (pod, hub REST API)", kube_times[warm:])
    summary("Repo2DockerSpawner (container, hub REST API)", docker_times[warm:])
    ratio = statistics.median(kube_times[warm:]) / statistics.median(docker_times[warm:])
    print(f"ratio (median Kubernetes / median Docker) = {ratio:.3f}")


if __name__ == "__main__":
    main()
