"""The service's door to the Docker engine the users' servers run on.

Two things live there that the service shows but does not own:

- users' **homes**: Docker named volumes that ``Repo2DockerSpawner`` makes,
  labelled ``tljh_repo2docker.home=1`` and ``tljh_repo2docker.home.{user,
  server,environment,prefix}``. Only volumes whose ``home.prefix`` label is
  this service's ``image_prefix`` are this hub's: the others belong to
  another hub on the same engine and are never listed nor removed.
- servers' **containers**: which image a server's container runs (to tell a
  server that runs an older build of its environment), and why a container
  that exited while starting did so.

The engine is the one the builder uses (``DockerBuilder.docker_url``), through
the builder's own client. With another builder (BinderHub, on Kubernetes)
there is no engine here: :attr:`Homes.available` is False and the homes
routes answer 501.
"""

import asyncio
import collections
import json
import re
import time
from datetime import datetime, timezone

import aiodocker
import aiohttp
from aiodocker.utils import clean_filters
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from .. import contract
from ..builds.docker import DockerBuilder

HOME_LABEL = contract.HOME_LABEL
USER_LABEL = f"{HOME_LABEL}.user"
SERVER_LABEL = f"{HOME_LABEL}.server"
ENVIRONMENT_LABEL = f"{HOME_LABEL}.environment"
PREFIX_LABEL = f"{HOME_LABEL}.prefix"

# Docker's own rule for volume names ([a-zA-Z0-9][a-zA-Z0-9_.-]+); 255 is
# the longest name a file system takes for the volume's directory.
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")

# Environment variables of a container whose values never reach a message.
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)
# Deaths of containers remembered from the engine's event stream.
_DEATHS_KEPT = 2000

# However slow the engine, a measurement is given up after this many seconds
# (then the next list starts another).
_MEASURE_LIMIT = 600
_ANSI = re.compile(r"\x1b\[[0-9;?]*[@-~]")


def valid_volume_name(name):
    return isinstance(name, str) and bool(_VOLUME_NAME.match(name))


def name_matches(name, parts):
    """Whether the container ``name`` holds each of ``parts`` between
    separators (``-``, ``_``, ``.`` or an end): ``bo`` is not in ``x-bob-lab``."""
    return all(re.search(rf"(^|[-_.]){re.escape(p)}($|[-_.])", name) for p in parts)


class EngineError(Exception):
    """The Docker engine could not be asked (503); the message says which engine."""


class HomeNotFound(Exception):
    """No volume of that name, or one that is not a home of this hub (404)."""


class HomeInUse(Exception):
    """The volume is mounted by containers (409); ``containers`` names them."""

    def __init__(self, name, containers):
        self.containers = containers
        super().__init__(
            f"The home {name!r} is used by the container(s) {', '.join(containers)}: "
            "stop and remove the server first"
        )


def _iso(value):
    """Docker's ``CreatedAt`` (RFC 3339, maybe with nanoseconds) as ISO 8601 in UTC."""
    if not value:
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$", value)
    if not match:
        return value
    zone = match.group(2) or "Z"
    try:
        parsed = datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return value
    return parsed.astimezone(timezone.utc).isoformat()


