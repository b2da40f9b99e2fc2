"""The Littlest JupyterHub plugin: Docker servers from built environments.

TLJH finds this module through the ``tljh`` entry point and calls its hooks
with pluggy. Install with ``bootstrap.py --plugin <this package>``; TLJH
installs plugins into the hub's environment, so this package (and its
dependency dockerspawner) are there before the hooks run.
"""

import logging

import pluggy

from . import tljh_config
from .spawners.docker import Repo2DockerSpawner

hookimpl = pluggy.HookimplMarker("tljh")
log = logging.getLogger(__name__)

#: Gateway of Docker's default bridge network when it cannot be asked.
DEFAULT_BRIDGE_IP = "172.17.0.1"


def docker_bridge_ip(network="bridge"):
    """The host's address on a Docker network, where containers can reach the hub."""
    import docker  # dockerspawner's dependency; imported here to keep this module light

    try:
        client = docker.from_env(timeout=5)
        try:
            ipam = client.networks.get(network).attrs["IPAM"]["Config"]
        finally:
            client.close()
        gateway = next((c["Gateway"] for c in ipam or () if c.get("Gateway")), None)
        if not gateway:
            raise LookupError("its IPAM configuration names no gateway")
        return gateway
    except Exception as e:  # no engine, no such network, no gateway: use Docker's default
        log.warning(
            "Could not read the gateway of Docker network %r (%s); using %s",
            network,
            e,
            DEFAULT_BRIDGE_IP,
        )
        return DEFAULT_BRIDGE_IP


@hookimpl
def tljh_extra_hub_pip_packages():
    # Not this package itself: TLJH installs the hub's packages with
    # `pip install --upgrade`, which would replace the plugin TLJH installed
    # (from a wheel, a path or git) by whatever the index holds under its name.
    return ["dockerspawner>=13,<15"]


@hookimpl
def tljh_custom_jupyterhub_config(c):
    configure_docker(c)
    # the service as TLJH's config.yaml says (services.tljh_repo2docker.*)
    tljh_config.configure(c)


def configure_docker(c):
    """Spawn servers as Docker containers of the built environments."""
    c.JupyterHub.spawner_class = Repo2DockerSpawner
    # The service starts each environment as a named server.
    c.JupyterHub.allow_named_servers = True

    # Containers on Docker's bridge reach the hub at the host's address on
    # that bridge. Binding the hub there (rather than 0.0.0.0) keeps its
    # internal port off the public network; TLJH's proxy and the service run
    # on the host, which has that address too. At boot, systemd restarts the
    # hub until Docker has made the bridge.
    c.JupyterHub.hub_ip = docker_bridge_ip()

    # Images are built on this machine; there is nothing to pull.
    c.DockerSpawner.pull_policy = "never"
    # Only the environments of this hub's service: the spawner's default
    # image_prefix is the service's, and tljh_config.configure() gives every
    # spawner the one set in TLJH's config.
    # repo2docker images have no entrypoint for JupyterHub; start the
    # single-user server explicitly.
    c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
    # Users' files are in their home volume (Repo2DockerSpawner.home_scope,
    # one per user by default), which outlives containers. Stopped containers
    # are kept all the same (TLJH's idle culler stops servers after ten
    # minutes): what users installed outside their home (pip or conda into
    # the environment) stays until the environment changes or is rebuilt, or
    # the server is deleted. Containers made by 3.x, without a home volume,
    # have their home copied into the volume when they are replaced.
    c.DockerSpawner.remove = False
    # DockerSpawner's default names are kept: jupyter-<user> and
    # jupyter-<user>--<server>, one container per server and no image in the
    # name, so that a server keeps its container across restarts.
