"""The service's settings the TLJH way, from TLJH's ``config.yaml``.

A TLJH admin configures the service like the rest of TLJH::

    tljh-config set services.tljh_repo2docker.port 6790
    tljh-config set services.tljh_repo2docker.default_memory_limit 2G
    tljh-config add-item services.tljh_repo2docker.machine_profiles '{"label": "Small", "cpu": 1, "memory": 2}'
    tljh-config set services.tljh_repo2docker.DockerBuilder.repo2docker_image quay.io/jupyterhub/repo2docker:2025.12.0
    tljh-config reload hub

Under ``services.tljh_repo2docker`` TLJH's schema validation accepts any key.
Each key is one of the service's command-line names (``port``,
``image_prefix``, ``machine_profiles``, ``repo2docker_image``, … as in
``python -m tljh_repo2docker --help``), or a class name holding that class's
settings (``DockerBuilder: {docker_url: …}``), or one of :data:`HUB_KEYS`
(used by the hub's configuration, not by the service).

:func:`configure` runs in the hub (from the plugin's
``tljh_custom_jupyterhub_config`` hook): it adds the service with that port,
its roles, and hands the service its settings as JSON in the environment
variable :data:`ENV_VAR` (not on the command line, which every user of the
machine can read; an environment is readable by its owner only). The
service reads them (``app.config_from_environment``) before its own
``tljh_repo2docker_config.py``, which wins, as its command line does.
"""

import json

from traitlets import Bool, Float, Integer, List, TraitError, Unicode
from traitlets.config import Config

from . import contract, hub_config

#: TLJH's config section of the service: ``services.<SECTION>``.
SECTION = hub_config.SERVICE_NAME
#: Where the hub hands the service its settings from TLJH's config.
ENV_VAR = contract.SETTINGS_ENV_VAR
#: Keys of the section that configure the hub's side (see :func:`configure`).
HUB_KEYS = {
    "port": "the service's port (default 6789)",
    "ip": "the service's address (default 127.0.0.1)",
    "admin_users": "users given the right to manage environments",
    "admin_groups": "groups given the right to manage environments",
    "builder_users": "users given the right to build and share environments of their own",
    "builder_groups": "groups given the right to build and share environments of their own",
}
_PREFIX = f"services.{SECTION}"


def _service_classes():
    # The service's classes, imported when needed: the hub loads this module
    # from TLJH's hook, and most of the service is of no use there.
    from .app import TljhRepo2Docker
    from .builds.binderhub import BinderHubBuilder
    from .builds.docker import DockerBuilder
    from .builds.manager import BuildManager
    from .hub_client import HubClient
    from .service.quotas import Quotas
    from .service.ref_watcher import RefWatcher

    classes = [
        TljhRepo2Docker, BuildManager, DockerBuilder, BinderHubBuilder, HubClient, Quotas,
        RefWatcher,
    ]
    return TljhRepo2Docker, {cls.__name__: cls for cls in classes}


def read_section(tljh_config=None):
    """The ``services.tljh_repo2docker`` section of TLJH's config (``{}`` when unset).

    ``tljh_config`` is TLJH's whole config as a dict; by default TLJH's own
    ``tljh.configurer.load_config()`` (its ``config.yaml`` merged into its
    defaults), or nothing outside a TLJH hub environment.
    """
    if tljh_config is None:
        try:
            from tljh.configurer import load_config
        except ImportError:
            return {}
        tljh_config = load_config()
    section = (tljh_config.get("services") or {}).get(SECTION)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(
            f"{_PREFIX} must hold settings (tljh-config set {_PREFIX}.<setting> <value>), "
            f"not {section!r}"
        )
    return section


def _coerce(trait, value, key):
    """A value as tljh-config parsed it (int, float, bool, None or text) for ``trait``."""
    try:
        if isinstance(trait, Unicode) and isinstance(value, (int, float)) and not isinstance(value, bool):
            # `tljh-config set … 2` gives 2, for a setting like a memory size
            value = str(value)
        elif isinstance(value, str) and isinstance(trait, (Bool, Integer, Float)):
            value = trait.from_string(value)
        elif isinstance(trait, List) and not isinstance(value, list):
            # one item given with `set` instead of `add-item`
            value = [value]
    except (TraitError, ValueError) as e:
        raise ValueError(f"{_PREFIX}.{key}: {e}") from None
    return value


