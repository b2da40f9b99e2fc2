"""Where the spawners lived before ``tljh_repo2docker.spawners``; kept so that
``c.JupyterHub.spawner_class = "tljh_repo2docker.spawner.Repo2DockerSpawner"``
and existing imports keep working. Nothing is defined here."""

from .spawners.docker import DEFAULT_COMMAND, Repo2DockerSpawner, SpawnerMixin
from .spawners.kube import make_kube_spawner as _make_kube_spawner
from .spawners.kube import stored_user_options
from .spawners.mixin import (
    UID_LABEL,
    BuiltEnvironment,
    EnvironmentMixin,
    EnvironmentRefused,
    SpawnFailed,
)

__all__ = [
    "BuiltEnvironment",
    "DEFAULT_COMMAND",
    "EnvironmentMixin",
    "EnvironmentRefused",
    "Repo2DockerKubeSpawner",
    "Repo2DockerSpawner",
    "SpawnFailed",
    "SpawnerMixin",
    "UID_LABEL",
    "stored_user_options",
]


def __getattr__(name):
    # Repo2DockerKubeSpawner needs kubespawner: made on first use.
    if name == "Repo2DockerKubeSpawner":
        from .spawners import kube

        return kube.Repo2DockerKubeSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
