"""The demo hub started by `./dev demo`: JupyterHub + this service on one machine.

Everything runs locally: DummyAuthenticator (any password; `admin` is a hub
admin), SQLite, and Repo2DockerSpawner on Docker. Log in at
http://127.0.0.1:8000 and open "Environments" from the service's pages at
http://127.0.0.1:8000/services/tljh_repo2docker/.

For a real deployment keep the service, roles and scopes parts (or call
tljh_repo2docker.hub_config.configure(c) as below) and choose your own
authenticator.
"""

import os
import subprocess

from tljh_repo2docker import hub_config


def docker_bridge_gateway(default="172.17.0.1"):
    """The address of the host on Docker's default bridge (where containers reach the hub)."""
    try:
        out = subprocess.run(
            ["docker", "network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or default
    except (OSError, subprocess.TimeoutExpired):
        return default


def local_image(name):
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


c = get_config()  # noqa: F821 (provided by JupyterHub)

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("DEMO_PORT", "8000"))
# Containers reach the hub on the Docker bridge's gateway; nothing listens publicly.
c.JupyterHub.hub_ip = docker_bridge_gateway()
c.JupyterHub.hub_connect_ip = c.JupyterHub.hub_ip

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.admin_users = {"admin"}
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True

c.JupyterHub.spawner_class = "tljh_repo2docker.Repo2DockerSpawner"
c.DockerSpawner.pull_policy = "never"  # images are built on this machine
c.Repo2DockerSpawner.image_prefix = "tljh-r2d/"  # the service's default image_prefix
c.DockerSpawner.remove = True
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.name_template = "demo-{username}-{servername}"
c.Spawner.start_timeout = 120

# With no image registry (as on offline machines) use the local builder image
# that ./dev images makes; elsewhere the service's default (quay.io) is used.
service_args = [
    "--builder_network=host",  # lets the builder reach git servers on 127.0.0.1
    '--machine_profiles={"label": "Small", "cpu": 0.5, "memory": "512M"}',
    '--machine_profiles={"label": "Medium", "cpu": 1, "memory": 2}',
    '--node_selector={"gpu": {"description": "GPU availability", "values": ["yes", "no"]}}',
]
builder = os.environ.get("TLJH_R2D_TEST_REPO2DOCKER_IMAGE", "tljh-repo2docker-test/repo2docker:latest")
if local_image(builder):
    service_args += [f"--repo2docker_image={builder}", "--DockerBuilder.pull_repo2docker_image=False"]

# The service, its role (list:users, read:users, read:roles:users, admin:servers, and
# list:groups, read:groups, read:users:groups for sharing), access
# for every user, and the custom admin scope; `admin` also gets the scope.
hub_config.configure(c, args=service_args, admins={"users": ["admin"]})