class Homes(LoggingConfigurable):
    """Users' home volumes and servers' containers, on the builder's Docker engine."""

    size_timeout = Float(
        5,
        help="""
        Seconds the homes list waits for the Docker engine to measure the
        volumes' disk usage (``GET /system/df``, which walks every volume
        and can be slow on large homes). When it takes longer the list is
        answered without sizes (``size`` null, and ``sizes_note`` says why);
        the measurement goes on and the next list shows it. Default: 5.
        """,
    ).tag(config=True)

    size_cache_seconds = Float(
        60,
        help="""
        Seconds a measurement of the volumes' sizes is reused before the
        engine is asked again, so that reloading the Homes page does not make
        the engine walk every home each time. Default: 60.
        """,
    ).tag(config=True)

    engine_timeout = Float(
        10,
        help="""
        Seconds to wait for each other request to the Docker engine (list,
        inspect, remove a volume; inspect a server's container) before the
        request counts as failed: 503 for the homes routes, unknown facts
        (null) in the servers list. Default: 10.
        """,
    ).tag(config=True)

    log_tail_lines = Integer(
        15,
        help="""
        Lines of a server container's output shown to its owner when it
        exited while starting (the reason a start failed). Values of its
        environment variables named like secrets (TOKEN, SECRET, PASSWORD,
        KEY) are masked. 0 shows none. Default: 15.
        """,
    ).tag(config=True)

    @classmethod
    def for_app(cls, app):
        """The one instance of the service ``app`` (made by its ``init_homes`` step)."""
        if getattr(app, "homes", None) is None:
            app.init_homes()
        return app.homes

    def __init__(self, builder=None, **kwargs):
        super().__init__(**kwargs)
        self.builder = builder
        self._sizes = None  # {volume name: bytes or None}
        self._sizes_at = 0.0
        self._df_task = None
        # Containers that died lately, as the engine's event stream told:
        # {container id: (name, image, exit status, Unix time)}, the newest last.
        self._deaths = collections.OrderedDict()
        self._watcher = None

    # -- the engine ------------------------------------------------------------

    @property
    def available(self):
        """Whether there is a Docker engine here (the Docker builder's)."""
        return isinstance(self.builder, DockerBuilder)

    @property
    def prefix(self):
        return self.parent.image_prefix

    @property
    def engine(self):
        return self.builder.docker_url if self.available else "no engine"

    async def _ask(self, coro, timeout=None):
        """Await one request to the engine; connection trouble becomes EngineError."""
        try:
            return await asyncio.wait_for(coro, timeout or self.engine_timeout)
        except asyncio.TimeoutError:
            raise EngineError(
                f"The Docker engine at {self.engine} did not answer in "
                f"{timeout or self.engine_timeout:g} s"
            ) from None
        except aiodocker.DockerError as e:
            if e.status == 900 or e.status >= 500:
                raise EngineError(
                    f"The Docker engine at {self.engine} failed: {e.message}"
                ) from None
            raise
        except (aiohttp.ClientError, OSError) as e:
            raise EngineError(
                f"The Docker engine at {self.engine} cannot be reached ({e.__class__.__name__})"
            ) from None

    # -- homes -----------------------------------------------------------------

    def _is_ours(self, volume):
        labels = volume.get("Labels") or {}
        return labels.get(HOME_LABEL) == "1" and contract.home_belongs_to_hub(
            labels.get(PREFIX_LABEL), self.prefix
        )

    async def _containers(self, volume=None):
        """``{volume name: [container names]}`` of every container (running or not)."""
        params = {"all": "1"}
        if volume is not None:
            params["filters"] = clean_filters({"volume": [volume]})
        containers = await self._ask(self.builder.docker._query_json("containers/json", params=params))
        users = {}
        for container in containers:
            names = [n.lstrip("/") for n in container.get("Names") or []]
            name = names[0] if names else container.get("Id", "")[:12]
            for mount in container.get("Mounts") or []:
                if mount.get("Type") == "volume" and mount.get("Name"):
                    users.setdefault(mount["Name"], []).append(name)
        return {k: sorted(v) for k, v in users.items()}

    async def list(self):
        """``(homes, sizes_note)``: this hub's home volumes, oldest first, and
        why sizes are unknown (None when they are known)."""
        answer = await self._ask(
            self.builder.docker.volumes.list(
                filters={"label": [f"{HOME_LABEL}=1", PREFIX_LABEL]}
            )
        )
        volumes = [v for v in (answer.get("Volumes") or []) if self._is_ours(v)]
        if not volumes:
            return [], None
        users, (sizes, note) = await asyncio.gather(self._containers(), self.sizes())
        homes = []
        for volume in volumes:
            labels = volume.get("Labels") or {}
            name = volume["Name"]
            homes.append(
                {
                    "name": name,
                    "user": labels.get(USER_LABEL, ""),
                    "server": labels.get(SERVER_LABEL, ""),
                    "environment": labels.get(ENVIRONMENT_LABEL, ""),
                    "size": sizes.get(name),
                    "created": _iso(volume.get("CreatedAt")),
                    "in_use_by": users.get(name, []),
                }
            )
        homes.sort(key=lambda h: (h["created"] or "", h["name"]))
        if note is None and any(sizes.get(v["Name"]) is None for v in volumes):
            note = "Docker has not measured some of the homes yet: their size shows when it has"
        return homes, note

    async def delete(self, name):
        """Remove the home volume ``name``: HomeNotFound when it is not one of
        this hub's homes, HomeInUse while a container mounts it."""
        try:
            volume = await self._ask(self.builder.docker._query_json(f"volumes/{name}"))
        except aiodocker.DockerError as e:
            if e.status == 404:
                raise HomeNotFound(name) from None
            raise EngineError(f"The Docker engine at {self.engine} refused: {e.message}") from None
        if not self._is_ours(volume):
            raise HomeNotFound(name)
        users = (await self._containers(volume=name)).get(name)
        if users:
            raise HomeInUse(name, users)
        try:
            await self._ask(self.builder.docker._query_json(f"volumes/{name}", method="DELETE"))
        except aiodocker.DockerError as e:
            if e.status == 404:
                raise HomeNotFound(name) from None
            if e.status == 409:  # a container mounted it meanwhile
                users = (await self._containers(volume=name)).get(name) or ["(unknown)"]
                raise HomeInUse(name, users) from None
            raise EngineError(f"The Docker engine at {self.engine} refused: {e.message}") from None
        self.log.info("Removed the home volume %s", name)
        if self._sizes is not None:
            self._sizes.pop(name, None)

    # -- sizes -----------------------------------------------------------------

    async def _measure(self):
        # type=volume (API 1.42+) spares the images and build cache; older
        # engines ignore it and measure everything.
        df = await asyncio.wait_for(
            self.builder.docker._query_json("system/df", params={"type": "volume"}, timeout=None),
            _MEASURE_LIMIT,
        )
        sizes = {}
        for volume in df.get("Volumes") or []:
            size = (volume.get("UsageData") or {}).get("Size")
            sizes[volume.get("Name")] = size if isinstance(size, int) and size >= 0 else None
        return sizes

    def _measured(self, task):
        if task.cancelled():
            return
        if task.exception() is not None:
            self.log.warning("Could not measure the home volumes: %s", task.exception())
            return
        self._sizes, self._sizes_at = task.result(), time.monotonic()

    async def sizes(self):
        """``({volume name: bytes or None}, note)``: a measurement at most
        ``size_cache_seconds`` old, or what is known when the engine takes
        longer than ``size_timeout`` (the note says so)."""
        fresh = self._sizes is not None and time.monotonic() - self._sizes_at < self.size_cache_seconds
        if fresh:
            return self._sizes, None
        if self._df_task is None or self._df_task.done():
            self._df_task = asyncio.ensure_future(self._measure())
            self._df_task.add_done_callback(self._measured)
        try:
            return await asyncio.wait_for(asyncio.shield(self._df_task), self.size_timeout), None
        except asyncio.TimeoutError:
            note = (
                f"Docker is still measuring the homes (it took more than {self.size_timeout:g} s): "
                "sizes show when it is done"
            )
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            note = f"The sizes are unknown: Docker could not measure them ({e.__class__.__name__})"
        if self._sizes is not None:
            note += " (the sizes shown are from an earlier measurement)"
        return self._sizes or {}, note

    # -- servers' containers ----------------------------------------------------

    async def container(self, ref):
        """``docker inspect`` of the container ``ref`` (id or name), or None
        when it is gone or the engine cannot say."""
        if not self.available or not ref:
            return None
        try:
            return await self._ask(self.builder.docker._query_json(f"containers/{ref}/json"))
        except (aiodocker.DockerError, EngineError) as e:
            if not (isinstance(e, aiodocker.DockerError) and e.status == 404):
                self.log.debug("Cannot inspect container %s: %s", ref, e)
            return None

    async def exit_reason(self, info):
        """Why the inspected container ``info`` stopped, for its owner: its
        exit status, its error, and the end of its output (secrets masked)."""
        state = info.get("State") or {}
        reason = f"The server's container exited with status {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            reason += " (out of memory)"
        if state.get("Error"):
            reason += f": {state['Error']}"
        tail = await self._log_tail(info) if self.log_tail_lines else ""
        reason += f". Its last output:\n{tail}" if tail else ", without output."
        return reason

    # -- containers that died -----------------------------------------------------

    def watch_deaths(self):
        """Follow the engine's ``die`` events from now on (once), so that the
        exit status of a server's container is known even when Docker removed
        it at once and its event left the engine's short event buffer."""
        if self.available and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.ensure_future(self._watch_deaths())

    async def _watch_deaths(self):
        params = {"filters": clean_filters({"type": ["container"], "event": ["die"]})}
        while True:
            try:
                async with self.builder.docker._query("events", params=params, timeout=None) as response:
                    async for line in response.content:
                        self._record_death(line)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the engine went away: try again shortly
                self.log.debug("Lost the engine's events (%s): following again in 5 s", e)
            await asyncio.sleep(5)

    def _record_death(self, line):
        try:
            event = json.loads(line)
            attributes = (event.get("Actor") or {}).get("Attributes") or {}
            code = int(attributes["exitCode"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        container = (event.get("Actor") or {}).get("ID") or event.get("id") or ""
        self._deaths[container] = (attributes.get("name", ""), attributes.get("image", ""), code, time.time())
        self._deaths.move_to_end(container)
        while len(self._deaths) > _DEATHS_KEPT:
            self._deaths.popitem(last=False)

    def _known_death(self, since, ref, image, name_parts):
        for container, (name, died_image, code, when) in reversed(self._deaths.items()):
            if when < since:
                break
            if ref and ref not in (container, name):
                continue
            if image and died_image != image:
                continue
            if name_matches(name, name_parts):
                return code
        return None

    async def exit_status(self, since, ref=None, image=None, name_parts=()):
        """The exit status of a container that is gone, from the engine's
        events since ``since`` (Unix time): the container ``ref`` (id or
        name), or the last one of ``image`` whose name holds every one of
        ``name_parts`` (each between separators: ``-``, ``_``, ``.``, or an
        end). None when the engine does not know."""
        if not self.available or not (ref or image):
            return None
        known = self._known_death(since, ref, image, name_parts)
        if known is not None:
            return known
        filters = {"type": ["container"], "event": ["die"]}
        if ref:
            filters["container"] = [ref]
        if image:
            filters["image"] = [image]
        params = {
            "since": str(int(since)),
            "until": str(int(time.time()) + 1),
            "filters": clean_filters(filters),
        }

        async def read():
            async with self.builder.docker._query("events", params=params) as response:
                return await response.read()

        try:
            body = await self._ask(read())
        except (aiodocker.DockerError, EngineError):
            return None
        status = None
        for line in body.decode("utf-8", "replace").splitlines():
            try:
                attributes = (json.loads(line).get("Actor") or {}).get("Attributes") or {}
            except (ValueError, AttributeError):
                continue
            if not name_matches(attributes.get("name", ""), name_parts):
                continue
            code = attributes.get("exitCode")
            if code is not None and code.lstrip("-").isdigit():
                status = int(code)
        return status

    async def _log_tail(self, info):
        container = self.builder.docker.containers.container(info["Id"])
        try:
            lines = await self._ask(
                container.log(stdout=True, stderr=True, tail=str(self.log_tail_lines))
            )
        except (aiodocker.DockerError, EngineError):
            return ""
        secrets = []
        for item in (info.get("Config") or {}).get("Env") or []:
            key, _, value = item.partition("=")
            if _SECRET_ENV.search(key) and len(value) >= 4:
                secrets.append(value)
        text = "".join(lines)
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        text = _ANSI.sub("", text)
        text = "\n".join(line.rstrip() for line in text.splitlines() if line.strip())
        return text[-2000:]
