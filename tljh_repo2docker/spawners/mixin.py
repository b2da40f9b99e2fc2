"""What every tljh-repo2docker spawner shares, whatever its engine.

- **Which environment**: ``user_options["image"]`` (or the one the server ran
  last, from the spawner's state) is looked up as a built environment
  (:meth:`EnvironmentMixin.inspect_environment`, one per engine).
- **May this user use it**: only what :meth:`EnvironmentMixin.list_images`
  returns may be offered or started. It keeps the environments the user may
  use by the rule of :mod:`tljh_repo2docker.access` (owner, shared with
  everyone, with them or with one of their groups, or an admin), reading
  who each is shared with from the service's database (``db_url``, read
  only); override it to filter more and both the spawn form and ``start``
  follow.
- **Limits**: :meth:`EnvironmentMixin.set_limits` sets ``mem_limit`` and
  ``cpu_limit`` from the environment, falling back to the configured ones.
- **Homes**: where a user's files live (:meth:`EnvironmentMixin.home_for`: one
  home per user, per server or per environment, its name and its labels).
- **Refused starts**: a named server that never ran and whose first start is
  refused (through the spawn form or the hub's REST API) is removed from the
  hub once JupyterHub is done with it
  (:meth:`EnvironmentMixin.forget_refused_first_start`), so it is not listed
  for ever with no environment; a refused restart keeps the server.

The engines add how: ``docker.py`` (labels, named volumes) and ``kube.py``
(the service's database, a PersistentVolumeClaim).
"""

import asyncio
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tornado import web
from traitlets import Enum, Integer, Unicode, default
from traitlets.config import Configurable

from .. import contract
from ..contract import DEFAULT_IMAGE_PREFIX, LABEL_PREFIX, TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE, belongs_to_hub  # noqa: F401 (spawners import belongs_to_hub here)
from ..access import PRIVATE, Access, Viewer
from ..limits import LimitError, memory_bytes, parse_cpu, parse_memory

#: The label that makes an image a built environment.
UID_LABEL = contract.UID_LABEL
#: The label the service puts on images that keep a name without its prefix
#: (images of 3.x, relabelled when the service is upgraded).
IMAGE_PREFIX_LABEL = contract.IMAGE_PREFIX_LABEL
#: Labels of a home volume (the contract with the service's homes page).
HOME_LABEL = contract.HOME_LABEL


def _label(labels, name):
    return (labels or {}).get(f"{LABEL_PREFIX}.{name}") or ""


class EnvironmentRefused(web.HTTPError):
    """A server was asked to start something that is not a usable environment.

    A 400 whose message JupyterHub shows as it is, on the spawn form and in the
    spawn progress events.
    """

    def __init__(self, message):
        super().__init__(400, "%s", message)
        self.jupyterhub_message = message


class SpawnFailed(Exception):
    """Starting a server failed; the message says why, and JupyterHub shows it."""

    def __init__(self, message):
        super().__init__(message)
        self.jupyterhub_message = message
        # JupyterHub 5's REST API answers a spawn error with
        # ``log_message % args`` (and only "error" without it).
        self.log_message = "%s"


def _unusable(image, problem):
    return EnvironmentRefused(
        f"The environment {image!r} cannot be started: its {problem}. "
        "Ask an administrator to rebuild it."
    )


