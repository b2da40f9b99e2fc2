"""The JupyterHub side of the service: its entry, its roles and its custom scope.

One place for what a hub needs to run tljh-repo2docker as a managed service, so
that the TLJH plugin, ``example/jupyterhub_config.py``, the README and the test
fixtures all say the same thing::

    from tljh_repo2docker import hub_config

    hub_config.configure(c)                      # merge all of it into c
    hub_config.configure(c, port=6790, args=["--log-level=DEBUG"], binderhub=True)

or piece by piece with :func:`service_config`, :func:`roles`,
:func:`admin_role` and :func:`custom_scopes`.
"""

import copy
import sys

from traitlets.config import LazyConfigValue

from . import TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE, contract
from .paths import _data_dir

#: The service's name in JupyterHub (its pages live under /services/<name>/).
SERVICE_NAME = contract.SERVICE_NAME
DEFAULT_IP = "127.0.0.1"
DEFAULT_PORT = 6789

#: Scope that lets a user open the service's pages and API.
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
#: Scope the service needs to reach a BinderHub that runs as a hub service.
BINDER_ACCESS_SCOPE = "access:services!service=binder"

SERVICE_ROLE = "tljh-repo2docker-service"
ADMIN_ROLE = "tljh-repo2docker-admin"
BUILDER_ROLE = "tljh-repo2docker-builder"

#: Our templates for the hub's own pages: its ``page.html`` extends
#: JupyterHub's and adds "Environments" and "Servers" to its navigation bar.
HUB_TEMPLATES = _data_dir("hub_templates")
#: The template variable that tells those templates the service's name.
TEMPLATE_VAR = "tljh_repo2docker_service"


def service_config(port=DEFAULT_PORT, *, ip=DEFAULT_IP, args=()):
    """The managed service entry for ``c.JupyterHub.services``.

    ``args`` are extra command-line options for ``python -m tljh_repo2docker``,
    e.g. ``["--log-level=DEBUG"]`` or ``["--TljhRepo2Docker.<trait>=<value>"]``.
    """
    return {
        "name": SERVICE_NAME,
        "url": f"http://{ip}:{port}",
        "command": [
            sys.executable,
            "-m",
            "tljh_repo2docker",
            f"--ip={ip}",
            f"--port={port}",
            *args,
        ],
        # Users reach the service through the hub's login; no "authorize" page.
        "oauth_no_confirm": True,
        # Lets the admin and build scopes of a user travel in the token the
        # service receives.
        "oauth_client_allowed_scopes": [TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE],
    }


def roles(*, binderhub=False):
    """Roles for ``c.JupyterHub.load_roles``: the service's own, and access for all users.

    All users get access through JupyterHub's ``user`` role (defined here with
    its default ``self`` scope, or extended when the config defines it already:
    see :func:`configure`).
    """
    # list:groups, read:groups and read:users:groups: the groups that
    # environments are shared with, and who belongs to them.
    service_scopes = [
        "list:users", "read:users", "read:roles:users", "admin:servers",
        "list:groups", "read:groups", "read:users:groups",
    ]
    if binderhub:
        service_scopes.append(BINDER_ACCESS_SCOPE)
    return [
        {
            "name": SERVICE_ROLE,
            "description": "What the tljh-repo2docker service does on the hub",
            "scopes": service_scopes,
            "services": [SERVICE_NAME],
        },
        {"name": "user", "scopes": ["self", ACCESS_SCOPE]},
    ]


def admin_role(*, users=(), groups=()):
    """A role giving the named users and groups the right to manage environments.

    Hub admins do not get custom scopes from JupyterHub's ``admin`` role, so
    environment managers are named here (or in a role of your own).
    """
    return {
        "name": ADMIN_ROLE,
        "description": "Manage tljh-repo2docker environments",
        "scopes": [TLJH_R2D_ADMIN_SCOPE],
        "users": list(users),
        "groups": list(groups),
    }


def builder_role(*, users=(), groups=()):
    """A role giving the named users and groups the right to add (and share)
    environments of their own."""
    return {
        "name": BUILDER_ROLE,
        "description": "Build and share tljh-repo2docker environments of one's own",
        "scopes": [TLJH_R2D_BUILD_SCOPE],
        "users": list(users),
        "groups": list(groups),
    }


def custom_scopes():
    """The custom scope definitions for ``c.JupyterHub.custom_scopes``."""
    return {
        TLJH_R2D_ADMIN_SCOPE: {"description": "Manage tljh-repo2docker environments"},
        TLJH_R2D_BUILD_SCOPE: {
            "description": "Build tljh-repo2docker environments of one's own and share them"
        },
    }