def service_config(section):
    """The service's traitlets config from the section (without :data:`HUB_KEYS`).

    Raises ValueError naming ``services.tljh_repo2docker.<key>`` for a key
    that is no setting of the service.
    """
    app_class, classes = _service_classes()
    config = Config()
    for key, value in section.items():
        if key in HUB_KEYS:
            continue
        if key in classes and isinstance(value, dict):
            cls = classes[key]
            traits = cls.class_traits(config=True)
            for name, item in value.items():
                if name not in traits:
                    raise ValueError(f"{_PREFIX}.{key}.{name}: {key} has no setting {name!r}")
                config[key][name] = _coerce(traits[name], item, f"{key}.{name}")
            continue
        target = app_class.aliases.get(key)
        if target is None:
            known = ", ".join(sorted({*HUB_KEYS, *app_class.aliases}))
            raise ValueError(
                f"{_PREFIX}.{key}: not a setting of the service (known: {known}; or a class "
                f"name such as DockerBuilder holding its settings)"
            )
        class_name, _, name = target.partition(".")
        cls = classes.get(class_name)
        trait = cls.class_traits(config=True).get(name) if cls is not None else None
        config[class_name][name] = _coerce(trait, value, key) if trait is not None else value
    if app_class.__name__ in config:
        # The service's own checks (limits, profiles, node selector…), here, so
        # that the hub says what is wrong rather than a service that exits.
        try:
            app_class(config=Config({app_class.__name__: config[app_class.__name__]}))
        except TraitError as e:
            raise ValueError(f"{_PREFIX}: {e}") from None
    return config


def configure(c, tljh_config=None):
    """Add the service to the hub's config ``c`` as TLJH's config says.

    The port and address, the admins' role, the BinderHub scope when
    ``binderhub_url`` is set, the service's other settings (in its
    environment), and the spawner's ``image_prefix`` kept equal to the
    service's.
    """
    section = read_section(tljh_config)
    settings = service_config(section)
    port = _coerce(Integer(), section.get("port", hub_config.DEFAULT_PORT), "port")
    ip = str(section.get("ip") or hub_config.DEFAULT_IP)
    admins = {
        "users": _names(section, "admin_users"),
        "groups": _names(section, "admin_groups"),
    }
    builders = {
        "users": _names(section, "builder_users"),
        "groups": _names(section, "builder_groups"),
    }
    service_settings = settings.get("TljhRepo2Docker", {})
    hub_config.configure(
        c,
        port=port,
        ip=ip,
        binderhub=bool(service_settings.get("binderhub_url")),
        admins=admins if admins["users"] or admins["groups"] else None,
        builders=builders if builders["users"] or builders["groups"] else None,
    )
    # Every spawner reads who may use which environment in the service's
    # database (the service runs in the hub's directory, so the default is
    # the same) and starts only images of its prefix.
    shared = {k: service_settings[k] for k in hub_config.SPAWNER_SETTINGS if k in service_settings}
    # content at launch is pulled with the service's repo2docker image
    builder_image = (settings.get("DockerBuilder") or {}).get("repo2docker_image") or (
        service_settings.get("repo2docker_image")
    )
    if builder_image:
        shared.setdefault("content_puller_image", builder_image)
    hub_config.configure_spawners(c, **shared)
    if settings:
        for service in c.JupyterHub.services:
            if service.get("name") == SECTION:
                environment = dict(service.get("environment") or {})
                environment[ENV_VAR] = json.dumps(settings)
                service["environment"] = environment


def _names(section, key):
    value = section.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{_PREFIX}.{key}: a list of names (tljh-config add-item {_PREFIX}.{key} <name>)")
    return list(value)
