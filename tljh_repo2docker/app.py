"""The service: configuration, start-up steps and routes."""

import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
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
    validate,
)
from traitlets.config import Application

from . import __version__, metrics
from .bodylimit import BodyLimit
from .builds.base import Builder
from .builds.docker import DockerBuilder
from .builds.manager import BuildManager
from .db import session as db_session
from .db import store
from .handlers import environments, health, homes, logs, openapi, pages, servers
from .handlers.base import NotFoundAPIHandler
from .homes import Homes
from .hub import HubClient
from .limits import (
    LimitError,
    parse_cpu,
    parse_machine_profile,
    parse_memory,
    parse_node_selector_config,
)
from .paths import STATIC, TEMPLATES


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
        "max_body_size": "TljhRepo2Docker.max_body_size",
        "authenticate_prometheus": "TljhRepo2Docker.authenticate_prometheus",
        "max_concurrent_builds": "BuildManager.max_concurrent_builds",
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

    classes = [BuildManager, DockerBuilder, HubClient, Homes]

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
        "tljh-r2d/",
        help="Prefix of the names of built images; the name ends with ``<name>:<ref>``.",
    ).tag(config=True)

    max_body_size = Integer(
        1024 * 1024,
        help="Largest request body accepted, in bytes; larger ones get 413.",
    ).tag(config=True)

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

    # -- start-up ---------------------------------------------------------------

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.generate_config:
            return
        self.load_config_file_if_any()
        self.init_logging()

    def load_config_file_if_any(self):
        path = Path(self.config_file)
        named = "TljhRepo2Docker" in self.cli_config and "config_file" in self.cli_config.TljhRepo2Docker
        if path.exists():
            self.load_config_file(path.name, path=[str(path.parent.resolve())])
            # command-line options win over the file
            self.update_config(self.cli_config)
        elif named:
            raise ConfigError(f"config: the file {self.config_file} does not exist")

    def init_logging(self):
        self.log.propagate = False
        logging.getLogger("tornado.access").setLevel(
            logging.WARNING if self.log_level > logging.DEBUG else logging.DEBUG
        )

    def init_secrets(self):
        env_secret = os.environ.get("JUPYTERHUB_SERVICE_COOKIE_SECRET") or os.environ.get(
            "TLJH_REPO2DOCKER_COOKIE_SECRET"
        )
        if env_secret:
            self.cookie_secret = bytes.fromhex(env_secret)
            return
        path = Path(self.cookie_secret_file)
        if path.exists():
            self.cookie_secret = bytes.fromhex(path.read_text().strip())
            return
        self.cookie_secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.cookie_secret.hex())

    async def init_db(self):
        try:
            self.engine = db_session.make_engine(self.db_url)
        except db_session.DatabaseURLError as e:
            raise ConfigError(str(e)) from None
        try:
            await db_session.upgrade_db(self.engine)
        except Exception as e:
            raise ConfigError(
                f"db_url: cannot use the database {db_session.redact(self.db_url)}: "
                f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
        self.sessions = db_session.make_sessionmaker(self.engine)

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

    async def init_build_manager(self):
        self.build_manager = BuildManager(
            parent=self,
            builder=self.builder,
            sessions=self.sessions,
            on_started=metrics.build_started,
            on_finished=metrics.build_finished,
        )
        await self.build_manager.recover(environments.build_request)

    def init_webapp(self):
        routes = []
        for module in (pages, environments, logs, servers, homes, health, openapi):
            routes.extend(module.default_handlers)
        handlers = [(url_path_join(self.base_url, path), handler) for path, handler in routes]
        handlers += [
            (url_path_join(self.base_url, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(self.base_url, r"api/.*"), NotFoundAPIHandler),
        ]
        jinja = Environment(
            loader=FileSystemLoader(str(TEMPLATES)),
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
        self.init_secrets()
        await self.init_db()
        self.log.info("tljh-repo2docker %s, database %s", __version__, db_session.redact(self.db_url))
        self.init_builder()
        self.init_hub_client()
        await self.init_build_manager()
        self.init_webapp()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.http_server = HTTPServer(
            BodyLimit(self.webapp, self.max_body_size, self.log),
            xheaders=True,
            # Bodies over max_body_size are read and dropped, then answered
            # with 413 (see bodylimit.py); past this, the connection is closed.
            max_body_size=max(self.max_body_size, 1 << 30),
        )
        self.http_server.listen(self.port, self.ip)
        self.log.info("Serving %s on http://%s:%d", self.base_url, self.ip, self.port)
        await stop.wait()
        await self.stop()

    async def stop(self):
        self.log.info("Shutting down")
        self.http_server.stop()
        await self.build_manager.close()
        await self.builder.close()
        await self.hub_client.close()
        await self.engine.dispose()


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