def configure(
    c, *, port=DEFAULT_PORT, ip=DEFAULT_IP, args=(), binderhub=False, admins=None, builders=None
):
    """Merge the service, its roles and the custom scope into the config ``c``.

    What ``c`` already holds is kept: a service of the same name is left as it
    is, a role of the same name gains the missing scopes and members, a custom
    scope already defined is not redefined. ``admins`` is an optional
    ``{"users": [...], "groups": [...]}`` for :func:`admin_role`, ``builders``
    the same for :func:`builder_role`.

    The spawners check who may use an environment in the service's database:
    when the service's ``--db_url`` (or ``--image_prefix``) is in ``args``,
    every spawner class we ship gets the same (:func:`configure_spawners`).
    """
    hub = c.JupyterHub
    services = _current(hub, "services", [])
    if not any(s.get("name") == SERVICE_NAME for s in services):
        services.append(service_config(port, ip=ip, args=args))
    hub.services = services

    new_roles = roles(binderhub=binderhub)
    if admins:
        new_roles.append(admin_role(**admins))
    if builders:
        new_roles.append(builder_role(**builders))
    hub.load_roles = merge_roles(_current(hub, "load_roles", []), new_roles)

    scopes = _current(hub, "custom_scopes", {})
    for name, definition in custom_scopes().items():
        scopes.setdefault(name, definition)
    hub.custom_scopes = scopes

    configure_templates(c)

    shared = {}
    for name in SPAWNER_SETTINGS:
        option = _SERVICE_OPTIONS.get(name, name)
        value = next((a.split("=", 1)[1] for a in args if a.startswith(f"--{option}=")), None)
        if value is not None:
            shared[name] = value
    configure_spawners(c, **shared)


def configure_templates(c, service_name=SERVICE_NAME):
    """Add our hub templates to ``c.JupyterHub.template_paths`` (after the
    paths already there, so that an admin's own ``page.html`` still wins) and
    tell them the service's name (``c.JupyterHub.template_vars``).

    The hub's pages (Home, Token, the spawn form) then link to the service's
    Servers page, and to its Environments page for those who may build.
    """
    hub = c.JupyterHub
    paths = [str(p) for p in _current(hub, "template_paths", [])]
    if str(HUB_TEMPLATES) not in paths:
        paths.append(str(HUB_TEMPLATES))
    hub.template_paths = paths
    template_vars = _current(hub, "template_vars", {})
    if isinstance(template_vars, dict):
        template_vars.setdefault(TEMPLATE_VAR, service_name)
        hub.template_vars = template_vars


#: The config section of the class every spawner we ship derives from
#: (``Repo2DockerSpawner``, ``Repo2DockerKubeSpawner`` and their subclasses):
#: the one place that decides which spawners get the service's settings.
SPAWNER_SECTION = "EnvironmentMixin"

#: The service's settings that its spawners must share.
SPAWNER_SETTINGS = ("db_url", "image_prefix", "content_puller_image")
#: The service's option each spawner setting comes from, when not its own name.
_SERVICE_OPTIONS = {"content_puller_image": "repo2docker_image"}


def configure_spawners(c, **settings):
    """Give every spawner class the service's ``settings`` (``db_url``,
    ``image_prefix``, ``content_puller_image``: the service's
    ``repo2docker_image``) through ``c.EnvironmentMixin``.

    A value ``c.EnvironmentMixin`` already holds is kept; one set for a
    spawner class itself (``c.Repo2DockerSpawner.db_url``) still wins for
    that class, as traitlets gives a subclass's section the last word.
    """
    unknown = set(settings) - set(SPAWNER_SETTINGS)
    if unknown:
        raise TypeError(f"not a setting the spawners share: {', '.join(sorted(unknown))}")
    section = c[SPAWNER_SECTION]
    for name, value in settings.items():
        if name not in section:
            section[name] = value


def merge_roles(existing, new):
    """Roles of ``existing`` and ``new`` merged by name, without losing any entry.

    A role present in both keeps its own fields and gains the scopes, users,
    groups and services it lacks.
    """
    merged = [copy.deepcopy(role) for role in existing]
    by_name = {role.get("name"): role for role in merged}
    for role in new:
        current = by_name.get(role["name"])
        if current is None:
            merged.append(copy.deepcopy(role))
            by_name[role["name"]] = merged[-1]
            continue
        for key in ("scopes", "users", "groups", "services"):
            if role.get(key):
                values = list(current.get(key) or [])
                values += [v for v in role[key] if v not in values]
                current[key] = values
    return merged


def _current(section, key, empty):
    """A copy of ``section[key]`` as a plain list/dict (``empty`` when unset).

    ``c.JupyterHub.services.append(...)`` on an unset key leaves a
    LazyConfigValue; its value is what those edits give from ``empty``.
    """
    value = section[key] if key in section else empty
    if isinstance(value, LazyConfigValue):
        value = value.get_value(empty)
    return copy.deepcopy(value)