@dataclass(frozen=True)
class BuiltEnvironment:
    """An environment as its image's labels (or the service's database) describe it."""

    uid: str
    #: The image reference to start (``name:tag``).
    image: str
    display_name: str
    repo: str = ""
    ref: str = ""
    #: Normalised memory limit (``"2G"``), None for the configured default.
    memory: str | None = None
    #: CPU limit, None for the configured default.
    cpu: float | None = None
    node_selector: dict = field(default_factory=dict)
    image_id: str = ""
    #: The ``owner`` label (who added it), "" when unknown.
    owner: str = ""
    #: The ``access`` label: "database" when only the service's database says
    #: who may use it (images built since sharing exists), else "".
    access: str = ""

    @classmethod
    def from_labels(cls, labels, image, image_id=""):
        """Read the labels of ``image``; refuse an image that is not a built environment."""
        uid = _label(labels, "uid")
        if not uid:
            raise EnvironmentRefused(
                f"{image!r} is not an environment built by tljh-repo2docker: "
                "choose one of the built environments."
            )
        memory, cpu, node_selector = _checked_limits(
            image,
            _label(labels, "mem_limit"),
            _label(labels, "cpu_limit"),
            _label(labels, "node_selector") or "{}",
        )
        return cls(
            uid=uid,
            image=image,
            display_name=_label(labels, "display_name") or image,
            repo=_label(labels, "repo") or (labels or {}).get("repo2docker.repo", ""),
            ref=_label(labels, "ref") or (labels or {}).get("repo2docker.ref", ""),
            memory=memory,
            cpu=cpu,
            node_selector=node_selector,
            image_id=image_id,
            owner=_label(labels, "owner"),
            access=_label(labels, "access"),
        )

    @classmethod
    def from_user_options(cls, user_options):
        """The environment ``user_options`` name (for engines without labels to read)."""
        image = user_options.get("image")
        if not image or not isinstance(image, str):
            raise EnvironmentRefused(
                "No environment was chosen: start servers from the Environments page."
            )
        metadata = user_options.get("metadata") or {}
        if not isinstance(metadata, dict):
            metadata = {}
        memory, cpu, node_selector = _checked_limits(
            image, metadata.get("memory"), metadata.get("cpu"), metadata.get("node_selector") or {}
        )
        uid = user_options.get("environment")
        return cls(
            uid=uid if isinstance(uid, str) else "",
            image=image,
            display_name=str(metadata.get("display_name") or image),
            memory=memory,
            cpu=cpu,
            node_selector=node_selector,
        )

    def user_options(self):
        """The user_options that start this environment, as the service sends them."""
        return {
            "image": self.image,
            "environment": self.uid,
            "metadata": {
                "node_selector": dict(self.node_selector),
                "memory": self.memory,
                "cpu": self.cpu,
                "display_name": self.display_name,
            },
        }

    def image_dict(self):
        """This environment as an entry of :meth:`EnvironmentMixin.list_images`.

        The keys of tljh-repo2docker 3.x (``image_name``, ``display_name``,
        ``mem_limit``, ``cpu_limit`` as strings, ``repo``, ``ref``, ``status``)
        and ``uid``, ``node_selector``, ``image_id``.
        """
        return {
            "image_name": self.image,
            "display_name": self.display_name,
            "mem_limit": self.memory or "",
            "cpu_limit": "" if self.cpu is None else f"{self.cpu:g}",
            "repo": self.repo,
            "ref": self.ref,
            "status": "built",
            "uid": self.uid,
            "node_selector": dict(self.node_selector),
            "image_id": self.image_id,
        }


def _checked_limits(image, memory, cpu, node_selector):
    try:
        memory = parse_memory(memory, field="memory limit")
        cpu = parse_cpu(cpu, field="CPU limit")
    except LimitError as e:
        raise _unusable(image, str(e)) from None
    if isinstance(node_selector, str):
        try:
            node_selector = json.loads(node_selector)
        except json.JSONDecodeError:
            node_selector = None
    if not isinstance(node_selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in node_selector.items()
    ):
        raise _unusable(image, "node selector is not a JSON object of names to strings")
    return memory, cpu, node_selector


def _image_reference(image):
    """The name to start a listed image by, or None for an untagged (superseded) build."""
    # A version kept for a rollback (tag "...--vN") is not offered by itself.
    tags = [
        t for t in image.get("RepoTags") or []
        if t != "<none>:<none>" and not contract.is_version_reference(t)
    ]
    wanted = _label(image.get("Labels"), "image_name")
    if wanted in tags:
        return wanted
    return tags[0] if tags else None


def environments_from_images(images, image_prefix="", log=None):
    """The built environments among Docker's image list ``images`` (``GET /images/json``),
    of the hub with ``image_prefix``, sorted by display name."""
    environments = []
    for image in images:
        reference = _image_reference(image)
        labels = image.get("Labels")
        if reference is None or not belongs_to_hub(reference, labels, image_prefix):
            continue
        try:
            environments.append(
                BuiltEnvironment.from_labels(labels, reference, image_id=image.get("Id", ""))
            )
        except EnvironmentRefused as e:
            if log is not None:
                log.warning("Not offering image %s: %s", reference, e.jupyterhub_message)
    return sorted(environments, key=lambda env: (env.display_name.lower(), env.image))


def _format_memory(value):
    if not value:
        return None
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if value >= size:
            return f"{round(value / size, 2):g}{unit}"
    return f"{value}B"


