"""What the service, the spawners and the images agree on, in one place.

The service writes these (image labels, the ``user_options`` it starts
servers with, version tags, the settings it is handed by the hub); the
spawners, the 3.x-compatible helpers and other hubs on the same engine read
them. Changing anything here changes what an installed hub, its images or a
third-party spawner see: keep it backwards compatible.

Nothing here does I/O or imports the rest of the package.
"""

import json
import re
import uuid

#: The custom JupyterHub scope that grants the right to manage environments.
TLJH_R2D_ADMIN_SCOPE = "custom:tljh_repo2docker:admin"

#: The custom JupyterHub scope that lets a user add environments of their own
#: (which they own, and share with users and groups they choose).
TLJH_R2D_BUILD_SCOPE = "custom:tljh_repo2docker:build"

#: Prefix of the Docker image labels that describe an environment.
LABEL_PREFIX = "tljh_repo2docker"

#: Label of the home volumes the spawners make (``tljh_repo2docker.home=1``;
#: ``.user``, ``.server``, ``.environment`` and ``.prefix`` below it).
HOME_LABEL = f"{LABEL_PREFIX}.home"
#: The label that makes an image a built environment: its uid.
UID_LABEL = f"{LABEL_PREFIX}.uid"
#: The service's ``image_prefix`` on the images it built or adopted, so that
#: images keeping a name without that prefix (3.x's) are known as its hub's.
IMAGE_PREFIX_LABEL = f"{LABEL_PREFIX}.image_prefix"
#: The image name of an environment; 3.x's images carry it too.
IMAGE_NAME_LABEL = f"{LABEL_PREFIX}.image_name"

#: The environment variable in which the hub hands the service the settings
#: of TLJH's ``config.yaml`` (tljh_config.py writes it, app.py reads it).
SETTINGS_ENV_VAR = "TLJH_REPO2DOCKER_TLJH_CONFIG"

def new_uid():
    """A new environment's uid: its key in the database and its image's label."""
    return uuid.uuid4().hex


# -- a version's own image reference ------------------------------------------

#: What joins an image's tag and a build's number in a version's own reference.
_VERSION_SEPARATOR = "--v"
#: Ends the tag of a version's own reference (see version_reference).
VERSION_TAG = re.compile(rf"{_VERSION_SEPARATOR}[0-9]+$")


def version_reference(image_name, number):
    """The reference that keeps build ``number`` of ``image_name``:
    ``repo:tag--vN`` (Docker tags have at most 128 characters)."""
    repository, tag = split_reference(image_name)
    suffix = f"{_VERSION_SEPARATOR}{number}"
    return f"{repository}:{tag[: 128 - len(suffix)]}{suffix}"


def is_version_reference(image_name):
    """Whether ``image_name`` is a version's own reference (see :func:`version_reference`)."""
    return VERSION_TAG.search(image_name) is not None


def split_reference(image_name):
    """``(repository, tag)`` of an image reference; a port is not a tag."""
    repository, sep, tag = image_name.rpartition(":")
    if not sep or "/" in tag:
        return image_name, "latest"
    return repository, tag


# -- which hub an image belongs to ---------------------------------------------

#: The default ``image_prefix`` of the service (``TljhRepo2Docker``) and of
#: the spawners alike, so that a hub configured without it agrees with itself.
#: The service's name in JupyterHub: its pages are under /services/<name>/.
SERVICE_NAME = "tljh_repo2docker"

DEFAULT_IMAGE_PREFIX = "tljh-r2d/"

def belongs_to_hub(image, labels, image_prefix):
    """True when ``image`` is one of the environments of the hub with ``image_prefix``.

    Its name starts with the prefix, or (for images of 3.x, which the service
    relabels under their old names) its ``tljh_repo2docker.image_prefix``
    label is that prefix. An empty prefix takes every environment.
    """
    if image.startswith(image_prefix):
        return True
    return bool(image_prefix) and (labels or {}).get(IMAGE_PREFIX_LABEL) == image_prefix


def home_belongs_to_hub(label, image_prefix):
    """True when a home volume whose ``tljh_repo2docker.home.prefix`` label is
    ``label`` is one of the hub with ``image_prefix``.

    Spawners labelled homes with their own ``image_prefix``, whose default
    was empty before it became the service's: a home labelled ``""`` is the
    default hub's, so a hub configured without a prefix keeps its users'
    homes across the upgrade.
    """
    if label == image_prefix:
        return True
    return label == "" and image_prefix == DEFAULT_IMAGE_PREFIX


# -- what a built environment turns into ------------------------------------------

def user_options(env):
    """The user_options that start the built environment ``env`` (a stored
    Environment), as the spawners read them."""
    return {
        "image": env.image_name,
        "environment": env.uid,
        "metadata": {
            "node_selector": env.node_selector or {},
            "memory": env.memory,
            "cpu": env.cpu,
            "display_name": env.name,
        },
    }


#: The key of ``user_options`` that carries content pulled at launch:
#: ``{"repo": git URL, "ref": branch, tag or commit ("" for the default
#: branch), "dir": the folder of the home it goes in (a safe name made from
#: the repository's name), "urlpath": where the server opens, relative to it
#: (default ``lab/tree/<dir>``)}``. Written by the service (POST api/servers,
#: the Servers page's direct link), checked again and pulled by the spawners
#: before the server starts (service/content.py).
CONTENT_OPTION = "content"

#: The repo2docker image the service builds with by default
#: (``DockerBuilder.repo2docker_image``); the spawners pull content with it.
DEFAULT_REPO2DOCKER_IMAGE = "quay.io/jupyterhub/repo2docker:2025.12.0"


def with_content(options, content):
    """``options`` (user_options) with ``content`` (see CONTENT_OPTION), or
    without any when ``content`` is None."""
    options = dict(options or {})
    if content:
        options[CONTENT_OPTION] = dict(content)
    else:
        options.pop(CONTENT_OPTION, None)
    return options


def pinned_image(env, version=None):
    """The image reference that starts ``env``'s current version and that no
    rebuild moves: the version's own reference (Docker's ``repo:tag--vN``,
    BinderHub's per-commit name), else the environment's name. A node that
    pulls ``IfNotPresent`` then never starts a stale build after a rebuild."""
    if version is not None and version.image_name:
        return version.image_name
    return env.image_name


def image_labels(env, image_prefix=""):
    """The labels that make an image self-describing (no secrets).

    ``image_prefix`` is the service's: images that keep a name without it
    (those of 3.x, relabelled) are still known as this hub's by it.
    """

    return {
        UID_LABEL: env.uid,
        f"{LABEL_PREFIX}.display_name": env.name,
        IMAGE_NAME_LABEL: env.image_name,
        f"{LABEL_PREFIX}.repo": env.repo,
        f"{LABEL_PREFIX}.ref": env.ref,
        f"{LABEL_PREFIX}.mem_limit": env.memory or "",
        f"{LABEL_PREFIX}.cpu_limit": "" if env.cpu is None else repr(env.cpu),
        f"{LABEL_PREFIX}.machine_profile": env.machine_profile or "",
        f"{LABEL_PREFIX}.node_selector": json.dumps(env.node_selector or {}, sort_keys=True),
        f"{LABEL_PREFIX}.owner": env.owner or "",
        IMAGE_PREFIX_LABEL: image_prefix,
        # Who may use it is in the service's database only (it changes after
        # the build): a spawner that cannot find it offers it to its owner only.
        f"{LABEL_PREFIX}.access": "database",
    }
