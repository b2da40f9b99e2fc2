"""The user's servers, without HTTP: their names, what the list says of each,
which environment a start uses, and why a start failed.

The handlers (``handlers/servers.py``) ask the hub for the user's model and
write the answers; the rules are here. Errors are those of ``errors.py``.
"""

import asyncio
import collections
import hashlib
import re
import string
import time
from datetime import datetime

from escapism import escape

from ..access import Access
from ..db import store
from ..errors import Conflict, FieldError, NotFound
from . import starting

# -- names ------------------------------------------------------------------

# JupyterHub accepts most characters in server names; we keep to those that
# are safe in URLs and container names.
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_server_name(name):
    if not isinstance(name, str) or not name:
        raise FieldError("name", "is required")
    if not _SERVER_NAME.match(name):
        raise FieldError(
            "name",
            f"{name!r} is not a valid server name: use up to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


# JupyterHub 6 wants named servers' names to be "safe slugs" (lowercase letters,
# digits and single hyphens, at most 30 characters) and keeps what the user
# typed as the server's display name.
_SLUG = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_SLUG_MAX = 30


def slug_for(name):
    """The JupyterHub 6 server name for ``name``: ``name`` itself when it is
    already a slug, otherwise a readable slug plus a hash of ``name`` (so that
    ``Data.Lab`` and ``data-lab`` stay two servers)."""
    if len(name) <= _SLUG_MAX and _SLUG.match(name):
        return name
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower())
    readable = re.sub(r"^[^a-z]+", "", readable)  # must start with a letter
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    readable = readable[: _SLUG_MAX - len(digest) - 1].strip("-") or "server"
    return f"{readable}-{digest}"


async def hub_server_name(hub, name):
    """The name the hub knows the server ``name`` by (see ``slug_for``)."""
    return slug_for(name) if await hub.has_display_names() else name


def _escape(text):
    """DockerSpawner's escaping of user and server names in container names."""
    return escape(text, set(string.ascii_lowercase + string.digits), escape_char="-").lower()


# -- why a start failed -----------------------------------------------------

# Answers of the hub that say nothing about why a start failed.
_GENERIC = {"", "error", "internal server error", "bad request", "bad gateway", "unknown error"}


def says_nothing(reason):
    """The hub's answer to a start is one of its generic words."""
    return reason.strip().lower() in _GENERIC


# DockerSpawner's words when the container stopped before it had an address.
_NO_ADDRESS = "The 'ip' trait of a Server instance expected"
_NO_ADDRESS_REASON = (
    "The server's container stopped as soon as it started{status}: the environment's image "
    "does not run a notebook server (JupyterHub: {message})"
)

# Why a container exited while its server started, seen by this service, by
# (user, hub server name): the hub only remembers what came after (a timeout,
# or no address), and the container is gone by then. Forgotten when the
# server starts again or runs.
_exit_reasons = collections.OrderedDict()
_EXIT_REASONS_KEPT = 1000


def _remember(key, reason):
    _exit_reasons[key] = reason
    _exit_reasons.move_to_end(key)
    while len(_exit_reasons) > _EXIT_REASONS_KEPT:
        _exit_reasons.popitem(last=False)
    return reason


def forget(user, server_name):
    """Forget why the server's container exited: it starts again, or is removed."""
    _exit_reasons.pop((user, server_name), None)


def _reason(message):
    """The hub's ``Spawn failed: <why>`` as ``<why>``, explained where it is cryptic."""
    if not message:
        return None
    message = str(message).strip()
    if message.startswith("Spawn failed:"):
        message = message.split(":", 1)[1].strip() or message
    return message


