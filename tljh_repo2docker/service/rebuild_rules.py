"""Which pushes change what repo2docker builds: the rule of ``rebuild_on: "environment"``.

repo2docker reads its configuration files from the root of the repository,
or only from ``binder/`` (or ``.binder/``) when that folder exists. A push
that changes none of those files builds the same environment; with
``rebuild_on: "environment"`` the ref poller and the push webhook skip it
(the image's copy of the repository's other files then stays at the commit
built). Pure rules: the changed paths come from service/remote_git.py.
"""

#: What an environment rebuilds on: every push, or only pushes that change
#: what repo2docker reads.
ANY, ENVIRONMENT = "any", "environment"
REBUILD_ON = (ANY, ENVIRONMENT)

#: The folders repo2docker reads instead of the root when they exist.
CONFIG_FOLDERS = ("binder", ".binder")

#: The files repo2docker reads (its buildpacks' configuration files, the
#: lifecycle scripts and a Dockerfile with what the Docker build reads).
CONFIG_FILES = frozenset(
    {
        "environment.yml",
        "requirements.txt",
        "Pipfile",
        "Pipfile.lock",
        "setup.py",
        "pyproject.toml",
        "install.R",
        "DESCRIPTION",
        "apt.txt",
        "postBuild",
        "start",
        "runtime.txt",
        "default.nix",
        "Project.toml",
        "JuliaProject.toml",
        "Manifest.toml",
        "REQUIRE",
        "Dockerfile",
        ".dockerignore",
    }
)


def _in_config_folder(path):
    return path.split("/", 1)[0] in CONFIG_FOLDERS and "/" in path


def changes_environment(changed_paths, config_folder_exists):
    """Whether a push changing ``changed_paths`` (paths relative to the root,
    ``/``-separated) changes what repo2docker builds.

    ``config_folder_exists``: whether ``binder/`` or ``.binder/`` exists at
    the new commit. Any change under those folders counts (adding or
    removing one changes where repo2docker looks); the root's configuration
    files count only when neither folder exists.
    """
    paths = [p.strip().strip("/") for p in changed_paths if p and p.strip()]
    if any(_in_config_folder(p) or p in CONFIG_FOLDERS for p in paths):
        return True
    if config_folder_exists:
        return False
    return any("/" not in p and p in CONFIG_FILES for p in paths)

