"""Spawners that start the environments built by tljh-repo2docker.

- ``mixin.py``: what every engine shares (which environment, may this user use
  it, limits, homes): :class:`~.mixin.EnvironmentMixin`.
- ``docker.py``: :class:`~.docker.SpawnerMixin` (for any DockerSpawner,
  SystemUserSpawner included) and :class:`~.docker.Repo2DockerSpawner`.
- ``kube.py``: ``Repo2DockerKubeSpawner``, made on first use (it needs the
  ``kubernetes`` extra).

The service (and the hub's spawn form) start a server with these user_options::

    {"image": "<image name>", "environment": "<uid>",
     "metadata": {"node_selector": {...}, "memory": "2G", "cpu": 1.5, ...}}
"""