def _timestamp(iso):
    """The hub's ISO 8601 time as Unix time, or None."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- the servers' list ------------------------------------------------------


def status_of(hub_server):
    """``running``, ``spawn`` or ``stop`` (pending), or ``stopped``."""
    if hub_server.get("ready"):
        return "running"
    if hub_server.get("pending"):
        return hub_server["pending"]  # spawn or stop
    return "stopped"


def server_model(server_name, hub_server, env, url):
    """The list's entry for the hub's server ``server_name`` started from
    ``env`` (None: unknown), before the engine's and versions' facts."""
    options = hub_server.get("user_options") or {}
    return {
        "name": hub_server.get("display_name") or server_name,
        "server_name": server_name,
        "environment": env.name if env else options.get("image"),
        "environment_uid": env.uid if env else None,
        "image": options.get("image"),
        "status": status_of(hub_server),
        "url": url,
        "last_activity": hub_server.get("last_activity"),
        "started": hub_server.get("started"),
        "outdated": None,
        "version": None,
        "newer_version": None,
        "error": None,
    }


class UserServers:
    """The servers of ``user`` as the list shows them: the hub's model, the
    environments (``sessions``), the engine's facts (``homes``: the service's
    door to the engine, service/engine.py) and the versions' facts."""

    def __init__(self, user, *, sessions, hub, homes, log):
        self.user = user
        self.sessions = sessions
        self.hub = hub
        self.homes = homes
        self.log = log

    async def read(self, hub_user, url_for):
        """``(servers, options)`` from the hub's model of the user
        (``include_stopped_servers``): the list's entries, and each server's
        ``user_options`` by its display name. ``url_for(server_name)``: the
        server's URL."""
        self.homes.watch_deaths()
        listed = await store.list_environments(self.sessions)
        envs = {e.uid: e for e in listed}
        # Servers started under tljh-repo2docker 3.x name only their image.
        by_image = {e.image_name: e for e in listed}
        options_of = {}
        servers = []
        facts = []
        for server_name, server in sorted((hub_user.get("servers") or {}).items()):
            if not server_name:
                continue  # the default server is the hub's own business
            options = server.get("user_options") or {}
            env = envs.get(options.get("environment")) or by_image.get(options.get("image"))
            model = server_model(server_name, server, env, url_for(server_name))
            options_of[model["name"]] = options
            servers.append(model)
            facts.append(self.add_engine_facts(model, server, env))
        await asyncio.gather(*facts)
        await self.add_version_facts(servers, envs)
        return servers, options_of

    async def add_version_facts(self, servers, envs):
        """Fill ``version`` (the number of the environment's version a server
        runs) and ``newer_version`` (a newer one exists: after a rollback, or
        a rebuild it was not restarted for). The image is the container's
        (``_image``, from add_engine_facts), else, without an engine, the
        name the server was started by. Stopped servers start from the
        current version: ``newer_version`` false."""
        by_name = not self.homes.available
        uids = {s["environment_uid"] for s in servers if s["environment_uid"]}
        kept = {uid: await store.list_versions(self.sessions, uid) for uid in sorted(uids)}
        for server in servers:
            image_id = server.pop("_image", None)
            env = envs.get(server["environment_uid"])
            if env is None:
                continue
            if server["status"] == "stopped":
                server["newer_version"] = False
                continue
            versions = kept.get(env.uid) or []
            if image_id is not None:
                found = next((v for v in versions if v.image_id == image_id), None)
            elif by_name:
                # BinderHub names each version's image by its commit.
                found = next((v for v in versions if v.image_name == server["image"]), None)
                if found is not None and server["outdated"] is None and env.image_id:
                    server["outdated"] = found.image_id != env.image_id
            else:
                continue
            if found is not None:
                server["version"] = found.number
                server["newer_version"] = any(v.number > found.number for v in versions)

    async def add_engine_facts(self, model, hub_model, env):
        """Fill ``outdated`` and ``error`` of the server ``model``.

        ``outdated``: the server's container runs another image than its
        environment's current build. The hub does not say which image a
        container runs, but its server model carries the spawner's state
        (the service's role has ``admin:servers``), where DockerSpawner keeps
        the container's id: the engine then tells its image. A stopped server
        is never outdated (starting it again uses the newest build); a pod
        (Repo2DockerKubeSpawner) is matched by the image id of its spawner's
        state; without an engine (BinderHub) or a container it is unknown (null).

        ``error``: why its last start failed, or why it is not running when
        the hub thinks it is. The hub's progress stream keeps the failure of a
        stopped server. A server "starting" whose container has exited failed
        too (the hub only notices when its ``http_timeout`` ends), and so has a
        "running" one whose container is gone (the hub took another
        container's answer at the same address for its own): the container,
        or the engine's events once Docker removed it, tell why.
        """
        status = model["status"]
        key = (self.user, model["server_name"])
        if status == "stopped":
            model["outdated"] = False if env is not None else None
            failure = _reason(await self.hub.spawn_failure(*key))
            if failure and failure.startswith(_NO_ADDRESS) and key not in _exit_reasons:
                failure = await self._no_address(failure, hub_model, key)
            model["error"] = _exit_reasons.get(key) or failure
            return
        homes = self.homes
        state = hub_model.get("state") or {}
        if "pod_name" in state:
            # A Kubernetes pod (KubeSpawner's state): no container on this
            # engine to ask; the spawner's state says which image it started.
            if state.get("image_id") and status in {"spawn", "running"}:
                model["_image"] = state["image_id"]  # for add_version_facts
                if env is not None and env.image_id:
                    model["outdated"] = state["image_id"] != env.image_id
            return
        ref = state.get("object_id") or state.get("object_name")
        if not homes.available or status not in {"spawn", "running"}:
            return
        info = await homes.container(ref) if ref else None
        self.log.debug(
            "Server %s/%s is %s; its container %s is %s", *key, status, ref or "(unknown)",
            (info.get("State") or {}).get("Status") if info else "not found",
        )
        if info is None:
            await self._gone(model, hub_model, ref, key)
            return
        model["_image"] = info.get("Image")  # for add_version_facts
        if env is not None and env.image_id:
            model["outdated"] = info.get("Image") != env.image_id
        container_state = info.get("State") or {}
        if container_state.get("Running"):
            if status == "running":
                _exit_reasons.pop(key, None)
        elif container_state.get("Status") in {"exited", "dead"}:
            model["error"] = _remember(key, await homes.exit_reason(info))

    async def _no_address(self, failure, hub_model, key):
        """DockerSpawner's cryptic failure when the container stopped before
        it had an address, said plainly, with the exit status if the engine
        still knows it."""
        homes = self.homes
        code = None
        if homes.available:
            code = await homes.exit_status(
                time.time() - 3600,
                image=(hub_model.get("user_options") or {}).get("image"),
                name_parts=[_escape(key[0]), _escape(key[1].lower())],
            )
        status = f" (it exited with status {code})" if code is not None else ""
        return _NO_ADDRESS_REASON.format(status=status, message=failure)

    async def _gone(self, model, hub_model, ref, key):
        """The container of a starting or running server is gone: it exited,
        and Docker removed it at once (DockerSpawner's ``remove``). Say so,
        with its exit status from the engine's events."""
        if key in _exit_reasons:
            model["error"] = _exit_reasons[key]  # seen before it was removed
            return
        homes = self.homes
        started = _timestamp(hub_model.get("started")) or time.time() - 3600
        if ref:
            code = await homes.exit_status(started - 5, ref=ref)
        else:
            # DockerSpawner forgets the container's id once it saw it gone;
            # its name holds the escaped user and server names (as in
            # DockerSpawner's name_template, which must have both for named
            # servers), and it ran the environment's image.
            image = (hub_model.get("user_options") or {}).get("image")
            parts = [_escape(key[0]), _escape(key[1].lower())]
            code = await homes.exit_status(started - 5, image=image, name_parts=parts)
        self.log.debug("Server %s/%s: exit status of its container from events: %s", *key, code)
        if code is None:
            return
        model["error"] = _remember(
            key,
            f"The server's container exited with status {code} and was removed "
            "(DockerSpawner's remove), so its output is gone",
        )


