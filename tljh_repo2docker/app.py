"""The service: configuration, start-up steps and routes."""

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import sys
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import (
    Any,
    Bool,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Type,
    Unicode,
    default,
    observe,
    validate,
)
from traitlets.config import Application, Config

from . import __version__, metrics
from .contract import DEFAULT_IMAGE_PREFIX, SETTINGS_ENV_VAR
from .handlers.bodylimit import BodyLimit, body_limit
from .builds.base import Builder, BuildError
from .builds.docker import DockerBuilder
from .builds.manager import BuildManager
from .db import session as db_session
from .service.disk_usage import Disk, parse_size
from .handlers import (
    disk, environments, health, homes, logs, openapi, pages, servers, versions, webhooks,
)
from .handlers.base import NotFoundAPIHandler
from .service.claims import Claims
from .service.engine import Homes
from .hub_client import HubClient
from .limits import (
    LimitError,
    parse_cpu,
    parse_machine_profile,
    parse_memory,
    parse_node_selector_config,
)
from .paths import STATIC, TEMPLATES
from .service.fields import builder_choices
from .service.lifecycle import Lifecycle, build_request
from .service.remote_git import RemoteGit
from .service.quotas import Quotas
from .service.ref_watcher import RefWatcher
from .secret import SecretFileError, read_secret_file


def _slashes(prefix):
    """A URL prefix with one leading and one trailing slash."""
    return "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"


class ConfigError(Exception):
    """Bad configuration: the message names the option."""


