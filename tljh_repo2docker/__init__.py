"""tljh-repo2docker: build environments from git repositories and launch them from JupyterHub."""

__version__ = "4.0.0"

#: The custom JupyterHub scope that grants the right to manage environments.
TLJH_R2D_ADMIN_SCOPE = "custom:tljh_repo2docker:admin"

#: Prefix of the Docker image labels that describe an environment.
LABEL_PREFIX = "tljh_repo2docker"


def __getattr__(name):
    # The spawners import dockerspawner (and kubespawner); load them only when asked
    # so that the service itself starts without importing the hub's spawner stack.
    if name in {"Repo2DockerSpawner", "Repo2DockerKubeSpawner"}:
        from . import spawner

        return getattr(spawner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "TLJH_R2D_ADMIN_SCOPE",
    "LABEL_PREFIX",
    "Repo2DockerSpawner",
    "Repo2DockerKubeSpawner",
]
