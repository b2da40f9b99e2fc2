"""The Kubernetes engine: :class:`Repo2DockerKubeSpawner`, made on first use.

There are no image labels to read on Kubernetes: with ``db_url`` the
environments come from the service's database, otherwise from
``user_options``. Homes are PersistentVolumeClaims (KubeSpawner's storage
settings), one per user by default, never deleted with a server.

A pod that no node can take (none matches its node selector, or none has room
for it) makes the start fail after ``unschedulable_timeout`` seconds with the
scheduler's reason and the labels it asks for, instead of a timeout that says
nothing (``start_timeout``, minutes later). Likewise a pod whose node cannot
pull its image (removed from the registry, a registry that refuses the node)
fails after ``image_pull_timeout`` seconds with the node's reason.
"""

import asyncio
import dataclasses
import time

from tornado import web as _web
from traitlets import Bool, Float, Unicode, default

from . import content as content_puller
from .mixin import (
    HOME_LABEL,
    BuiltEnvironment,
    EnvironmentMixin,
    EnvironmentRefused,
    SpawnFailed,
    _environments_form,
    belongs_to_hub,
    read_access,
)
from .mixin import database_unreadable as _database_unreadable
from .mixin import sessions_for as _sessions_for

_PVC_TEMPLATES = {
    "user": "tljh-r2d-home-{username}",
    "server": "tljh-r2d-home-{user_server}",
    "environment": "tljh-r2d-home-{username}--env-{environment}",
    "none": "",
}
#: The name of the home volume in the pod.
HOME_VOLUME = "tljh-r2d-home"
#: The name of the init container that pulls content at launch.
CONTENT_CONTAINER = "tljh-r2d-content"
#: The pod's own volume that holds the content of a server with no home.
CONTENT_VOLUME = "tljh-r2d-content-dir"


def _unverifiable():
    message = (
        "This hub cannot check which environments you may use (its Kubernetes spawner "
        "has no db_url): ask an administrator to set c.Repo2DockerKubeSpawner.db_url "
        "to the service's database."
    )
    error = _web.HTTPError(503, "%s", message)
    error.jupyterhub_message = message  # shown as it is on the spawn pages
    return error


async def stored_user_options(db_url, user_options):
    """``user_options`` with the image, limits and node selector the service
    stored for the chosen environment (``user_options["environment"]``, its
    uid): what a user sends cannot raise their limits or pick another image."""
    options, _image_id = await _stored_options_and_image(db_url, user_options)
    return options


