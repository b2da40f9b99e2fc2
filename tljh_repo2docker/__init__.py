"""tljh-repo2docker: build environments from git repositories and launch them from JupyterHub."""

__version__ = "4.0.0"

from .contract import LABEL_PREFIX, TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE


def __getattr__(name):
    # The spawners import dockerspawner (and kubespawner); load them only when asked
    # so that the service itself starts without importing the hub's spawner stack.
    if name in {"Repo2DockerSpawner", "SpawnerMixin"}:
        from .spawners import docker

        return getattr(docker, name)
    if name == "Repo2DockerKubeSpawner":
        from .spawners import kube

        return kube.Repo2DockerKubeSpawner
    if name == "tljh_custom_jupyterhub_config":
        # the TLJH hook, for hub configurations written for 3.x
        from .tljh_plugin import tljh_custom_jupyterhub_config

        return tljh_custom_jupyterhub_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "TLJH_R2D_ADMIN_SCOPE",
    "TLJH_R2D_BUILD_SCOPE",
    "LABEL_PREFIX",
    "Repo2DockerSpawner",
    "Repo2DockerKubeSpawner",
    "SpawnerMixin",
    "tljh_custom_jupyterhub_config",
]
