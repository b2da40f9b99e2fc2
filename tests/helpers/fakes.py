"""Fakes for unit tests, where no real engine or database is wanted.

- ``FakeDocker``: the docker-py ``APIClient`` calls DockerSpawner makes, over
  dicts (a small in-memory Docker engine); ``spawner_maker(fake, base,
  **methods)`` makes spawners of class ``base`` that use it, and
  ``env_labels(**extra)`` gives the labels of an environment's image.
- ``FlakySessions``: a sessionmaker whose database can be switched off
  (connections refused).
- ``NOWHERE_KUBECONFIG``: a kubeconfig whose cluster is nowhere (the discard
  port on loopback), for KubeSpawner in mock mode.
"""

import itertools
from types import SimpleNamespace

import docker.errors
import docker.types
import requests
from jupyterhub.objects import Hub
from sqlalchemy import exc as sa_exc

_ids = itertools.count(1)


def env_labels(uid="abc123", image="python-env:main", **extra):
    labels = {
        "tljh_repo2docker.uid": uid,
        "tljh_repo2docker.display_name": "Python env",
        "tljh_repo2docker.image_name": image,
        "tljh_repo2docker.repo": "https://example.org/repo.git",
        "tljh_repo2docker.ref": "main",
        "tljh_repo2docker.mem_limit": "2G",
        "tljh_repo2docker.cpu_limit": "1.5",
        "tljh_repo2docker.machine_profile": "",
        "tljh_repo2docker.node_selector": '{"gpu": "yes"}',
        "tljh_repo2docker.owner": "admin",
    }
    labels.update({f"tljh_repo2docker.{k}": v for k, v in extra.items()})
    return labels


def not_found(exception_class, message):
    # docker-py's errors carry the HTTP response; DockerSpawner reads its status.
    response = requests.Response()
    response.status_code = 404
    return exception_class(message, response=response)


class FakeDocker:
    """The docker-py APIClient calls DockerSpawner makes, over dicts."""

    def __init__(self):
        self.images_by_name = {}
        self.containers = {}
        self.created = []
        self.removed = []
        self.volumes = {}
        self.helpers = []

    def add_image(self, name, labels=None, cmd=("bash",)):
        image = {
            "Id": f"sha256:{next(_ids):064x}",
            "RepoTags": [name],
            "Labels": labels,
            "Cmd": list(cmd) if cmd is not None else None,
        }
        self.images_by_name[name] = image
        return image["Id"]

    def images(self, filters=None):
        wanted = (filters or {}).get("label")
        return [
            dict(image)
            for image in self.images_by_name.values()
            if not wanted or wanted in (image["Labels"] or {})
        ]

    def inspect_image(self, name):
        if name not in self.images_by_name:
            raise not_found(docker.errors.ImageNotFound, f"No such image: {name}")
        image = self.images_by_name[name]
        return {"Id": image["Id"], "Config": {"Labels": image["Labels"], "Cmd": image.get("Cmd")}}

    def inspect_container(self, name):
        for container in self.containers.values():
            if container["Name"] == name:
                return container
        raise not_found(docker.errors.NotFound, f"No such container: {name}")

    def create_host_config(self, **kwargs):
        return docker.types.HostConfig(version="1.41", **kwargs)

    def create_container(self, image, name=None, host_config=None, **kwargs):
        container_id = f"{next(_ids):064x}"
        if "tljh_repo2docker.home.helper" in (kwargs.get("labels") or {}):
            self.helpers.append(kwargs.get("entrypoint"))  # copies files: none here
            return {"Id": container_id}
        image_id = self.images_by_name[image]["Id"]
        self.containers[container_id] = {
            "Id": container_id,
            "Name": name,
            "Image": image_id,
            "State": {"Running": False},
            "Config": {
                "Env": [f"{k}={v}" for k, v in kwargs["environment"].items()],
                "Cmd": kwargs.get("command"),
            },
            "HostConfig": host_config,
            "Mounts": [
                {"Name": bind.split(":")[0], "Destination": bind.split(":")[1]}
                for bind in host_config.get("Binds") or []
            ],
        }
        self.created.append(self.containers[container_id])
        return {"Id": container_id}

    def start(self, container_id):
        if container_id in self.containers:
            self.containers[container_id]["State"]["Running"] = True

    def wait(self, container_id, timeout=None):
        return {"StatusCode": 0}

    def stop(self, container_id):
        self.containers[container_id]["State"]["Running"] = False

    def remove_container(self, container_id, v=False, force=False):
        if container_id in self.containers:
            self.removed.append(self.containers.pop(container_id))

    def inspect_volume(self, name):
        if name not in self.volumes:
            raise not_found(docker.errors.NotFound, f"No such volume: {name}")
        return self.volumes[name]

    def create_volume(self, name, labels=None):
        self.volumes.setdefault(name, {"Name": name, "Labels": labels})
        return self.volumes[name]

    # The archive API (home_owner): this engine keeps no files.
    def _url(self, path, *args):
        return path.format(*args)

    def _get(self, url, **kwargs):
        return SimpleNamespace(status_code=404, close=lambda: None)

    def port(self, container_id, port):
        return [{"HostIp": "127.0.0.1", "HostPort": "32768"}]


async def _everything_shared(self):
    return None  # who may use what: tests/test_sharing_unit.py


def spawner_maker(fake_docker, base, **methods):
    # DockerSpawner keeps one docker client per class: a subclass per test holds the fake.
    methods.setdefault("environment_access", _everything_shared)
    spawner_class = type("FakeEngineSpawner", (base,), {"_client": fake_docker, **methods})

    def make(server_name="python", **traits):
        user = SimpleNamespace(
            name="alice", id=1, url="/user/alice/", base_url="/user/alice/", groups=[]
        )
        orm_spawner = SimpleNamespace(name=server_name, server=None, user_options=None)
        # The fake images carry no hub prefix (the default is the service's, tljh-r2d/).
        traits.setdefault("image_prefix", "")
        return spawner_class(user=user, orm_spawner=orm_spawner, hub=Hub(), **traits)

    return make


class FlakySessions:
    """A sessionmaker whose database can be switched off (connections refused)."""

    def __init__(self, real):
        self.real = real
        self.down = False
        self.refused = 0

    def __call__(self):
        if self.down:
            self.refused += 1
            raise sa_exc.OperationalError(
                "SELECT 1", None, ConnectionRefusedError(111, "Connection refused")
            )
        return self.real()


NOWHERE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:9"}
users:
- name: nobody
  user: {token: unused}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody, namespace: default}
current-context: nowhere
"""