def find_server(servers, name):
    """The server of the list ``servers`` called ``name`` (by display name
    first, then by the hub's name), or None."""
    for server in servers:
        if server["name"] == name:
            return server
    for server in servers:
        if server["server_name"] == name:
            return server
    return None


# -- starting, replacing, stopping ------------------------------------------


async def find_built(
    sessions, environment, viewer, recovered=None, *, wait=starting.RECOVERY_WAIT,
    backend_problem=None, unstartable=None,
):
    """The environment called ``environment`` (name or uid) that ``viewer``
    may start a server from, once one can start from it (service/starting.py:
    ``recovered``, ``wait``, ``backend_problem``, ``unstartable``).

    400 when none is named, 404 when there is none the viewer may use (one
    they may not use does not exist for them), 409 or 503 when it cannot be
    started now (``starting.refusal``)."""
    if not isinstance(environment, str) or not environment.strip():
        raise FieldError("environment", "is required")
    env = await store.find_environment(sessions, environment.strip())
    if env is None or not Access(env.owner, env.sharing).allows(viewer):
        raise FieldError("environment", f"no environment named {environment!r}", status=404)
    # Right after an upgrade from 3.x, a built environment's image may
    # not be adopted yet: wait for the recovery (bounded), then say so.
    return await starting.startable(
        sessions,
        env,
        recovered,
        wait=wait,
        backend_problem=backend_problem,
        unstartable=unstartable,
    )


def check_replaceable(existing, name):
    """A new server ``name`` may replace the user's server ``existing`` (or
    None) only when it is stopped (409 otherwise)."""
    if existing and existing["status"] != "stopped":
        raise Conflict(f"name: the server {name!r} is already running")


def check_found(server, name):
    """The user's server called ``name`` exists: 400 for a name no server can
    have, else 404."""
    if server is None:
        check_server_name(name)
        raise NotFound(f"You have no server named {name!r}")
    return server


# -- tljh-repo2docker 3.x -----------------------------------------------------

_FIELDS_3X = {"imageName", "serverName", "userName"}


def is_3x_body(body):
    """A start as tljh-repo2docker 3.x sent it."""
    return bool(_FIELDS_3X & set(body))


def body_of_3x(body, user):
    """tljh-repo2docker 3.x's ``{"imageName", "serverName", "userName"}``
    sent by ``user``, as ours: ``{"name", "environment"}``."""
    given = body.get("userName")
    if given not in (None, "", user):
        raise FieldError(
            "userName", "servers can only be started for yourself (leave userName out)",
            status=403,
        )
    unknown = sorted(set(body) - _FIELDS_3X)
    if unknown:
        raise FieldError(unknown[0], "is not a known field (with imageName and serverName)")
    return {"name": body.get("serverName"), "environment": body.get("imageName")}