async def _stored_options_and_image(db_url, user_options):
    """:func:`stored_user_options`, and the id of the image they start (the
    current version's, as the service recorded it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..db import store
    from ..contract import pinned_image
    from ..contract import user_options as stored_options

    uid = user_options.get("environment")
    if not uid or not isinstance(uid, str):
        raise EnvironmentRefused(
            "No environment was chosen: start servers from the Environments page."
        )
    try:
        env = await store.get_environment(_sessions_for(db_url), uid)
    except (SQLAlchemyError, OSError) as e:
        raise _database_unreadable(e) from None
    if env is None:
        raise EnvironmentRefused("This environment no longer exists: choose another one.")
    if env.image_id is None:
        raise EnvironmentRefused(
            f"The environment {env.name!r} is not built (status: {env.status}): choose another one."
        )
    stored = stored_options(env)
    try:
        version = await store.current_version(_sessions_for(db_url), env)
    except (SQLAlchemyError, OSError) as e:
        raise _database_unreadable(e) from None
    # the current version's own reference, which a rebuild never moves
    stored["image"] = pinned_image(env, version)
    options = {
        **user_options,
        **stored,
        "metadata": {**(user_options.get("metadata") or {}), **stored["metadata"]},
    }
    return options, env.image_id or ""


def _braces_kept(value):
    """``value`` with every ``{`` and ``}`` of its strings doubled: KubeSpawner
    formats the strings of ``init_containers`` with its template fields."""
    if isinstance(value, str):
        return value.replace("{", "{{").replace("}", "}}")
    if isinstance(value, dict):
        return {k: _braces_kept(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_braces_kept(v) for v in value]
    return value


def unschedulable_reason(pod):
    """Why the scheduler has found no node for ``pod`` (a Pod as a dict, as
    KubeSpawner's reflector holds it), or None: it has a node, or the
    scheduler has not said it has none."""
    if not pod or (pod.get("spec") or {}).get("nodeName"):
        return None
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return (condition.get("message") or "").strip() or "no node can run it"
    return None


def unschedulable_message(pod, reason, waited):
    """What a user is told when no node takes their server's pod: the
    scheduler's ``reason`` and the node labels the pod asks for."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    labels = ", ".join(f"{key}={value}" for key, value in sorted(selector.items()))
    needs = f"a node labelled {labels} (its node selector)" if labels else "a node"
    return (
        f"No node of the cluster can run this server: {reason.rstrip('.')} "
        f"(for {waited:.0f} s). It needs {needs}, with room for its CPU and "
        "memory requests. Choose another environment, or ask an administrator."
    )


# The kubelet's reasons for a container waiting on its image: the pull failed
# (it retries, backing off), or the reference is not one.
_PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
_PULL_FINAL = {"ErrImageNeverPull", "InvalidImageName"}


def image_pull_failure(pod):
    """``(image, reason, message, final)`` when a container of ``pod`` (a Pod
    as a dict, as KubeSpawner's reflector holds it) waits because its image
    cannot be pulled, else None. ``final``: retrying cannot help."""
    statuses = (pod or {}).get("status") or {}
    # Init containers first: the others wait for them (an init container of
    # the same image, e.g. one that prepares the home, fails the same way).
    for status in (statuses.get("initContainerStatuses") or []) + (
        statuses.get("containerStatuses") or []
    ):
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _PULL_FAILURES:
            message = (waiting.get("message") or "").strip()
            return status.get("image") or "", reason, message, reason in _PULL_FINAL
    return None


def image_pull_message(image, reason, message, waited):
    """What a user is told when the node cannot pull their server's image."""
    detail = f": {message.rstrip('.')}" if message else f" ({reason})"
    return (
        f"The cluster's node could not pull the image {image}{detail} "
        f"(for {waited:.0f} s). The registry may have removed it, or refuse the node: "
        "rebuild the environment, or ask an administrator."
    )


class KubeEnvironment(EnvironmentMixin):
    """What Repo2DockerKubeSpawner adds to KubeSpawner.

    A plain mixin, so that this module imports without kubespawner installed.
    """

    @default("image_prefix")
    def _default_image_prefix(self):
        # Images on Kubernetes are named by the registry they are pushed to
        # (BinderHub's, or the Docker builder's with push on), not by the
        # service's default prefix; and homes are claims, not volumes the
        # service lists. Default: every image; set it to the registry prefix.
        return ""

    @default("options_form")
    def _default_options_form(self):
        # Without the database there is no list of environments to offer.
        return _environments_form if self.db_url else ""

    @default("db_url")
    def _default_db_url(self):
        return ""  # on Kubernetes the service's database is elsewhere: name it

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self):
        return self.home_scope != "none"

    @default("delete_pvc")
    def _default_delete_pvc(self):
        return False  # deleting a user's files is never a side effect

    @default("pvc_name_template")
    def _default_pvc_name_template(self):
        return _PVC_TEMPLATES[self.home_scope] or "claim-{user_server}"

    @default("fs_gid")
    def _default_fs_gid(self):
        return self.image_user_id

    @default("storage_capacity")
    def _default_storage_capacity(self):
        return "10Gi"

    async def built_environments(self):
        """The built environments in the service's database (needs ``db_url``),
        with their current image's id."""
        if not self.db_url:
            # Nothing to list: the environment user_options name is the only one known.
            image = self.user_options.get("image") if self.user_options else None
            return [BuiltEnvironment.from_user_options(self.user_options)] if image else []
        from sqlalchemy.exc import SQLAlchemyError

        from ..db import store
        from ..contract import pinned_image
        from ..contract import user_options as stored_options

        sessions = _sessions_for(self.db_url)
        try:
            rows = await store.list_environments(sessions)
            versions = await store.all_versions(sessions)
        except (SQLAlchemyError, OSError) as e:
            raise _database_unreadable(e) from None
        current = {}  # uid: the current version (newest first: the first match)
        image_ids = {env.uid: env.image_id for env in rows}
        for uid, version in versions:
            if uid not in current and version.image_id == image_ids.get(uid):
                current[uid] = version

        def options(env):
            # the current version's own reference, as stored_user_options() starts
            return {**stored_options(env), "image": pinned_image(env, current.get(env.uid))}

        environments = [
            dataclasses.replace(
                BuiltEnvironment.from_user_options(options(env)), image_id=env.image_id or ""
            )
            for env in rows
            if env.image_id is not None and belongs_to_hub(env.image_name, {}, self.image_prefix)
        ]
        return sorted(environments, key=lambda env: (env.display_name.lower(), env.image))

    async def environment_access(self):
        # Without the database, nothing says who an environment is shared with.
        return await read_access(self.db_url, self.log) if self.db_url else None

    async def inspect_environment(self, image):
        env = BuiltEnvironment.from_user_options(self.user_options)
        if image != env.image:
            raise EnvironmentRefused(f"{image!r} is not the environment being started.")
        if not belongs_to_hub(env.image, {}, self.image_prefix):
            raise EnvironmentRefused(
                f"{env.image!r} is not one of this hub's environments: choose one of the built environments."
            )
        return env

    async def environment_options_from_form(self, formdata):
        uid = (formdata.get("environment") or [""])[0]
        image = (formdata.get("image") or [""])[0]
        for entry in await self.list_images():
            if entry["image_name"] == image or (uid and entry["uid"] == uid):
                return {"image": entry["image_name"], "environment": entry["uid"]}
        raise EnvironmentRefused("Choose one of the environments offered to you.")

    async def load_user_options(self):
        # KubeSpawner's documented hook for user_options (profiles come first).
        await super().load_user_options()
        image_id = ""
        if self.db_url:
            self.user_options, image_id = await _stored_options_and_image(
                self.db_url, self.user_options
            )
        elif not self.trust_user_options:
            raise _unverifiable()
        if not self.user_options.get("image"):
            raise EnvironmentRefused(
                "No environment was chosen: start servers from the Environments page."
            )
        env = await self.choose_environment()
        # state["image_id"]: the image this server starts (unknown without the database)
        self.image_id = image_id
        home = self.home_for(env.uid)
        if home is not None and self.pvc_name != home.source:
            self.pvc_name = home.source
            self._pvc_exists = False  # another claim (per environment): make sure it exists

    async def watch_scheduling(self, interval=1):
        """Return once this server's pod is on a node; raise SpawnFailed when it
        has been unschedulable for ``unschedulable_timeout`` seconds (a setting
        of Repo2DockerKubeSpawner; the scheduler's own condition on the pod,
        read from KubeSpawner's pod reflector: no API request of its own)."""
        if not self.unschedulable_timeout:
            return
        since = None
        while True:
            await asyncio.sleep(interval)
            pod = self._reflected_pod()
            if pod and (pod.get("spec") or {}).get("nodeName"):
                return
            reason = unschedulable_reason(pod)
            if reason is None or self._node_on_its_way():
                since = None
                continue
            since = since or time.monotonic()
            waited = time.monotonic() - since
            if waited >= self.unschedulable_timeout:
                message = unschedulable_message(pod, reason, waited)
                self.log.warning("Server %s of %s: %s", self.name, self.user.name, message)
                raise SpawnFailed(message)

    async def watch_image_pull(self, interval=1):
        """Raise SpawnFailed when this server's pod has waited for its image for
        ``image_pull_timeout`` seconds because the node cannot pull it (at once
        when retrying cannot help); never returns otherwise. Reads KubeSpawner's
        pod reflector, as :meth:`watch_scheduling` does."""
        if not self.image_pull_timeout:
            await asyncio.Event().wait()
        since = None
        while True:
            await asyncio.sleep(interval)
            pod = self._reflected_pod()
            failure = image_pull_failure(pod)
            if failure is None:
                since = None
                continue
            image, reason, message, final = failure
            since = since or time.monotonic()
            waited = time.monotonic() - since
            if final or waited >= self.image_pull_timeout:
                text = image_pull_message(image, reason, message, waited)
                self.log.warning("Server %s of %s: %s", self.name, self.user.name, text)
                raise SpawnFailed(text)

    def _reflected_pod(self):
        """This server's pod as KubeSpawner's pod reflector last saw it (a
        dict), or None."""
        reflector = self.pod_reflector
        return reflector.pods.get(f"{self.namespace}/{self.pod_name}") if reflector else None

    def _node_on_its_way(self):
        # The cluster autoscaler says it adds a node for this pod.
        return any(event.get("reason") == "TriggeredScaleUp" for event in self.events)

    def render_home_name(self, server, environment):
        template = self.pvc_name_template.replace("{environment}", environment)
        return self._expand_user_properties(template)

    def _expand_user_properties(self, template, *args, **kwargs):
        # KubeSpawner's templates, plus {environment} (the environment's uid:
        # hex digits), which KubeSpawner would refuse (pvc_name is made when
        # the spawner is, before an environment is chosen).
        template = template.replace("{environment}", self.environment_uid)
        return super()._expand_user_properties(template, *args, **kwargs)

    def _home_volume(self):
        return (
            {"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": self.pvc_name}},
            {"name": HOME_VOLUME, "mountPath": self.home_path},
        )

    async def get_pod_manifest(self):
        """The pod with the environment's limits, node selector and the user's home."""
        env = self.chosen_environment or await self.choose_environment()
        self.apply_limits(env)
        volumes, mounts = list(self.volumes), list(self.volume_mounts)
        configured = [m for m in mounts if m.get("mountPath") == self.home_path]
        if self.home_scope != "none" and configured:
            self.log.warning(
                "Not mounting home claim %s: volume_mounts already mount %s", self.pvc_name, self.home_path
            )
        elif self.home_scope != "none":
            volume, mount = self._home_volume()
            volumes.append(volume)
            mounts.append(mount)
        saved = (self.node_selector, self.volumes, self.volume_mounts, self.init_containers)
        self.node_selector = {**self.node_selector, **env.node_selector}
        self.volumes, self.volume_mounts = volumes, mounts
        content = self.choose_content()
        if content is not None:
            home_mounts = [m for m in mounts if m.get("mountPath") == self.home_path]
            if home_mounts:
                content_mount = home_mounts[0]
            else:
                # no home: the content lives in a volume of the pod's own
                volume, content_mount = self._content_volume()
                volumes.append(volume)
                mounts.append(content_mount)
            # after the configured init containers (one that gives the home
            # to the image's user must run before the pull writes there)
            self.init_containers = [*self.init_containers, self.content_init_container(content_mount)]
        try:
            return await super().get_pod_manifest()
        finally:
            self.node_selector, self.volumes, self.volume_mounts, self.init_containers = saved
            self.restore_limits()
            self.restore_default_url()

    def _content_volume(self):
        """An ``emptyDir`` for a server with no home (``home_scope = "none"``),
        mounted at ``~/<content dir>``: the init container clones into it and
        the server finds it there; it goes with the pod."""
        return (
            {"name": CONTENT_VOLUME, "emptyDir": {}},
            {"name": CONTENT_VOLUME, "mountPath": f"{self.home_path}/{self.content['dir']}"},
        )

    def content_init_container(self, mount):
        """The init container that pulls the start's content into the home
        (spawners/content.py), or into the content's own volume when there is
        no home (``mount``: the home's mount or that volume's). It always
        succeeds, so that a failed pull never holds the pod back, and stops
        after ``content_pull_timeout`` seconds; its log says what happened.
        The repository is in its environment, never in its command."""
        environment = content_puller.environment(self.content, self.home_path)
        return _braces_kept({
            "name": CONTENT_CONTAINER,
            "image": self.content_puller_image,
            "command": content_puller.command(never_fail=True, timeout=self.content_pull_timeout),
            "env": [{"name": k, "value": v} for k, v in environment.items()],
            "workingDir": self.home_path,
            "volumeMounts": [dict(mount)],
            "securityContext": {
                "runAsUser": self.image_user_id,
                "allowPrivilegeEscalation": False,
            },
        })

    def get_pvc_manifest(self):
        """The claim of the user's home, with the labels every home carries."""
        home = self.home_for(self.environment_uid)
        pvc = super().get_pvc_manifest()
        if home is not None:
            labels = {
                # label values: 63 characters of [A-Za-z0-9_.-]
                HOME_LABEL: "1",
                f"{HOME_LABEL}.user": self._expand_user_properties("{username}"),
                f"{HOME_LABEL}.server": self._expand_user_properties("{servername}")
                if home.labels[f"{HOME_LABEL}.server"]
                else "",
                f"{HOME_LABEL}.environment": home.labels[f"{HOME_LABEL}.environment"],
            }
            pvc.metadata.labels = {**(pvc.metadata.labels or {}), **labels}
            # the exact names (and the prefix, which holds "/") as annotations
            pvc.metadata.annotations = {**(pvc.metadata.annotations or {}), **home.labels}
        return pvc