def escape_name(text):
    """``text`` made safe (and still distinct) for Docker object names.

    Letters, digits, ``_`` and ``.`` stay; every other byte becomes ``-XX``
    (hex), ``-`` included, so two names never escape to the same text:
    ``alice`` -> ``alice``, ``a-b`` -> ``a-2db``, ``ann@x.org`` -> ``ann-40x.org``.
    """
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char in "_."):
            out.append(char)
        else:
            out.extend(f"-{byte:02x}" for byte in char.encode())
    return "".join(out)


@dataclass(frozen=True)
class Home:
    """Where a server's home directory lives."""

    #: Docker volume name, or host directory when ``host`` is true.
    source: str
    #: Mount point in the container (``/home/<image user>``).
    path: str
    #: The volume's labels (the contract with the service's homes page).
    labels: dict
    host: bool = False


async def _environments_form(spawner):
    # JupyterHub calls a callable options_form with the spawner as argument.
    return await spawner.environments_form()


#: JupyterHub's Start button is white on its orange (#f37524): 2.8:1, under
#: the 4.5:1 that WCAG asks of text (axe's color-contrast, "serious"). The
#: spawn form we render carries darker shades of the same orange (hue 23°,
#: saturation 90%, lightness 40% / 35% / 33%), white on them: 4.7:1 at rest,
#: 5.9:1 hovered and 6.4:1 pressed (JupyterHub has black on orange there).
#: No theme changes it, so the same colours hold in light and dark mode.
START_BUTTON_BG = "#c0520b"
START_BUTTON_HOVER_BG = "#a84709"
START_BUTTON_ACTIVE_BG = "#9e4309"
START_BUTTON_TEXT = "#ffffff"
#: Scoped to the spawn form's submit button (id and class: it outweighs
#: JupyterHub's ``.btn-jupyter``); Bootstrap 5 buttons read these variables.
_START_BUTTON_STYLE = (
    "<style>\n"
    "#spawn_form [type=submit].btn-jupyter {\n"
    f"  --bs-btn-color: {START_BUTTON_TEXT};\n"
    f"  --bs-btn-bg: {START_BUTTON_BG};\n"
    f"  --bs-btn-border-color: {START_BUTTON_HOVER_BG};\n"
    f"  --bs-btn-hover-color: {START_BUTTON_TEXT};\n"
    f"  --bs-btn-hover-bg: {START_BUTTON_HOVER_BG};\n"
    f"  --bs-btn-hover-border-color: {START_BUTTON_ACTIVE_BG};\n"
    f"  --bs-btn-active-color: {START_BUTTON_TEXT};\n"
    f"  --bs-btn-active-bg: {START_BUTTON_ACTIVE_BG};\n"
    f"  --bs-btn-active-border-color: {START_BUTTON_ACTIVE_BG};\n"
    f"  --bs-btn-disabled-color: {START_BUTTON_TEXT};\n"
    f"  --bs-btn-disabled-bg: {START_BUTTON_BG};\n"
    f"  --bs-btn-disabled-border-color: {START_BUTTON_HOVER_BG};\n"
    "}\n"
    "</style>"
)

#: How long a refused first start may stay in JupyterHub's hands (stopping
#: what it started, answering the caller) before its record is removed;
#: past this it is left alone (something else holds it).
_FORGET_WAIT_SECONDS = 300
#: How often to look whether JupyterHub is done with it.
_FORGET_POLL_SECONDS = 0.1


# One engine per database URL for the whole hub process (spawners come and go).
_engines = {}


def sessions_for(db_url):
    from ..db.session import make_engine, make_sessionmaker

    if db_url not in _engines:
        _engines[db_url] = make_sessionmaker(make_engine(db_url))
    return _engines[db_url]


def database_unreadable(error):
    message = f"The environments' database cannot be read ({error.__class__.__name__}): try again."
    http_error = web.HTTPError(503, "%s", message)
    http_error.jupyterhub_message = message  # shown as it is on the spawn pages
    return http_error


def _missing_sqlite_file(db_url):
    """The path of a SQLite ``db_url`` whose file does not exist, else None."""
    if not db_url.startswith("sqlite"):
        return None
    path = db_url.split("///", 1)[-1].split("?", 1)[0]
    return path if path and path != ":memory:" and not os.path.exists(path) else None


