"""Spawners that start the environments built by tljh-repo2docker.

The service (and the hub's spawn form) start a server with these user_options::

    {"image": "<image name>", "environment": "<uid>",
     "metadata": {"node_selector": {...}, "memory": "2G", "cpu": 1.5, ...}}

:class:`Repo2DockerSpawner` (Docker) starts an image only if it is a built
environment, and takes its limits from the image's labels, which only the
service writes. :class:`Repo2DockerKubeSpawner` (Kubernetes) has no local image
to read: with ``db_url`` set it reads the environment from the service's
database, otherwise it takes the limits and node selector from
``user_options``; it needs the ``kubernetes`` extra and is imported only when
asked for.
"""

import html
import json
from contextlib import contextmanager
from dataclasses import dataclass, field

import docker.errors
from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Unicode, default

from . import LABEL_PREFIX
from .limits import LimitError, memory_bytes, parse_cpu, parse_memory

#: The label that makes an image a built environment.
UID_LABEL = f"{LABEL_PREFIX}.uid"


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


def _unusable(image, problem):
    return EnvironmentRefused(
        f"The environment {image!r} cannot be started: its {problem}. "
        "Ask an administrator to rebuild it."
    )


@dataclass(frozen=True)
class BuiltEnvironment:
    """An environment as its image's labels describe it."""

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

    @classmethod
    def from_labels(cls, labels, image, image_id=""):
        """Read the labels of ``image``; refuse an image that is not a built environment."""
        uid = _label(labels, "uid")
        if not uid:
            raise EnvironmentRefused(
                f"{image!r} is not an environment built by tljh-repo2docker: "
                "choose one of the built environments."
            )
        try:
            memory = parse_memory(_label(labels, "mem_limit"), field="memory limit")
            cpu = parse_cpu(_label(labels, "cpu_limit"), field="CPU limit")
        except LimitError as e:
            raise _unusable(image, str(e)) from None
        try:
            node_selector = json.loads(_label(labels, "node_selector") or "{}")
        except json.JSONDecodeError:
            node_selector = None
        if not isinstance(node_selector, dict):
            raise _unusable(image, "node selector is not a JSON object")
        return cls(
            uid=uid,
            image=image,
            display_name=_label(labels, "display_name") or image,
            repo=_label(labels, "repo"),
            ref=_label(labels, "ref"),
            memory=memory,
            cpu=cpu,
            node_selector=node_selector,
            image_id=image_id,
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


@contextmanager
def _overridden(obj, **values):
    """Set attributes of ``obj`` for the duration of a block, then restore them.

    The spawner object lives as long as the server: the configured limits must
    still be there for the next start, which may be of another environment.
    """
    saved = {name: getattr(obj, name) for name in values}
    for name, value in values.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


def _image_reference(image):
    """The name to start a listed image by, or None for an untagged (superseded) build."""
    tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
    wanted = _label(image.get("Labels"), "image_name")
    if wanted in tags:
        return wanted
    return tags[0] if tags else None


def _format_memory(value):
    if not value:
        return None
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if value >= size:
            return f"{round(value / size, 2):g}{unit}"
    return f"{value}B"


async def _environments_form(spawner):
    # JupyterHub calls a callable options_form with the spawner as argument.
    return await spawner.environments_form()


class Repo2DockerSpawner(DockerSpawner):
    """DockerSpawner that starts only the environments built by tljh-repo2docker.

    - ``user_options["image"]`` must name an image labelled ``tljh_repo2docker.uid``;
      anything else is refused before a container is made.
    - The memory and CPU limits come from the image's labels, and fall back to
      the configured ``mem_limit`` and ``cpu_limit``.
    - The chosen image is kept in the spawner's state; a server given another
      image (or a rebuilt one) gets a new container.
    - The spawn form lists the built environments.
    """

    environment_image = Unicode(
        "",
        help="""
        The image of the environment this server was last started with.

        Kept in the spawner's state so that a server restarted without
        user_options starts the same environment again. Set by `start()`,
        not by configuration.
        """,
    )

    image_prefix = Unicode(
        "",
        help="""
        Offer and start only environments whose image name starts with this
        prefix: the service's ``image_prefix`` (``tljh-r2d/`` by default). Set it
        when several services or hubs share one Docker engine, so that each
        hub shows only its own environments. Default: every built environment
        on the engine.
        """,
    ).tag(config=True)

    #: The environment being started (set by start(), read by create_object()).
    chosen_environment = None

    @default("options_form")
    def _default_options_form(self):
        return _environments_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return self.environment_options_from_form

    async def built_environments(self):
        """The built environments on the Docker engine, sorted by display name."""
        images = await self.docker("images", filters={"label": UID_LABEL})
        environments = []
        for image in images:
            reference = _image_reference(image)
            if reference is None or not reference.startswith(self.image_prefix):
                continue
            try:
                environments.append(BuiltEnvironment.from_labels(image.get("Labels"), reference))
            except EnvironmentRefused as e:
                self.log.warning("Not offering image %s: %s", reference, e.jupyterhub_message)
        return sorted(environments, key=lambda env: (env.display_name.lower(), env.image))

    async def inspect_environment(self, image):
        """The built environment ``image``; raises EnvironmentRefused for anything else."""
        if not image or not isinstance(image, str):
            raise EnvironmentRefused(
                "No environment was chosen: choose one of the built environments."
            )
        try:
            info = await self.docker("inspect_image", image)
        except docker.errors.NotFound:
            raise EnvironmentRefused(
                f"There is no environment {image!r}: it may have been deleted."
            ) from None
        except docker.errors.APIError as e:
            if e.status_code == 400:  # not a valid image reference
                raise EnvironmentRefused(f"{image!r} is not a valid image name.") from None
            raise
        labels = (info.get("Config") or {}).get("Labels")
        env = BuiltEnvironment.from_labels(labels, image, image_id=info["Id"])
        if not image.startswith(self.image_prefix):
            raise EnvironmentRefused(
                f"{image!r} is not one of this hub's environments: choose one of the built environments."
            )
        return env

    async def environments_form(self):
        """The spawn form: one radio button ``image`` per built environment."""
        environments = await self.built_environments()
        if not environments:
            return (
                '<div class="alert alert-warning" role="alert">'
                "No environment has been built yet, so there is nothing to start. "
                "Ask an administrator to add one.</div>"
            )
        images = [env.image for env in environments]
        selected = self.environment_image if self.environment_image in images else images[0]
        items = [
            self._form_item(number, env, env.image == selected)
            for number, env in enumerate(environments)
        ]
        return (
            '<fieldset class="tljh-repo2docker-environments">\n'
            "<legend>Environment</legend>\n" + "\n".join(items) + "\n</fieldset>"
        )

    def _form_item(self, number, env, checked):
        esc = html.escape
        memory = env.memory or _format_memory(self.mem_limit) or "no limit"
        cpu = env.cpu or self.cpu_limit
        cpus = f"{cpu:g}" if cpu else "no limit"
        source = f"{env.repo} @ {env.ref}" if env.ref else env.repo
        input_id = f"tljh-r2d-env-{number}"
        return (
            '<div class="form-check mb-2">'
            f'<input class="form-check-input" type="radio" name="image" id="{input_id}" '
            f'value="{esc(env.image)}" required{" checked" if checked else ""}>'
            f'<label class="form-check-label" for="{input_id}">'
            f"<strong>{esc(env.display_name)}</strong> "
            f'<small class="text-muted">{esc(source)}</small><br>'
            f"<small>Memory: {esc(memory)} · CPUs: {esc(cpus)}</small>"
            "</label></div>"
        )

    async def environment_options_from_form(self, formdata):
        """Form data -> user_options, with the uid and node selector from the image's labels."""
        image = (formdata.get("image") or [""])[0]
        env = await self.inspect_environment(image)
        return env.user_options()

    async def start(self):
        image = self.user_options.get("image") or self.environment_image
        env = await self.inspect_environment(image)
        self.chosen_environment = env
        self.image = self.environment_image = env.image
        await self.remove_container_of_other_image(env.image_id)
        return await super().start()

    async def check_allowed(self, image):
        # DockerSpawner.start() passes user_options["image"] through here;
        # start() above has already checked it and set self.image to it.
        if image != self.image:
            raise EnvironmentRefused(f"{image!r} is not the environment being started.")
        return image

    async def remove_container_of_other_image(self, image_id):
        """Remove this server's existing container if it was made from another image.

        DockerSpawner restarts an existing container of the same name as it is;
        another environment, or a rebuild (maybe with other limits, which are
        fixed when a container is created), needs a new container.
        """
        container = await self.get_object()
        if container is None or container["Image"] == image_id:
            return
        self.log.info(
            "Replacing container %s of %s: it was made from another image than %s",
            self.object_name,
            self._log_name,
            self.image,
        )
        if container["State"]["Running"]:
            await self.stop_object()
        await self.remove_object()
        self.object_id = ""

    async def create_object(self):
        """Create the container with the environment's limits, else the configured ones."""
        env = self.chosen_environment
        with _overridden(
            self,
            mem_limit=memory_bytes(env.memory) if env.memory else self.mem_limit,
            cpu_limit=env.cpu or self.cpu_limit,
        ):
            return await super().create_object()

    async def delete_forever(self):
        """The server is deleted: remove its stopped container too (with ``remove=False``)."""
        if await self.get_object() is not None:
            await self.remove_object()
            self.object_id = ""

    def get_state(self):
        state = super().get_state()
        if self.environment_image:
            state["environment_image"] = self.environment_image
        return state

    def load_state(self, state):
        super().load_state(state)
        self.environment_image = state.get("environment_image", "")


# One engine per database URL for the whole hub process (spawners come and go).
_engines = {}


def _sessions_for(db_url):
    from .db.session import make_engine, make_sessionmaker

    if db_url not in _engines:
        _engines[db_url] = make_sessionmaker(make_engine(db_url))
    return _engines[db_url]


async def stored_user_options(db_url, user_options):
    """``user_options`` with the image, limits and node selector the service
    stored for the chosen environment (``user_options["environment"]``, its
    uid): what a user sends cannot raise their limits or pick another image."""
    from sqlalchemy.exc import SQLAlchemyError

    from .db import store
    from .environments import user_options as stored_options

    uid = user_options.get("environment")
    if not uid or not isinstance(uid, str):
        raise EnvironmentRefused(
            "No environment was chosen: start servers from the Environments page."
        )
    try:
        env = await store.get_environment(_sessions_for(db_url), uid)
    except (SQLAlchemyError, OSError) as e:
        message = f"The environments' database cannot be read ({e.__class__.__name__}): try again."
        error = web.HTTPError(503, "%s", message)
        error.jupyterhub_message = message  # shown as it is on the spawn pages
        raise error from None
    if env is None:
        raise EnvironmentRefused("This environment no longer exists: choose another one.")
    if env.image_id is None:
        raise EnvironmentRefused(
            f"The environment {env.name!r} is not built (status: {env.status}): choose another one."
        )
    stored = stored_options(env)
    return {
        **user_options,
        **stored,
        "metadata": {**(user_options.get("metadata") or {}), **stored["metadata"]},
    }


class _KubeEnvironment:
    """What Repo2DockerKubeSpawner adds to KubeSpawner.

    A plain mixin, so that this module imports without kubespawner installed.
    """

    async def load_user_options(self):
        # KubeSpawner's documented hook for user_options (profiles come first).
        await super().load_user_options()
        if self.db_url:
            self.user_options = await stored_user_options(self.db_url, self.user_options)
        image = self.user_options.get("image")
        if not image or not isinstance(image, str):
            raise EnvironmentRefused(
                "No environment was chosen: start servers from the Environments page."
            )
        if not image.startswith(self.image_prefix):
            raise EnvironmentRefused(
                f"{image!r} is not one of this hub's environments: choose one of the built environments."
            )
        self.image = image

    async def get_pod_manifest(self):
        """The pod with the environment's limits and node selector, else the configured ones."""
        metadata = self.user_options.get("metadata") or {}
        try:
            memory = parse_memory(metadata.get("memory"), field="memory limit")
            cpu = parse_cpu(metadata.get("cpu"), field="CPU limit")
        except LimitError as e:
            raise EnvironmentRefused(f"The environment cannot be started: its {e}.") from None
        node_selector = metadata.get("node_selector") or {}
        if not isinstance(node_selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in node_selector.items()
        ):
            raise EnvironmentRefused(
                "The environment cannot be started: its node selector must map names to strings."
            )
        with _overridden(
            self,
            mem_limit=memory_bytes(memory) if memory else self.mem_limit,
            cpu_limit=cpu or self.cpu_limit,
            node_selector={**self.node_selector, **node_selector},
        ):
            return await super().get_pod_manifest()


def _make_kube_spawner():
    try:
        from kubespawner import KubeSpawner
    except ImportError as e:
        raise ImportError(
            "Repo2DockerKubeSpawner needs jupyterhub-kubespawner: "
            "install tljh-repo2docker with the 'kubernetes' extra "
            "(pip install 'tljh-repo2docker[kubernetes]')"
        ) from e

    class Repo2DockerKubeSpawner(_KubeEnvironment, KubeSpawner):
        """KubeSpawner for environments built by tljh-repo2docker (e.g. with BinderHub).

        Takes ``user_options["image"]``, and the memory and CPU limits and node
        selector from ``user_options["metadata"]``; limits fall back to the
        configured ``mem_limit``/``cpu_limit``, and the node selector is merged
        into the configured ``node_selector``.

        Unlike the Docker spawner, it has no image labels to check these
        against. Set ``db_url`` to the service's database and it takes image,
        limits and node selector from there, by the environment's uid; without
        it a user who calls JupyterHub's REST API with their own user_options
        chooses their limits, and their image within ``image_prefix``.
        """

        db_url = Unicode(
            "",
            help="""
            The service's database (the same URL as ``TljhRepo2Docker.db_url``;
            the spawner only reads it). When set, the spawner starts only built
            environments and takes their image, memory and CPU limits and node
            selector from the database, whatever ``user_options`` say.
            Default: trust ``user_options`` (within ``image_prefix``).
            """,
        ).tag(config=True)

        image_prefix = Unicode(
            "",
            help="""
            Start only images whose name starts with this prefix, e.g. the
            registry and ``image_prefix`` BinderHub pushes to
            (``registry.example.org/binder-``). Default: any image.
            """,
        ).tag(config=True)

    Repo2DockerKubeSpawner.__qualname__ = "Repo2DockerKubeSpawner"
    return Repo2DockerKubeSpawner


def __getattr__(name):
    # Repo2DockerKubeSpawner is made on first use: importing kubespawner (and
    # kubernetes_asyncio) costs time and needs the 'kubernetes' extra.
    if name == "Repo2DockerKubeSpawner":
        spawner_class = _make_kube_spawner()
        globals()[name] = spawner_class
        return spawner_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