def make_kube_spawner():
    try:
        from kubespawner import KubeSpawner
    except ImportError as e:
        raise ImportError(
            "Repo2DockerKubeSpawner needs jupyterhub-kubespawner: "
            "install tljh-repo2docker with the 'kubernetes' extra "
            "(pip install 'tljh-repo2docker[kubernetes]')"
        ) from e

    class Repo2DockerKubeSpawner(KubeEnvironment, KubeSpawner):
        """KubeSpawner for environments built by tljh-repo2docker (e.g. with BinderHub).

        Takes ``user_options["image"]``, and the memory and CPU limits and node
        selector from ``user_options["metadata"]``; limits fall back to the
        configured ``mem_limit``/``cpu_limit``, and the node selector is merged
        into the configured ``node_selector``.

        Unlike the Docker spawner, it has no image labels to check these
        against. Set ``db_url`` to the service's database and it takes image,
        limits and node selector from there, by the environment's uid; without
        it the spawner refuses to start anything, unless ``trust_user_options``
        lets users who call JupyterHub's REST API with their own user_options
        choose their limits, and their image within ``image_prefix``.

        The user's home is a PersistentVolumeClaim (``pvc_name_template``, by
        ``home_scope``), created when missing (``storage_pvc_ensure``,
        ``storage_capacity`` 10Gi) and never deleted with a server
        (``delete_pvc = False``), mounted at ``/home/<image_user_name>``
        (unless ``volume_mounts`` already mount something there), with the
        group ``fs_gid = image_user_id``.

        A pod no node takes fails the start after ``unschedulable_timeout``
        seconds, with the scheduler's reason and the labels it asks for.
        """

        db_url = Unicode(
            "",
            help="""
            The service's database (the same URL as ``TljhRepo2Docker.db_url``;
            the spawner only reads it). When set, the spawner starts only built
            environments and takes their image, memory and CPU limits and node
            selector from the database, whatever ``user_options`` say, the
            spawn form lists them, and only those the user may use (see
            ``tljh_repo2docker.access``: owner, sharing, admins) are offered
            and started. Without it the spawner starts nothing (it cannot
            verify what ``user_options`` ask for), unless
            ``trust_user_options`` is set. ``hub_config.configure()`` and the
            TLJH plugin set it to the service's.
            """,
        ).tag(config=True)

        trust_user_options = Bool(
            False,
            help="""
            Without ``db_url``: start what ``user_options`` name (their
            image within ``image_prefix``, their limits and node selector),
            so that whoever calls JupyterHub's REST API chooses them. For a
            hub whose users are all trusted and that has no tljh-repo2docker
            service. Default: False, a spawner without ``db_url`` refuses
            every start, saying why.
            """,
        ).tag(config=True)

        unschedulable_timeout = Float(
            30,
            help="""
            Seconds a server's pod may stay unschedulable (the scheduler finds
            no node for it: none carries the labels of its node selector, or
            none has room for its requests) before the start fails with the
            scheduler's reason and the labels the pod asks for, which the
            user sees. Not while the cluster autoscaler adds a node for it (a
            ``TriggeredScaleUp`` event, with ``events_enabled``); raise it
            where nodes are added without that event (e.g. Karpenter). 0:
            wait for ``start_timeout``, whose failure only says that the pod
            did not start (KubeSpawner's behaviour). Default: 30.
            """,
        ).tag(config=True)

        image_pull_timeout = Float(
            20,
            help="""
            Seconds a server's pod may wait for an image its node cannot pull
            (the kubelet's ErrImagePull / ImagePullBackOff: the tag is gone
            from the registry, or the registry refuses the node) before the
            start fails with the node's reason, which the user sees. A
            reference that is no image fails at once. 0: wait for
            ``start_timeout``, whose failure only says that the pod did not
            start (KubeSpawner's behaviour). Default: 20.
            """,
        ).tag(config=True)

        async def start(self):
            # KubeSpawner's own start (the environment is chosen in
            # load_user_options() and applied in get_pod_manifest()), stopped
            # early when no node takes the pod or the node cannot pull its
            # image: JupyterHub then stops the server (deleting the pod) and
            # shows why.
            started = asyncio.ensure_future(KubeSpawner.start(self))
            watchers = [
                asyncio.ensure_future(self.watch_scheduling()),
                asyncio.ensure_future(self.watch_image_pull()),
            ]
            try:
                pending = {started, *watchers}
                while not started.done():
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for watcher in done - {started}:
                        error = None if watcher.cancelled() else watcher.exception()
                        if isinstance(error, SpawnFailed):
                            started.cancel()
                            raise error
                        if error is not None:
                            self.log.error("Could not follow the start of %s: %r", self.pod_name, error)
                result = await started
            except EnvironmentRefused:
                # refused in load_user_options() or get_pod_manifest(): a
                # server that never ran goes with its refused first start
                self.forget_refused_first_start()
                raise
            finally:
                for watcher in watchers:
                    watcher.cancel()
            self.started_once()
            return result

    Repo2DockerKubeSpawner.__qualname__ = "Repo2DockerKubeSpawner"
    Repo2DockerKubeSpawner.__module__ = "tljh_repo2docker.spawners.kube"
    return Repo2DockerKubeSpawner


def __getattr__(name):
    # Made on first use: importing kubespawner (and kubernetes_asyncio) costs
    # time and needs the 'kubernetes' extra.
    if name == "Repo2DockerKubeSpawner":
        spawner_class = make_kube_spawner()
        globals()[name] = spawner_class
        return spawner_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