class TljhRepo2Docker(Application):
    name = "tljh-repo2docker"
    version = __version__
    description = """
    A JupyterHub service that builds user environments from git repositories
    with repo2docker, and lets users start servers from them.
    """

    aliases = {
        "ip": "TljhRepo2Docker.ip",
        "port": "TljhRepo2Docker.port",
        "config": "TljhRepo2Docker.config_file",
        "db_url": "TljhRepo2Docker.db_url",
        "default_memory_limit": "TljhRepo2Docker.default_memory_limit",
        "default_cpu_limit": "TljhRepo2Docker.default_cpu_limit",
        "machine_profiles": "TljhRepo2Docker.machine_profiles",
        "node_selector": "TljhRepo2Docker.node_selector",
        "binderhub_url": "TljhRepo2Docker.binderhub_url",
        "repo_providers": "TljhRepo2Docker.repo_providers",
        "cookie_secret_file": "TljhRepo2Docker.cookie_secret_file",
        "allow_local_repos": "TljhRepo2Docker.allow_local_repos",
        "image_prefix": "TljhRepo2Docker.image_prefix",
        "adopt_legacy_images": "TljhRepo2Docker.adopt_legacy_images",
        "retry_interval": "TljhRepo2Docker.retry_interval",
        "custom_links": "TljhRepo2Docker.custom_links",
        "template_paths": "TljhRepo2Docker.template_paths",
        "logo_file": "TljhRepo2Docker.logo_file",
        "logo_url": "TljhRepo2Docker.logo_url",
        "service_prefix": "TljhRepo2Docker.service_prefix",
        "max_body_size": "TljhRepo2Docker.max_body_size",
        "keep_versions": "TljhRepo2Docker.keep_versions",
        "min_free_disk": "TljhRepo2Docker.min_free_disk",
        "build_cache_max_age": "TljhRepo2Docker.build_cache_max_age",
        "authenticate_prometheus": "TljhRepo2Docker.authenticate_prometheus",
        "ref_poll_interval": "TljhRepo2Docker.ref_poll_interval",
        "webhook_rate_limit": "TljhRepo2Docker.webhook_rate_limit",
        "kube_namespace": "TljhRepo2Docker.kube_namespace",
        "max_concurrent_builds": "BuildManager.max_concurrent_builds",
        "environments_per_user": "Quotas.environments_per_user",
        "builds_per_user": "Quotas.builds_per_user",
        "image_size_per_user": "Quotas.image_size_per_user",
        "builder_max_memory": "Quotas.max_memory",
        "builder_max_cpu": "Quotas.max_cpu",
        "repo2docker_image": "DockerBuilder.repo2docker_image",
        "builder_network": "DockerBuilder.network_mode",
        "log_level": "Application.log_level",
    }
    flags = {
        "debug": ({"Application": {"log_level": logging.DEBUG}}, "Log debug messages."),
        "generate-config": (
            {"TljhRepo2Docker": {"generate_config": True}},
            "Write a commented configuration file and exit.",
        ),
    }

    classes = [BuildManager, DockerBuilder, HubClient, Homes, Quotas, RefWatcher]

    config_file = Unicode(
        "tljh_repo2docker_config.py",
        help="""
        A Python configuration file to load (``c.TljhRepo2Docker.port = 6789`` etc.).
        A missing default file is ignored; a missing file named on the command
        line is an error.
        """,
    ).tag(config=True)

    generate_config = Bool(False, help="Write the config file with every option and exit.").tag(
        config=True
    )

    ip = Unicode("127.0.0.1", help="The address the service listens on.").tag(config=True)

    port = Integer(6789, help="The port the service listens on.").tag(config=True)

    base_url = Unicode(
        help="""
        URL prefix of the service. Default: $JUPYTERHUB_SERVICE_PREFIX (set by
        JupyterHub for managed services), else ``/services/tljh_repo2docker/``.
        """
    ).tag(config=True)

    @default("base_url")
    def _default_base_url(self):
        return _slashes(os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/tljh_repo2docker/"))

    @validate("base_url")
    def _validate_base_url(self, proposal):
        return _slashes(proposal.value)

    service_prefix = Unicode(
        "",
        help="""
        The name tljh-repo2docker 3.x gave ``base_url``; when set, it is the
        service's URL prefix. Default: empty (use ``base_url``).
        """,
    ).tag(config=True)

    @observe("service_prefix")
    def _service_prefix_changed(self, change):
        if change.new:
            self.base_url = change.new

    custom_links = Any(
        {},
        help="""
        Extra links in the navigation bar, as ``{"label": "url"}`` (a dict, or
        JSON on the command line: ``--custom_links='{"Permissions":
        "../tljh_plasma/permissions"}'``). A URL is absolute (``https://…``),
        or relative to the service's pages. Default: none.
        """,
    ).tag(config=True)

    @validate("custom_links")
    def _validate_custom_links(self, proposal):
        value = proposal.value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise TraitError(f"custom_links: not valid JSON ({e.msg})") from None
        if not isinstance(value, dict):
            raise TraitError('custom_links: must map labels to URLs: {"Label": "url"}')
        for label, url in value.items():
            if not isinstance(label, str) or not label.strip():
                raise TraitError("custom_links: every label must be a non-empty string")
            if not isinstance(url, str) or not url.strip() or re.match(r"^\s*javascript:", url, re.I):
                raise TraitError(f"custom_links: the URL of {label!r} must be a web address or a path")
        return {label.strip(): url.strip() for label, url in value.items()}

    template_paths = List(
        Unicode(),
        help="""
        Folders searched for page templates before the service's own, for
        custom pages: a template there with the name of one of ours
        (``page.html``, ``servers.html``, ``environments.html``,
        ``error.html``) replaces it; ours stay reachable as
        ``tljh_repo2docker/<name>`` for ``{% extends %}``. Default: none.
        """,
    ).tag(config=True)

    @validate("template_paths")
    def _validate_template_paths(self, proposal):
        for path in proposal.value:
            if not Path(path).is_dir():
                raise TraitError(f"template_paths: {path} is not a folder")
        return proposal.value

    logo_file = Unicode(
        "",
        help="""
        An image to show as the logo in the navigation bar instead of the
        hub's (served at ``{base_url}logo``). Default: the hub's logo.
        """,
    ).tag(config=True)

    @validate("logo_file")
    def _validate_logo_file(self, proposal):
        if proposal.value and not Path(proposal.value).is_file():
            raise TraitError(f"logo_file: {proposal.value} is not a file")
        return proposal.value

    logo_url = Unicode(
        "",
        help="""
        Where the logo in the navigation bar links to. Default: the hub's
        home page.
        """,
    ).tag(config=True)

    hub_prefix = Unicode(
        help="""
        URL prefix of JupyterHub's own pages (for the navigation bar and the
        hub's stylesheet). Default: derived from $JUPYTERHUB_BASE_URL, else ``/hub/``.
        """
    ).tag(config=True)

    @default("hub_prefix")
    def _default_hub_prefix(self):
        return url_path_join(os.environ.get("JUPYTERHUB_BASE_URL", "/"), "hub/")

    db_url = Unicode(
        help="""
        Database URL. Default: a SQLite file ``tljh_repo2docker.sqlite`` in the
        directory the service starts in. ``postgresql://user:pass@host/db``
        needs the ``postgres`` extra, ``mysql://…`` the ``mysql`` extra; they
        are converted to their async drivers (asyncpg, aiomysql).
        """
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        return f"sqlite:///{Path.cwd() / 'tljh_repo2docker.sqlite'}"

    default_memory_limit = Unicode(
        None,
        allow_none=True,
        help="""
        Memory limit of environments added without one, like ``512M`` or ``2G``
        (a bare number is GB). Default: no limit.
        """,
    ).tag(config=True)

    @validate("default_memory_limit")
    def _validate_memory(self, proposal):
        try:
            return parse_memory(proposal.value, field="default_memory_limit")
        except LimitError as e:
            raise TraitError(str(e)) from None

    default_cpu_limit = Any(
        None,
        allow_none=True,
        help="CPU limit (number of CPUs, may be fractional) of environments added without one.",
    ).tag(config=True)

    @validate("default_cpu_limit")
    def _validate_cpu(self, proposal):
        try:
            return parse_cpu(proposal.value, field="default_cpu_limit")
        except LimitError as e:
            raise TraitError(str(e)) from None

    machine_profiles = List(
        help="""
        Machine profiles an admin can choose instead of typing limits. Each is
        ``{"label": "Small", "cpu": 2, "memory": 2}`` (memory in GB, or a size
        like ``512M``). On the command line repeat ``--machine_profiles='{…}'``
        or give one JSON list.
        """,
    ).tag(config=True)

    @validate("machine_profiles")
    def _validate_profiles(self, proposal):
        profiles = []
        for item in proposal.value:
            if isinstance(item, str):
                try:
                    item = json.loads(item)
                except json.JSONDecodeError as e:
                    raise TraitError(f"machine_profiles: not valid JSON ({e.msg})") from None
            for profile in item if isinstance(item, list) else [item]:
                try:
                    profiles.append(parse_machine_profile(profile))
                except LimitError as e:
                    raise TraitError(str(e)) from None
        labels = [p["label"] for p in profiles]
        if len(set(labels)) != len(labels):
            raise TraitError("machine_profiles: labels must be unique")
        return profiles

    node_selector = Any(
        {},
        help="""
        Node selector choices offered when adding an environment, as JSON or a
        dict: ``{"gpu": {"description": "GPU availability", "values": ["yes", "no"]}}``.
        The chosen values reach the spawner in ``user_options["metadata"]["node_selector"]``.
        """,
    ).tag(config=True)

    @validate("node_selector")
    def _validate_node_selector(self, proposal):
        try:
            return parse_node_selector_config(proposal.value)
        except LimitError as e:
            raise TraitError(str(e)) from None

    binderhub_url = Unicode(
        None,
        allow_none=True,
        help="""
        URL of a BinderHub (for example ``http://127.0.0.1:8585/services/binder/``).
        When set, builds go to that BinderHub instead of the local Docker engine.
        """,
    ).tag(config=True)

    repo_providers = List(
        help="""
        Repository providers offered with BinderHub, as ids (``gh``, ``gl``,
        ``git``, …) or ``{"id": "git", "label": "Git repository"}``. Default: Git.
        """,
    ).tag(config=True)

    builder_class = Type(
        DockerBuilder,
        klass=Builder,
        help="""
        The build backend. Default: DockerBuilder, or BinderHubBuilder when
        ``binderhub_url`` is set. Configure it with its own section, e.g.
        ``c.DockerBuilder.repo2docker_image``.
        """,
    ).tag(config=True)

    allowed_repo2docker_images = List(
        Unicode(),
        help="""
        Builders (repo2docker images, e.g.
        ``quay.io/jupyterhub/repo2docker:2024.07.0``) that an environment may
        name in its ``builder_image``, besides the default builder
        (``c.DockerBuilder.repo2docker_image``), which is always allowed and
        offered first. Each version records the builder that made it, and
        ``POST api/environments/{uid}/rebuild`` with ``{"version": id}``
        rebuilds that version's commit with its builder while it is allowed.
        Not used with the BinderHub backend, which chooses its own builder.
        Default: empty (only the default builder).
        """,
    ).tag(config=True)

    @validate("allowed_repo2docker_images")
    def _validate_allowed_repo2docker_images(self, proposal):
        images = []
        for image in proposal.value:
            image = image.strip()
            if not image or re.search(r"[\s\x00-\x1f\x7f]", image) or image.startswith("-"):
                raise TraitError(
                    f"allowed_repo2docker_images: {image[:80]!r} is not an image reference"
                )
            if image not in images:
                images.append(image)
        return images

    allowed_image_registries = List(
        Unicode(),
        help="""
        Registries that environments registered from an existing image
        (``"image": "<reference>"``) may name, by host: ``docker.io``,
        ``ghcr.io``, ``127.0.0.1:5000``; ``*`` allows any. A reference
        without a registry host (``myimage:tag``) names one of the Docker
        engine's own images and is always allowed (it is never pulled); one
        with a registry host is pulled at each build and re-pull. A reference
        to a registry not allowed is refused (400 naming ``image``).
        Default: empty, which allows the engine's own images and the registry
        that ``image_prefix`` names, if it names one (``127.0.0.1:5000/envs/``:
        ``127.0.0.1:5000``).
        """,
    ).tag(config=True)

    @validate("allowed_image_registries")
    def _validate_allowed_image_registries(self, proposal):
        hosts = []
        for host in proposal.value:
            host = host.strip().lower().rstrip("/")
            if not host or re.search(r"[\s/@\x00-\x1f\x7f]", host):
                raise TraitError(
                    f"allowed_image_registries: {host[:80]!r} is not a registry host "
                    "(like docker.io, ghcr.io or 127.0.0.1:5000; * for any)"
                )
            if host not in hosts:
                hosts.append(host)
        return hosts

    cookie_secret_file = Unicode(
        "tljh_repo2docker_cookie_secret",
        help="""
        File holding the secret that signs the login cookie (created, mode
        0600, when missing). $JUPYTERHUB_SERVICE_COOKIE_SECRET or
        $TLJH_REPO2DOCKER_COOKIE_SECRET (hex) take precedence.
        """,
    ).tag(config=True)

    allow_local_repos = Bool(
        False,
        help="Allow absolute local paths as repositories (for tests and single machines).",
    ).tag(config=True)

    image_prefix = Unicode(
        DEFAULT_IMAGE_PREFIX,
        help="""
        Prefix of the names of built images; the name ends with
        ``<name>:<ref>``. It also marks this hub's images and home volumes on
        a Docker engine shared by several hubs. The spawners' ``image_prefix``
        must be the same (its default is the same: ``tljh-r2d/``).
        """,
    ).tag(config=True)

    adopt_legacy_images = Bool(
        False,
        help="""
        Also adopt images built by tljh-repo2docker 3.x that no environment
        of the database names: for a 3.x hub whose database was lost. 3.x
        marked no image with the hub it belongs to, so on a Docker engine
        shared by several hubs set this only on the hub that ran 3.x. The
        images that a converted 3.x database names are always adopted.
        Adopted images are labelled as this service's (``image_prefix``),
        which keeps other hubs from adopting them. Default: False.
        """,
    ).tag(config=True)

    keep_versions = Integer(
        3,
        min=1,
        help="""
        Versions (builds) of each environment kept for a rollback. After each
        successful build, and on prune (``POST api/disk/prune``), the versions
        past the newest ``keep_versions`` are removed from Docker, except the
        current one and any that a container (a server, running or stopped)
        uses. At least 1. Default: 3.
        """,
    ).tag(config=True)

    min_free_disk = Any(
        1024**3,
        help="""
        Free space the Docker engine's disk (its DockerRootDir) must have for
        a build: under it, adding or rebuilding an environment is refused
        (HTTP 507), and a queued build that starts fails, with a message
        naming this setting. Bytes, or a size like ``10G`` or ``500M``; 0
        disables the check. When the free space cannot be known (an engine
        on another machine, the BinderHub backend) builds are not refused.
        Default: 1G.
        """,
    ).tag(config=True)

    @validate("min_free_disk")
    def _validate_min_free_disk(self, proposal):
        try:
            return parse_size(proposal.value, field="min_free_disk")
        except ValueError as e:
            raise TraitError(str(e)) from None

    build_cache_max_age = Float(
        7 * 24 * 3600,
        min=0,
        help="""
        Seconds a build cache entry must have gone unused before prune
        (``POST api/disk/prune``) removes it (entries in use never are). The
        build cache belongs to the Docker engine: other hubs and users of the
        engine share it, and prune removes their old entries too. Default:
        604800 (7 days).
        """,
    ).tag(config=True)

    max_body_size = Integer(
        1024 * 1024,
        help="Largest request body accepted, in bytes; larger ones get 413.",
    ).tag(config=True)

    max_files_count = Integer(
        200,
        min=1,
        help="""
        Most files an environment built from files (``files`` or an uploaded
        ``archive``) may have; more: 400 naming the field. Default: 200.
        """,
    ).tag(config=True)

    max_files_size = Any(
        1024**2,
        help="""
        Largest total size (UTF-8 bytes) of the files of an environment built
        from files, unpacked: an archive that unpacks to more is refused as
        soon as the unpacked total passes it (400 naming the field). Bytes,
        or a size like ``1M``. Default: 1M.
        """,
    ).tag(config=True)

    max_archive_size = Any(
        5 * 1024**2,
        help="""
        Largest uploaded archive (``archive``: a ``.zip`` or ``.tar.gz``, as
        packed, before base64), bytes or a size like ``5M``; larger: 400
        naming ``archive``. POST and PATCH of ``api/environments`` accept a
        request body big enough for one (over ``max_body_size``). Default: 5M.
        """,
    ).tag(config=True)

    @validate("max_files_size", "max_archive_size")
    def _validate_files_sizes(self, proposal):
        try:
            value = parse_size(proposal.value, field=proposal.trait.name)
        except ValueError as e:
            raise TraitError(str(e)) from None
        if value < 1:
            raise TraitError(f"{proposal.trait.name} must be at least 1 byte")
        return value

    authenticate_prometheus = Bool(
        True,
        help="""
        Whether ``{base_url}metrics`` needs authentication, like JupyterHub's
        own ``/metrics``: then only admins of the service and API tokens with
        the ``read:metrics`` scope (and access to the service) may read it.
        False makes it open to anyone who reaches the service.
        """,
    ).tag(config=True)

    health_check_timeout = Float(
        10,
        help="""
        Seconds ``{base_url}health`` waits for the database and for the build
        backend each, before it reports that part as failed (503).
        """,
    ).tag(config=True)

    retry_interval = Float(
        5,
        help="""
        Seconds between attempts to reach what the service needs at start-up
        and cannot use yet: the database (a server not up yet, at boot), the
        build backend (Docker not running yet), the cookie secret file. The
        service serves meanwhile: pages and API answer 503 naming the part,
        ``health`` too, and everything works once the part answers, without a
        restart. Default: 5.
        """,
    ).tag(config=True)

    ref_poll_interval = Float(
        300,
        help="""
        Seconds between checks of the refs of environments with
        ``auto_rebuild`` on: each is asked where its ref is (``git
        ls-remote``) and rebuilt when that is another commit than the one
        built (a rebuild that failed is not tried again for the same commit).
        Each wait varies by a tenth. 0 turns the checks off (webhooks still
        work). Default: 300 (5 minutes). ``c.RefWatcher`` sets how many
        checks run at once and their timeout.
        """,
    ).tag(config=True)

    @validate("ref_poll_interval")
    def _validate_ref_poll_interval(self, proposal):
        if proposal.value < 0:
            raise TraitError("ref_poll_interval: must be 0 (off) or a number of seconds")
        return proposal.value

    webhook_rate_limit = Float(
        30,
        help="""
        Calls of an environment's push webhook (``POST
        api/environments/{uid}/webhook``, the one route open without a hub
        login) accepted per minute, from one client address and for one
        environment each, in bursts of up to as many; more get 429 with
        Retry-After. 0: no limit. Default: 30.
        """,
    ).tag(config=True)

    kube_namespace = Unicode(
        "",
        help="""
        The Kubernetes namespace where the hub's KubeSpawner
        (``Repo2DockerKubeSpawner``) makes users' homes, its
        ``KubeSpawner.namespace``. When set, the Homes page and ``api/homes``
        list and delete this hub's home claims there (PersistentVolumeClaims
        labelled ``tljh_repo2docker.home=1`` whose
        ``tljh_repo2docker.home.prefix`` annotation is this service's
        ``image_prefix``; other hubs' claims in the namespace are left alone)
        instead of Docker volumes. The service reaches the cluster as the
        pod it runs in (its service account), else with ``$KUBECONFIG`` (or
        ``~/.kube/config``); it needs to list, read and delete
        persistentvolumeclaims and list pods in the namespace. Needs the
        ``kubernetes`` extra. Default: empty (homes are Docker volumes).
        """,
    ).tag(config=True)

    @validate("kube_namespace")
    def _validate_kube_namespace(self, proposal):
        value = proposal.value.strip()
        if value and not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", value):
            raise TraitError(
                f"kube_namespace: {value[:80]!r} is not a Kubernetes namespace name "
                "(up to 63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
            )
        return value

    tornado_settings = Dict(help="Extra settings for the Tornado application.").tag(config=True)

    @default("log_level")
    def _default_log_level(self):
        return logging.INFO

    @default("log_format")
    def _default_log_format(self):
        return "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s] %(message)s"

    @default("log_datefmt")
    def _default_log_datefmt(self):
        return "%Y-%m-%d %H:%M:%S"

    # -- derived --------------------------------------------------------------

    @property
    def provider_choices(self):
        if not self.binderhub_url:
            return ["git"]
        ids = []
        for provider in self.repo_providers or ["git"]:
            ids.append(provider["id"] if isinstance(provider, dict) else provider)
        return ids

    @property
    def default_provider(self):
        return self.provider_choices[0]

    @property
    def builder_choices(self):
        """The builders the Add/Edit form offers: the default first, then
        ``allowed_repo2docker_images``; empty with BinderHub."""
        return builder_choices(self.allowed_repo2docker_images, self.builder)

    # -- start-up ---------------------------------------------------------------

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.generate_config:
            return
        self.load_config_file_if_any()
        self.init_logging()

    def load_config_file_if_any(self):
        # TLJH's config.yaml (handed over by the hub), then the file, then the command line.
        try:
            from_tljh = config_from_environment()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if from_tljh is not None:
            self.update_config(from_tljh)
        path = Path(self.config_file)
        named = "TljhRepo2Docker" in self.cli_config and "config_file" in self.cli_config.TljhRepo2Docker
        if path.exists():
            self.load_config_file(path.name, path=[str(path.parent.resolve())])
        elif named:
            raise ConfigError(f"config: the file {self.config_file} does not exist")
        if from_tljh is not None or path.exists():
            # command-line options win
            self.update_config(self.cli_config)

    def init_logging(self):
        self.log.propagate = False
        logging.getLogger("tornado.access").setLevel(
            logging.WARNING if self.log_level > logging.DEBUG else logging.DEBUG
        )

    def init_secrets(self):
        """The secret that signs login cookies: from the environment, the file, or new.

        The file may hold hex text (ours) or raw bytes (what tljh-repo2docker
        3.x writes); it is never rewritten. A file that cannot be read does
        not stop the service (the hub would not start): a temporary secret is
        used, ``health`` names the problem, and the file is read again in the
        background (``retry_secret_file``).
        """
        env_secret = os.environ.get("JUPYTERHUB_SERVICE_COOKIE_SECRET") or os.environ.get(
            "TLJH_REPO2DOCKER_COOKIE_SECRET"
        )
        self.secret_problem = None
        if env_secret:
            try:
                self.cookie_secret = bytes.fromhex(env_secret.strip())
            except ValueError:
                raise ConfigError(
                    "cookie secret: $JUPYTERHUB_SERVICE_COOKIE_SECRET / "
                    "$TLJH_REPO2DOCKER_COOKIE_SECRET must be hex"
                ) from None
            return
        try:
            self.cookie_secret = read_secret_file(self.cookie_secret_file)
        except FileNotFoundError:
            pass
        except SecretFileError as e:
            self._temporary_secret(str(e))
            return
        else:
            return
        self.cookie_secret = secrets.token_bytes(32)
        try:
            fd = os.open(self.cookie_secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.cookie_secret.hex())
        except OSError as e:
            self._temporary_secret(
                f"cannot create {self.cookie_secret_file}: {e.strerror or e.__class__.__name__}"
            )

    def _temporary_secret(self, problem):
        self.cookie_secret = secrets.token_bytes(32)
        self.secret_problem = problem
        self.log.warning(
            "cookie_secret_file: %s. Using a temporary secret: logins last until the "
            "service restarts. Retrying every %gs", problem, self.retry_interval,
        )

    async def retry_secret_file(self):
        """Read the cookie secret file again until it can be read."""
        while self.secret_problem:
            await asyncio.sleep(self.retry_interval)
            try:
                secret = read_secret_file(self.cookie_secret_file)
            except (FileNotFoundError, SecretFileError) as e:
                self.secret_problem = str(e) if isinstance(e, SecretFileError) else (
                    f"{self.cookie_secret_file} does not exist"
                )
                continue
            self.cookie_secret = secret
            self.webapp.settings["cookie_secret"] = secret
            self.secret_problem = None
            self.log.info("cookie_secret_file: read %s; logins now use it", self.cookie_secret_file)

    def init_engine(self):
        try:
            self.engine = db_session.make_engine(self.db_url)
        except db_session.DatabaseURLError as e:
            raise ConfigError(str(e)) from None
        self.sessions = db_session.make_sessionmaker(self.engine)

    async def _until_done(self, attempt, problem_of):
        """``await attempt()`` every ``retry_interval`` seconds until it succeeds.

        ``problem_of(exc)`` records what went wrong and returns it for the
        log, which says it once, and again only when it changes. Returns
        whether there was a problem at all.
        """
        last = None
        while True:
            try:
                await attempt()
            except Exception as e:
                problem = problem_of(e)
                if problem != last:
                    self.log.error("%s. Retrying every %gs", problem, self.retry_interval)
                last = problem
                await asyncio.sleep(self.retry_interval)
                continue
            return last is not None

    async def init_db(self):
        """Upgrade the database; until that works, retry in the background.

        A database server that is not up yet (at boot) or a database that
        cannot be upgraded must not stop the service, or JupyterHub would not
        start: meanwhile pages and API answer 503 naming the database.
        """

        def problem_of(e):
            first = str(e).splitlines()[0] if str(e) else ""
            self.db_problem = (
                f"cannot use the database {db_session.redact(self.db_url)}: "
                f"{e.__class__.__name__}: {first}"
            )
            # What users and `health` see: our own message, or the class
            # only (a driver's message may name hosts, users or SQL).
            self.db_problem_public = (
                first if isinstance(e, db_session.UpgradeError) else e.__class__.__name__
            )
            return f"db_url: {self.db_problem}"

        if await self._until_done(lambda: db_session.upgrade_db(self.engine), problem_of):
            self.log.info("The database can be used now")
        self.db_problem = None
        self.db_ready.set()

    def init_builder(self):
        builder_class = self.builder_class
        explicit = "builder_class" in self.config.get("TljhRepo2Docker", {})
        if self.binderhub_url and not explicit:
            from .builds.binderhub import BinderHubBuilder

            builder_class = BinderHubBuilder
        kwargs = {}
        if self.binderhub_url and "url" in builder_class.class_trait_names():
            kwargs["url"] = self.binderhub_url
        self.builder = builder_class(parent=self, **kwargs)

    def init_hub_client(self):
        self.hub_client = HubClient(parent=self)

    def init_quotas(self):
        self.quotas = Quotas(parent=self)

    def init_disk(self):
        self.disk = Disk(self, builder=self.builder, sessions=self.sessions, log=self.log)

    def init_homes(self):
        # self.homes: the Docker engine's volumes and servers' containers;
        # self.user_homes: where the Homes page finds users' homes (the
        # claims of kube_namespace, else those volumes).
        self.homes = Homes(parent=self, builder=getattr(self, "builder", None))
        self.user_homes = self.homes
        if self.kube_namespace:
            self.user_homes = Claims(self.kube_namespace, self.image_prefix, log=self.log)
            self.log.info("Homes: the claims of the Kubernetes namespace %s", self.kube_namespace)

    def init_build_manager(self):
        self.build_manager = BuildManager(
            parent=self,
            builder=self.builder,
            sessions=self.sessions,
            on_started=metrics.build_started,
            on_finished=metrics.build_finished,
            on_built=self.disk.after_build,
            start_check=self.disk.refusal,
        )
        self.disk.build_manager = self.build_manager

    def init_lifecycle(self):
        # git for where refs are and what pushes changed (a temporary cache,
        # removed at stop), shared by the lifecycle and the ref poller.
        self.remote_git = RemoteGit(log=self.log)
        self.lifecycle = Lifecycle(
            git=self.remote_git,
            sessions=self.sessions,
            build_manager=self.build_manager,
            quotas=self.quotas,
            hub_client=self.hub_client,
            disk=self.disk,
            image_prefix=self.image_prefix,
            log=self.log,
        )

    def init_ref_watcher(self):
        self.ref_watcher = RefWatcher(
            parent=self,
            sessions=self.sessions,
            lifecycle=self.lifecycle,
            ready=self.builds_ready,
            interval=self.ref_poll_interval,
        )

    async def init_builds(self):
        """Recover builds once the database and the build backend answer.

        Until then builds cannot be added, rebuilt, cancelled or removed
        (503 naming the backend); retries in the background.
        """
        await self.db_ready.wait()

        async def recover():
            await self.builder.check()
            await self.build_manager.recover(
                lambda env: build_request(env, image_prefix=self.image_prefix)
            )

        def problem_of(e):
            self.builder_problem = e.message if isinstance(e, BuildError) else (
                f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
            return f"The build backend cannot be used yet: {self.builder_problem}"

        if await self._until_done(recover, problem_of):
            self.log.info("The build backend answers now: builds recovered")
        self.builder_problem = None
        self.builds_ready.set()

    async def init_parts(self):
        """What start() leaves to the background: database, then builds."""
        try:
            await self.init_db()
            await self.init_builds()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("Start-up failed")

    def init_webapp(self):
        routes = []
        for module in (
            pages, environments, versions, webhooks, logs, servers, homes, disk, health, openapi,
        ):
            routes.extend(module.default_handlers)
        handlers = [(url_path_join(self.base_url, path), handler) for path, handler in routes]
        if self.logo_file:
            handlers.append((url_path_join(self.base_url, "logo"), pages.LogoHandler))
        handlers += [
            (url_path_join(self.base_url, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(self.base_url, r"api/.*"), NotFoundAPIHandler),
        ]
        jinja = Environment(
            loader=ChoiceLoader(
                [
                    FileSystemLoader([*self.template_paths, str(TEMPLATES)]),
                    PrefixLoader({"tljh_repo2docker": FileSystemLoader(str(TEMPLATES))}),
                ]
            ),
            autoescape=select_autoescape(default=True),
        )
        settings = {
            "tljh_app": self,
            "sessions": self.sessions,
            "build_manager": self.build_manager,
            "hub_client": self.hub_client,
            "base_url": self.base_url,
            "hub_prefix": self.hub_prefix,
            "hub_base_url": url_path_join(os.environ.get("JUPYTERHUB_BASE_URL", "/"), ""),
            "version": __version__,
            "custom_links": self.custom_links,
            "logo_src": url_path_join(self.base_url, "logo") if self.logo_file else None,
            "logo_href": self.logo_url or None,
            "jinja2_env": jinja,
            "cookie_secret": self.cookie_secret,
            "static_path": str(STATIC),
            "static_url_prefix": url_path_join(self.base_url, "static/"),
            # No tornado "xsrf_cookies": JupyterHub's HubOAuth checks the XSRF
            # token itself and accepts cookie authentication only when it
            # matches; token-authenticated API calls need none.
            "login_url": url_path_join(self.hub_prefix, "login"),
            "log_function": self.log_request,
        }
        settings.update(self.tornado_settings)
        self.webapp = web.Application(handlers, **settings)

    def log_request(self, handler):
        metrics.observe_request(handler)
        status = handler.get_status()
        level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
        self.log.log(
            level,
            "%d %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.path,  # the path only: query strings may carry tokens
            1000 * handler.request.request_time(),
        )

    async def start(self):
        self.db_ready = asyncio.Event()
        self.builds_ready = asyncio.Event()
        self.db_problem = self.db_problem_public = None
        self.builder_problem = None
        self.init_secrets()
        self.init_engine()
        self.log.info("tljh-repo2docker %s, database %s", __version__, db_session.redact(self.db_url))
        self.init_builder()
        self.init_hub_client()
        self.init_quotas()
        self.init_disk()
        self.init_homes()
        self.init_build_manager()
        self.init_lifecycle()
        self.init_ref_watcher()
        self.init_webapp()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.http_server = HTTPServer(
            BodyLimit(
                self.webapp, lambda method, path: body_limit(self, method, path), self.log
            ),
            xheaders=True,
            # Bodies over max_body_size are read and dropped, then answered
            # with 413 (see bodylimit.py); past this, the connection is closed.
            max_body_size=max(self.max_body_size, 1 << 30),
        )
        try:
            self.http_server.listen(self.port, self.ip)
        except OSError as e:
            raise ConfigError(f"port: cannot listen on {self.ip}:{self.port}: {e.strerror}") from None
        self.log.info("Serving %s on http://%s:%d", self.base_url, self.ip, self.port)
        background = [asyncio.create_task(self.init_parts())]
        if self.secret_problem:
            background.append(asyncio.create_task(self.retry_secret_file()))
        if self.ref_poll_interval > 0:
            background.append(asyncio.create_task(self.ref_watcher.run()))
        await stop.wait()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self.stop()

    def not_ready(self, needs_builds=False):
        """Why requests cannot be served yet, for users (None when they can).

        Set up by start(); an application made without it (tests that
        build only the web app) is ready.
        """
        db_ready = getattr(self, "db_ready", None)
        if db_ready is not None and not db_ready.is_set():
            reason = self.db_problem_public if self.db_problem else "the service is starting"
            return f"The database is not available yet ({reason}); the service keeps trying"
        builds_ready = getattr(self, "builds_ready", None)
        if needs_builds and builds_ready is not None and not builds_ready.is_set():
            reason = self.builder_problem or "the service is starting"
            return f"The build backend is not available yet ({reason}); the service keeps trying"
        return None

    async def stop(self):
        self.log.info("Shutting down")
        self.http_server.stop()
        if self.builds_ready.is_set():
            await self.build_manager.close()
        await self.builder.close()
        await self.hub_client.close()
        self.remote_git.close()
        await self.engine.dispose()


def config_from_environment(environ=os.environ):
    """The settings the hub handed over in :data:`~.contract.SETTINGS_ENV_VAR` (written by tljh_config.py), as a Config (None when unset)."""
    text = environ.get(SETTINGS_ENV_VAR)
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{SETTINGS_ENV_VAR}: not JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{SETTINGS_ENV_VAR}: not a JSON object of settings by class")
    return Config(data)


def main(argv=None):
    app = TljhRepo2Docker()
    try:
        app.initialize(argv)
        if app.generate_config:
            print(app.generate_config_file())
            return
        asyncio.run(app.start())
    except (TraitError, ConfigError) as e:
        print(f"tljh-repo2docker: error: {e}", file=sys.stderr)
        sys.exit(2)
