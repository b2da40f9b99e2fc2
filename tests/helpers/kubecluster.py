"""The real one-node Kubernetes and image registry of ``./dev kube up``, for tests.

``kube_cluster()`` gives ``{"kubeconfig": path, "registry": "host:port", "host_ip": ...}``:
from the environment (``TLJH_R2D_KUBECONFIG`` and ``TLJH_R2D_REGISTRY``) when both are
set, else by running ``./dev kube up`` (idempotent: seconds when already up, a few minutes
for a first build) and reading its last two lines. When the cluster cannot come up the
test fails under ``CI=true`` and is skipped elsewhere, with the reason.

``host_ip`` is the host's address on the cluster's bridge: pods reach services of the
host (JupyterHub's API) there, if those listen on it (or on 0.0.0.0).
"""

import os
import subprocess
from pathlib import Path

from tests.helpers.fixtures import need

ROOT = Path(__file__).resolve().parents[2]
# The bridge address scripts/kube.sh gives the host (BRIDGE_IP there).
HOST_IP = "10.244.0.1"
NODE_SELECTOR = {"hub.jupyter.org/node-purpose": "user"}
UP_TIMEOUT = 25 * 60

_cluster = None


def _parse(stdout):
    """The last two lines of `./dev kube up`: KUBECONFIG=<path> and REGISTRY=<host:port>."""
    lines = stdout.strip().splitlines()[-2:]
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    if set(values) != {"KUBECONFIG", "REGISTRY"}:
        raise ValueError(f"unexpected last lines of ./dev kube up: {lines!r}")
    return values["KUBECONFIG"], values["REGISTRY"]


def kube_cluster():
    global _cluster
    if _cluster is not None:
        return _cluster
    kubeconfig = os.environ.get("TLJH_R2D_KUBECONFIG")
    registry = os.environ.get("TLJH_R2D_REGISTRY")
    if not (kubeconfig and registry):
        if os.geteuid() != 0:
            need("./dev kube up needs root (containerd, the kubelet, iptables)")
        try:
            proc = subprocess.run(
                [str(ROOT / "dev"), "kube", "up"],
                capture_output=True,
                text=True,
                timeout=UP_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            need(f"./dev kube up did not finish within {UP_TIMEOUT}s")
        if proc.returncode != 0:
            need(f"./dev kube up failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        try:
            kubeconfig, registry = _parse(proc.stdout)
        except ValueError as e:
            need(str(e))
    if not Path(kubeconfig).is_file():
        need(f"no kubeconfig at {kubeconfig}")
    _cluster = {"kubeconfig": kubeconfig, "registry": registry, "host_ip": HOST_IP}
    return _cluster


def pod_manifest(name, image, command, labels=None, **container):
    """A one-container pod for the user node (NODE_SELECTOR) that runs ``command``
    once in ``image``, always pulled from its registry; ``container``: more fields
    of the container (e.g. ``resources``)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "spec": {
            "nodeSelector": NODE_SELECTOR,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Always",
                    "command": command,
                    **container,
                }
            ],
        },
    }