async def read_access(db_url, log=None):
    """``{uid: Access}`` of the built environments in the service's database.

    A SQLite file that does not exist (the service never ran there) holds
    no environment: ``{}``. A database that cannot be read raises a 503
    that JupyterHub shows.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from ..db import store

    missing = _missing_sqlite_file(db_url)
    if missing:
        if log is not None:
            log.warning(
                "The service's database %s does not exist: environments are offered by their "
                "owner label only. Set c.Repo2DockerSpawner.db_url to the service's db_url.",
                missing,
            )
        return {}
    try:
        rules = await store.access_rules(sessions_for(db_url))
    except (SQLAlchemyError, OSError) as e:
        raise database_unreadable(e) from None
    return {uid: Access(owner, sharing) for uid, (owner, sharing) in rules.items()}


def label_access(env):
    """What an image the database does not know is shared as. Images built
    since sharing exists (their ``access`` label says "database"): with
    their owner only. Others (3.x's, made by hand, built before): with
    everyone, as they always were."""
    if env.access == "database":
        return Access(env.owner or None, PRIVATE)
    return Access(None, None)


class EnvironmentMixin(Configurable):
    """The rules every tljh-repo2docker spawner follows (see the module's docstring).

    Engines implement :meth:`built_environments` and :meth:`inspect_environment`.
    """

    image_prefix = Unicode(
        DEFAULT_IMAGE_PREFIX,
        help="""
        Offer and start only environments whose image name starts with this
        prefix, the service's ``image_prefix`` (both default to
        ``tljh-r2d/``), or, for images of tljh-repo2docker 3.x that kept
        their names, whose ``tljh_repo2docker.image_prefix`` label is this
        prefix (the service adds it when it adopts them). It also names the
        hub on its users' home volumes, so several hubs can share one Docker
        engine. Set it to the service's when that is not the default; an
        empty prefix takes every built environment on the engine.
        """,
    ).tag(config=True)

    db_url = Unicode(
        help="""
        The service's database (the same URL as ``TljhRepo2Docker.db_url``;
        the spawner only reads it), where it reads who each environment is
        shared with, so that the spawn form offers, and ``start`` accepts,
        only what the user may use, whatever ``user_options`` the hub's REST
        API was sent. ``hub_config.configure(c, args=["--db_url=…"])`` and
        the TLJH plugin set it to the service's. Default: the service's own
        default, ``sqlite:///<the hub's directory>/tljh_repo2docker.sqlite``
        (a managed service runs in the hub's directory). When that file does
        not exist (or has no row for an image), images built since sharing
        exists are offered to their owner only, older ones (3.x's, made by
        hand) to everyone, as before.
        """,
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        return f"sqlite:///{Path.cwd() / 'tljh_repo2docker.sqlite'}"

    image_user_name = Unicode(
        "jovyan",
        help="""
        The user inside the environments' images: their home directory
        ``/home/<image_user_name>`` is where the user's home is mounted. The
        same as the service's ``DockerBuilder.user_name``. Default: ``jovyan``
        (repo2docker's).
        """,
    ).tag(config=True)

    image_user_id = Integer(
        1000,
        help="""
        The numeric id of that user (the service's ``DockerBuilder.user_id``).
        A home whose files belong to another id (the id was changed) is given
        to this one when a server starts. Default: 1000.
        """,
    ).tag(config=True)

    home_scope = Enum(
        ["user", "server", "environment", "none"],
        help="""
        Which servers share a home (the user's files, mounted at
        ``/home/<image_user_name>``), which outlives stopping, removing and
        recreating servers, rebuilds, changes of environment and restarts:

        - ``user``: one home per user, for all their servers (the default);
        - ``server``: one per user and server name;
        - ``environment``: one per user and environment;
        - ``none``: no home; files live in the server's container and are
          lost when it is removed (``remove = True``, a rebuild, another
          environment, removing the server).

        Default: ``user``, or ``none`` for a ``SystemUserSpawner``, which
        mounts the user's home directory from the host itself.
        """,
    ).tag(config=True)

    @default("home_scope")
    def _default_home_scope(self):
        return "user"

    content_puller_image = Unicode(
        contract.DEFAULT_REPO2DOCKER_IMAGE,
        help="""
        The image that pulls content at launch (``user_options["content"]``:
        a git repository cloned, or updated as nbgitpuller does, into the
        user's home before the server starts): it runs ``sh`` and ``git`` as
        ``image_user_id`` with the home mounted, on the server's network.
        Default: the service's default ``DockerBuilder.repo2docker_image``
        (``hub_config.configure`` sets the service's ``--repo2docker_image``).
        """,
    ).tag(config=True)

    content_pull_timeout = Integer(
        300,
        help="""
        Seconds the pull of content at launch may take; then the server
        starts without it (a pull that fails never stops a start).
        Default: 300.
        """,
    ).tag(config=True)

    #: The content of this start (user_options["content"], checked), or None.
    content = None
    #: ``default_url`` as configured, while a start's content sets its own.
    _configured_default_url = None

    def choose_content(self):
        """The content this start pulls (``user_options["content"]``, checked
        as the service checks it: anyone may send the hub user_options), or
        None. Sets ``default_url`` to where it opens until
        :meth:`restore_default_url`."""
        from ..errors import FieldError
        from ..service.content import checked_content

        try:
            self.content = checked_content(self.user_options or {})
        except FieldError as e:
            self.forget_refused_first_start()
            raise EnvironmentRefused(f"The content to pull at launch is refused: {e}") from None
        if self.content is not None:
            if self._configured_default_url is None:
                self._configured_default_url = self.default_url
            # JupyterHub formats default_url ({username}...): braces stay braces
            urlpath = self.content["urlpath"].replace("{", "{{").replace("}", "}}")
            self.default_url = "/" + urlpath
        return self.content

    def restore_default_url(self):
        if self._configured_default_url is not None:
            self.default_url = self._configured_default_url
            self._configured_default_url = None

    def content_not_pulled(self, reason):
        """Say, in one line, why the content was not pulled (the server starts anyway)."""
        content = self.content or {}
        self.log.warning(
            "Content %s was not pulled into ~/%s of %s: %s",
            content.get("repo"), content.get("dir"), self._log_name, reason,
        )

    environment_image = Unicode(
        "",
        help="""
        The image of the environment this server was last started with.

        Kept in the spawner's state so that a server restarted without
        user_options starts the same environment again. Set by `start()`,
        not by configuration.
        """,
    )

    environment_uid = Unicode(
        "",
        help="""The uid of that environment (spawner state; set by `start()`).""",
    )

    image_id = Unicode(
        "",
        help="""
        The id of the image the server was last started from (spawner state,
        ``state["image_id"]``; set by `start()`). When the environment has been
        rebuilt since, its image has another id: the server runs the old
        build until it is restarted.
        """,
    )

    #: The environment being started (set by choose_environment()).
    chosen_environment = None
    #: The configured (mem_limit, cpu_limit) while an environment's are applied.
    _configured_limits = None

    @default("options_form")
    def _default_options_form(self):
        return _environments_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return self.environment_options_from_form

    #: Whether this server had never run when this spawner was made (and has
    #: not started since): a refusal of its start removes it.
    _first_start = False
    #: The task that removes this server after its refused first start.
    _forgetting = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Decided here, once: by the time start() runs, JupyterHub has
        # already marked the server started (orm_spawner.started).
        self._first_start = self._never_ran()

    # -- the engine's part -------------------------------------------------------

    async def built_environments(self):
        """Every built environment of this hub, as :class:`BuiltEnvironment`, sorted."""
        raise NotImplementedError

    async def inspect_environment(self, image):
        """The built environment ``image``; raises EnvironmentRefused for anything else."""
        raise NotImplementedError

    # -- which environments this user may use ----------------------------------------

    async def list_images(self):
        """The environments this user may see and start, as dicts (see
        :meth:`BuiltEnvironment.image_dict`).

        Override it to filter (``await super().list_images()`` and keep some):
        the spawn form offers only these, and ``start`` refuses any other.
        """
        environments = await self.built_environments()
        viewer = self.viewer()
        if not viewer.admin:
            rules = await self.environment_access()
            if rules is not None:
                environments = [
                    env for env in environments
                    if rules.get(env.uid, label_access(env)).allows(viewer)
                ]
        return [env.image_dict() for env in environments]

    async def environment_access(self):
        """``{uid: Access}`` of the built environments (see access.py), or None
        when this engine cannot know (then every built environment is offered)."""
        return await read_access(self.db_url, self.log)

    def viewer(self):
        """This spawner's user as access.Viewer: their name, their groups and
        whether they are an admin (hub admin, or the admin scope in one of
        their roles or their groups' roles), from the hub's own database."""
        user = self.user
        groups = list(getattr(user, "groups", None) or ())
        admin = bool(getattr(user, "admin", False))
        if not admin:
            roles = list(getattr(user, "roles", None) or ())
            for group in groups:
                roles += list(getattr(group, "roles", None) or ())
            admin = any(TLJH_R2D_ADMIN_SCOPE in (getattr(r, "scopes", None) or ()) for r in roles)
        names = frozenset(getattr(g, "name", g) for g in groups)
        return Viewer(user.name, names, admin)

    async def allowed_environment(self, image):
        """The environment ``image`` if this user may start it; EnvironmentRefused otherwise."""
        env = await self.inspect_environment(image)
        offered = {entry.get("image_name") for entry in await self.list_images()}
        if env.image not in offered:
            failed = await self.failed_version(env)
            if failed is not None:
                raise EnvironmentRefused(
                    f"Version {failed.number} of the environment {env.display_name!r} "
                    "failed its check, so no server may start from it: "
                    f"{(failed.check or {}).get('message') or 'no reason recorded'}"
                )
            raise EnvironmentRefused(
                f"You may not start the environment {env.display_name!r}: "
                "it is not one of the environments offered to you."
            )
        return env

    async def failed_version(self, env):
        """The version of ``env`` whose image ``env.image`` is and that failed
        its check (the service keeps such images, never current, under their
        version's own reference), or None. Asked only when a start is refused
        anyway, for a message that says why."""
        if not self.db_url or not env.uid or _missing_sqlite_file(self.db_url):
            return None
        from sqlalchemy.exc import SQLAlchemyError

        from ..db import store

        try:
            versions = await store.list_versions(sessions_for(self.db_url), env.uid)
        except (SQLAlchemyError, OSError):
            return None
        for version in versions:
            same = version.image_name == env.image or (
                env.image_id and version.image_id == env.image_id
            )
            if same and (version.check or {}).get("status") == "failed":
                return version
        return None

    async def choose_environment(self):
        """Find, check and remember the environment to start.

        ``user_options["image"]``, else the image this server ran last.
        """
        image = self.user_options.get("image") or self.environment_image
        try:
            env = await self.allowed_environment(image)
        except EnvironmentRefused:
            self.forget_refused_first_start()
            raise
        self.chosen_environment = env
        self.environment_image = self.image = env.image
        self.environment_uid = env.uid
        return env

    # -- limits ---------------------------------------------------------------------

    async def set_limits(self):
        """Set ``mem_limit`` and ``cpu_limit`` to the chosen environment's, or the
        configured ones where it has none. Safe to call more than once; ``start``
        puts the configured values back when it is done."""
        self.apply_limits(await self.choose_environment())

    def apply_limits(self, env):
        if self._configured_limits is None:
            self._configured_limits = (self.mem_limit, self.cpu_limit)
        mem_limit, cpu_limit = self._configured_limits
        self.mem_limit = memory_bytes(env.memory) if env.memory else mem_limit
        self.cpu_limit = env.cpu or cpu_limit

    def restore_limits(self):
        """Put the configured limits back: the fallback for the next environment."""
        if self._configured_limits is not None:
            self.mem_limit, self.cpu_limit = self._configured_limits
            self._configured_limits = None

    # -- homes ----------------------------------------------------------------------

    @property
    def home_path(self):
        return f"/home/{self.image_user_name}"

    def home_for(self, environment_uid=""):
        """The home of this server for the environment ``environment_uid``, or
        None (``home_scope = "none"``, or per environment with none known)."""
        scope = self.home_scope
        if scope == "none" or (scope == "environment" and not environment_uid):
            return None
        server = (self.name or "") if scope == "server" else ""
        environment = environment_uid if scope == "environment" else ""
        labels = {
            HOME_LABEL: "1",
            f"{HOME_LABEL}.user": self.user.name,
            f"{HOME_LABEL}.server": server,
            f"{HOME_LABEL}.environment": environment,
            f"{HOME_LABEL}.prefix": self.image_prefix,
        }
        source = self.render_home_name(server, environment)
        return Home(source=source, path=self.home_path, labels=labels, host=self.host_homes)

    #: True when homes are host directories (set by engines that offer them).
    host_homes = False

    def render_home_name(self, server, environment):
        raise NotImplementedError

    # -- the spawn form ---------------------------------------------------------------

    async def environments_form(self):
        """The spawn form: one radio button ``image`` per environment of :meth:`list_images`."""
        images = await self.list_images()
        if not images:
            # Nothing to start: the hub made this (named) server to show the
            # form; it must not stay behind as a server of no environment.
            self.forget_unstarted()
            return self._nothing_to_start()
        images = sorted(
            images, key=lambda i: (str(i.get("display_name", "")).lower(), i["image_name"])
        )
        names = [entry["image_name"] for entry in images]
        selected = self.environment_image if self.environment_image in names else names[0]
        summaries = await self.environment_summaries([entry.get("uid") for entry in images])
        items = [
            self._form_item(number, entry, entry["image_name"] == selected, summaries.get(entry.get("uid")))
            for number, entry in enumerate(images)
        ]
        return (
            '<fieldset class="tljh-repo2docker-environments">\n'
            "<legend>Environment</legend>\n" + "\n".join(items) + "\n</fieldset>\n"
            + _START_BUTTON_STYLE
        )

    def _nothing_to_start(self):
        """The spawn form when no environment is offered: who can add one, and
        no Start button (JupyterHub's form has one; it would only fail)."""
        viewer = self.viewer()
        if viewer.admin or self._may_build():
            base = (getattr(self.hub, "base_url", "") or "/hub/").rsplit("hub/", 1)[0] or "/"
            url = f"{base}services/{contract.SERVICE_NAME}/environments"
            advice = (
                f'Add one on the <a class="alert-link" href="{html.escape(url)}">Environments</a> '
                "page; once it is built you can start it here."
            )
        else:
            advice = "Ask an administrator to add one for you."
        return (
            '<div class="alert alert-warning" role="alert" id="tljh-r2d-no-environment">'
            "No environment has been built yet, so there is nothing to start. "
            f"{advice}</div>\n"
            # JupyterHub's own Start button would only fail: hidden while
            # nothing can be started (the message above says why).
            "<style>#spawn_form [type=submit] { display: none; }</style>"
        )

    def _may_build(self):
        """Whether this user may add environments of their own (the build scope
        in one of their roles or their groups' roles)."""
        user = self.user
        roles = list(getattr(user, "roles", None) or ())
        for group in getattr(user, "groups", None) or ():
            roles += list(getattr(group, "roles", None) or ())
        return any(TLJH_R2D_BUILD_SCOPE in (getattr(r, "scopes", None) or ()) for r in roles)

    def forget_unstarted(self):
        """Remove this named server from the hub when it has never been
        started: visiting ``/hub/spawn/<user>/<name>`` makes the server
        ``<name>`` in the hub's database before the form is shown, and a start
        refused there would leave it listed, with no environment, for ever.
        Returns whether it was removed."""
        used = (
            getattr(self, "_spawn_pending", False)
            or getattr(self, "_proxy_pending", False)
            or not self._never_ran()
            or getattr(getattr(self, "orm_spawner", None), "user_options", None)
        )
        if not self.name or used:
            return False
        return self._remove_server_record("it was never started")

    def _never_ran(self):
        """Whether the hub's record of this server says it never ran: no
        server, never started, no activity, no saved state."""
        orm_spawner = getattr(self, "orm_spawner", None)
        if orm_spawner is None:
            return False
        return not (
            getattr(orm_spawner, "server", None) is not None
            or getattr(orm_spawner, "started", None)
            or getattr(orm_spawner, "last_activity", None)
            or getattr(orm_spawner, "state", None)
        )

    def _remove_server_record(self, reason):
        """Delete this named server from the hub's database and from its
        user's spawners (what removing it through the hub's API does, less
        the resources it never had). Returns whether it was removed."""
        orm_spawner = getattr(self, "orm_spawner", None)
        user = getattr(self, "user", None)
        db = getattr(user, "db", None)
        spawners = getattr(user, "spawners", None)
        if not self.name or orm_spawner is None or db is None or spawners is None:
            return False
        try:
            db.delete(orm_spawner)
            db.commit()
        except Exception as e:  # the hub's database: never fail the page for this
            db.rollback()
            self.log.warning("Could not remove the server %s of %s: %s", self.name, user.name, e)
            return False
        spawners.pop(self.name, None)
        self.log.info("Removed the server %s of %s: %s", self.name, user.name, reason)
        return True

    def started_once(self):
        """Say that a start of this spawner succeeded: a later refusal is a
        refused restart, which keeps the server (the engines' ``start``)."""
        self._first_start = False

    def forget_refused_first_start(self):
        """Remove this named server from the hub once JupyterHub is done with
        its refused *first* start, so that a start refused through the hub's
        REST API (``POST /hub/api/users/<u>/servers/<name>`` with
        user_options we refuse, or a server created with ``PUT``) leaves no
        server behind, listed for ever with no environment.

        Called where a start is refused (it raises EnvironmentRefused right
        after). JupyterHub still holds this spawner then: it stops what was
        started, answers the caller with the refusal's message and keeps the
        failure for its pages. So the removal waits, in a task, until that is
        done. The default server ("") is never removed, nor a server that ran
        before, nor one whose start went on (a subclass caught the refusal).
        Returns that task, or None when there is nothing to remove."""
        if self._forgetting is not None and not self._forgetting.done():
            return self._forgetting  # asked again for the same refusal
        if not (self._first_start and self.name):
            return None
        if not (getattr(self, "_start_pending", False) or getattr(self, "_spawn_pending", False)):
            return None  # not in a start (a form being checked): nothing to wait for
        self._forgetting = asyncio.ensure_future(self._forget_after_start())
        return self._forgetting

    def _in_jupyterhubs_hands(self):
        """Whether JupyterHub is still busy with this server's start (or
        its stop, which follows a failed start)."""
        future = getattr(self, "_spawn_future", None)
        return bool(self.pending) or (future is not None and not future.done())

    def _start_was_refused(self):
        """Whether this server's last start failed and left it stopped, and
        this spawner is still the one the hub holds for it."""
        future = getattr(self, "_spawn_future", None)
        failed = (
            future is not None and future.done() and not future.cancelled()
            and future.exception() is not None
        )
        user = self.user
        orm_spawner = self.orm_spawner
        current = (
            dict.get(user.spawners, self.name) is self
            and user.orm_spawners.get(self.name) is orm_spawner
        )
        return failed and current and not self.active and orm_spawner.server is None

    async def _forget_after_start(self):
        deadline = time.monotonic() + _FORGET_WAIT_SECONDS
        try:
            while self._in_jupyterhubs_hands():
                if time.monotonic() > deadline:
                    self.log.warning(
                        "Not removing the server %s of %s after its refused start: it is "
                        "still pending after %s s", self.name, self.user.name, _FORGET_WAIT_SECONDS,
                    )
                    return False
                await asyncio.sleep(_FORGET_POLL_SECONDS)
            if not self._start_was_refused():
                return False
            return self._remove_server_record("its first start was refused")
        except Exception as e:  # a task of its own: say it, never fail silently
            self.log.warning(
                "Could not remove the server %s after its refused start: %r", self.name, e
            )
            return False

    async def environment_summaries(self, uids):
        """``{uid: "Python 3.12 · 143 packages"}``: what the current version of
        each environment holds (recorded by the service's builds), read from
        the service's database (``db_url``); ``{}`` without one or when it
        cannot be read: the form then goes without, it does not fail."""
        uids = [uid for uid in uids if uid]
        db_url = getattr(self, "db_url", "")
        if not (db_url and uids) or _missing_sqlite_file(db_url):
            return {}
        from ..service.environment_list import summaries

        try:
            return await summaries(sessions_for(db_url), uids)
        except Exception as e:  # a summary is never worth a failed spawn page
            self.log.warning("Could not read what the environments hold: %s", e)
            return {}

    def _form_item(self, number, entry, checked, summary=None):
        esc = html.escape
        memory = entry.get("mem_limit") or _format_memory(self.mem_limit) or "no limit"
        cpu = entry.get("cpu_limit") or (f"{self.cpu_limit:g}" if self.cpu_limit else "")
        cpus = cpu or "no limit"
        repo, ref = entry.get("repo", ""), entry.get("ref", "")
        source = f"{repo} @ {ref}" if ref else repo
        input_id = f"tljh-r2d-env-{number}"
        return (
            '<div class="form-check mb-2">'
            f'<input class="form-check-input" type="radio" name="image" id="{input_id}" '
            f'value="{esc(entry["image_name"])}" required{" checked" if checked else ""}>'
            f'<label class="form-check-label" for="{input_id}">'
            f"<strong>{esc(str(entry.get('display_name') or entry['image_name']))}</strong> "
            f'<small class="text-muted">{esc(source)}</small><br>'
            f"<small>Memory: {esc(str(memory))} · CPUs: {esc(str(cpus))}"
            + (f' · <span class="tljh-r2d-summary">{esc(summary)}</span>' if summary else "")
            + "</small></label></div>"
        )

    async def environment_options_from_form(self, formdata):
        """Form data -> user_options of an environment this user may start."""
        image = (formdata.get("image") or [""])[0]
        try:
            env = await self.allowed_environment(image)
        except EnvironmentRefused:
            self.forget_unstarted()
            raise
        return env.user_options()

    # -- state ------------------------------------------------------------------------

    def get_state(self):
        state = super().get_state()
        for key in ("environment_image", "environment_uid", "image_id"):
            if getattr(self, key):
                state[key] = getattr(self, key)
        return state

    def load_state(self, state):
        super().load_state(state)
        for key in ("environment_image", "environment_uid", "image_id"):
            setattr(self, key, state.get(key, ""))
