"""Disk use of built images: old versions (``keep_versions``), the admins'
disk report, prune, and the free-space check before builds (``min_free_disk``).

What may go, decided once (:func:`plan`) for the report, the dry run and the
real prune alike:

- a version of an environment past its newest ``keep_versions``, when it is
  not the current one (its image is not the environment's) and no container
  (a server, running or stopped) uses its image. Its own reference
  (``repo:tag--vN``) is removed, so that an image shared with another name is
  only untagged, then its row;
- a dangling (untagged) image of this hub: labelled with this service's
  ``image_prefix`` and an environment uid, named by no environment or
  version, and used by no container. Images of other hubs on the same engine,
  and images without our labels, are never touched;
- build cache entries not in use and unused for ``build_cache_max_age``
  (the build cache is the engine's: every hub and user of it shares it).

How sizes are counted (the engine's ``GET /system/df``): an image's ``size``
is what ``docker image inspect`` says (all its layers); what removing it frees
is its ``size`` minus its ``shared_size`` (the layers it shares with any other
image stay). Layers that only images removed together share are not counted,
so the disk may gain a little more than ``freed`` says. An environment's
``size`` adds up its distinct images (layers shared between its versions
count in each); ``images.size`` counts every layer on the engine once.
``freed`` after a real prune is what the engine reports: the images its
delete answers name as deleted (counted as above) plus the build cache's
``SpaceReclaimed``.
"""

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field

from .. import contract
from ..builds.base import BuildError
from ..db import store

UID_LABEL = contract.UID_LABEL
PREFIX_LABEL = contract.IMAGE_PREFIX_LABEL

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_size(value, field="min_free_disk"):
    """Bytes for ``10G``, ``512M``, ``1.5T``, or a number of bytes; 0 for empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    if isinstance(value, bool):
        raise ValueError(f"{field}: {value!r} is not a size like 10G or 500M")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{field}: {value!r} must not be negative")
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(
            f"{field}: {value!r} is not a size: a number of bytes, or with K, M, G, T or P (10G)"
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def human_size(n):
    """``1536`` -> ``"1.5 KiB"``."""
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(size) < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@dataclass
class Plan:
    """What a prune removes (see the module's docstring); ``frees`` by image id."""

    #: ``(environment, version, size, frees)`` of each version to remove.
    versions: list = field(default_factory=list)
    #: ``{"id", "uid", "size", "frees"}`` of each dangling image to remove.
    dangling: list = field(default_factory=list)
    #: Build cache entries to remove: ``{"count", "size"}``.
    build_cache: dict = field(default_factory=lambda: {"count": 0, "size": 0})
    #: Ids of the images whose removal would delete them (not only untag).
    deleted_images: set = field(default_factory=set)

    @property
    def frees(self):
        return (
            sum(f for *_, f in self.versions)
            + sum(d["frees"] for d in self.dangling)
            + self.build_cache["size"]
        )


def plan(environments, versions, usage, users, *, keep, image_prefix, max_age,
         active=frozenset(), only=None, now=None, with_engine=True):
    """What may be removed now.

    ``versions``: ``{uid: [Version, newest first]}``; ``usage``: the
    builder's :meth:`disk_usage` (None: sizes unknown); ``users``: its
    :meth:`image_users` (None: nothing can be known to be unused, so no
    version is removed); ``active``: uids with a build queued or running
    (their dangling images may be a build's); ``only``: one environment's
    uid (after its build: its versions only). ``with_engine``: also dangling
    images and the build cache.
    """
    result = Plan()
    if users is None:
        return result
    images = (usage or {}).get("images") or {}
    needed_ids = set()
    needed_names = set()
    chosen = []
    for env in environments:
        if env.image_id:
            needed_ids.add(env.image_id)
        needed_names.add(env.image_name)
        for index, version in enumerate(versions.get(env.uid, [])):
            current = version.image_id == env.image_id or version.image_name == env.image_name
            if (
                index < keep
                or current
                or users.get(version.image_id)
                or (only is not None and env.uid != only)
            ):
                needed_ids.add(version.image_id)
                needed_names.add(version.image_name)
            else:
                chosen.append((env, version))
    removed_names = {v.image_name for _, v in chosen}
    for env, version in chosen:
        image = images.get(version.image_id)
        size = image["size"] if image else version.size
        frees = 0
        if image and _deleted(version.image_id, image, removed_names, needed_ids, users):
            result.deleted_images.add(version.image_id)
            frees = image["size"] - image["shared_size"]
        result.versions.append((env, version, size, frees))
    # Freed once per image, by its first version in the list.
    seen = set()
    for i, (env, version, size, frees) in enumerate(result.versions):
        if version.image_id in seen:
            result.versions[i] = (env, version, size, 0)
        seen.add(version.image_id)
    if not with_engine or usage is None:
        return result
    for image_id, image in images.items():
        labels = image["labels"]
        if (
            image["tags"]
            or not labels.get(UID_LABEL)
            or labels.get(PREFIX_LABEL) != image_prefix
            or labels.get(UID_LABEL) in active
            or image_id in needed_ids
            or image_id in result.deleted_images
            or image["containers"] not in (0, -1)
            or users.get(image_id)
        ):
            continue
        frees = image["size"] - image["shared_size"]
        result.dangling.append(
            {"id": image_id, "uid": labels[UID_LABEL], "size": image["size"], "frees": frees}
        )
    cutoff = (time.time() if now is None else now) - max_age
    count = size = 0
    for entry in usage.get("build_cache") or []:
        if entry["in_use"] or entry["last_used"] > cutoff:
            continue
        count += 1
        if not entry["shared"]:
            size += entry["size"]
    result.build_cache = {"count": count, "size": size}
    return result


def _deleted(image_id, image, removed_names, needed_ids, users):
    """Whether removing ``removed_names`` deletes the image (no other name keeps it)."""
    if image_id in needed_ids or users.get(image_id):
        return False
    return set(image["tags"]) <= removed_names


def _removed_version(env, version, size):
    """A version as prune's answer lists it (removed, or to be removed)."""
    return {
        "uid": env.uid,
        "id": version.id,
        "number": version.number,
        "image_name": version.image_name,
        "size": size,
    }


def _deleted_ids(answer):
    return {item["Deleted"] for item in answer or [] if isinstance(item, dict) and item.get("Deleted")}


class Disk:
    """The disk operations of one running service.

    Made by the app's ``init_disk`` step and handed the build ``builder``
    (the engine), the database ``sessions`` and the ``log``; ``settings`` is
    the object whose attributes hold ``keep_versions``, ``min_free_disk``,
    ``build_cache_max_age`` and ``image_prefix`` (the app: its traits).
    """

    def __init__(self, settings, *, builder, sessions=None, log=None):
        self.settings = settings
        #: The build queue (set by the app's ``init_build_manager``, which
        #: hands this disk's checks to it): environments it builds keep
        #: their images.
        self.build_manager = None
        self.builder = builder
        self.sessions = sessions
        self.log = log or logging.getLogger(__name__)
        self._lock = asyncio.Lock()
        self._unknown_logged = False

    async def _plan(self, only=None, with_engine=True):
        if only is not None:
            # After one build: that environment's rows only, not every
            # environment's (other environments' images are never its own).
            env = await store.get_environment(self.sessions, only)
            environments = [env] if env is not None else []
            versions = {only: await store.list_versions(self.sessions, only)}
        else:
            environments = await store.list_environments(self.sessions)
            versions = {}
            for uid, version in await store.all_versions(self.sessions):
                versions.setdefault(uid, []).append(version)
        manager = self.build_manager
        active = frozenset(
            e.uid for e in environments if manager is not None and manager.is_active(e.uid)
        )
        usage = await self.builder.disk_usage()
        try:
            users = await self.builder.image_users()
        except BuildError:
            raise
        except Exception as e:
            raise BuildError(
                f"Cannot list the containers that use images: {e.__class__.__name__}: {e}"
            ) from e
        result = plan(
            environments,
            versions,
            usage,
            users,
            keep=self.settings.keep_versions,
            image_prefix=self.settings.image_prefix,
            max_age=self.settings.build_cache_max_age,
            active=active,
            only=only,
            with_engine=with_engine,
        )
        return result, environments, versions, usage, users

    # -- keep_versions ---------------------------------------------------------

    async def after_build(self, uid):
        """Remove the versions of ``uid`` past ``keep_versions`` that nothing uses."""
        async with self._lock:
            try:
                result, *_ = await self._plan(only=uid, with_engine=False)
            except BuildError as e:
                self.log.warning("keep_versions: cannot look at the images of %s: %s", uid, e.message)
                return
            except Exception as e:
                # e.g. the database went away: the next build or prune does it.
                self.log.warning("keep_versions: nothing removed for %s now: %r", uid, e)
                return
            if result.versions:
                removed, freed, _ = await self._remove_versions(result)
                self.log.info(
                    "keep_versions=%d: removed %d old version%s of %s (%s), freeing %s",
                    self.settings.keep_versions, len(removed), "" if len(removed) == 1 else "s",
                    uid, ", ".join(f"v{v['number']}" for v in removed), human_size(freed),
                )

    async def _remove_versions(self, result):
        """Remove the planned versions; returns (removed, freed bytes, skipped)."""
        usage_frees = {}
        for _, version, _, frees in result.versions:
            usage_frees[version.image_id] = max(frees, usage_frees.get(version.image_id, 0))
        removed, skipped, freed = [], [], 0
        by_env = {}
        for env, version, size, frees in result.versions:
            try:
                answer = await self.builder.delete_image(version.image_name, None)
            except BuildError as e:
                # A server started from it meanwhile, or the engine went away.
                skipped.append({"uid": env.uid, "id": version.id, "reason": e.message})
                self.log.warning("Kept version %d of %s: %s", version.number, env.uid, e.message)
                continue
            for image_id in _deleted_ids(answer):
                freed += usage_frees.pop(image_id, 0)
            by_env.setdefault(env.uid, []).append(version.id)
            removed.append(_removed_version(env, version, size))
        for uid, ids in by_env.items():
            await store.delete_versions(self.sessions, uid, ids)
        return removed, freed, skipped

    # -- prune -------------------------------------------------------------------

    async def prune(self, dry_run=False):
        """Remove what no environment or server needs (the module's docstring)."""
        async with self._lock:
            result, *_ = await self._plan()
            answer = {
                "dry_run": dry_run,
                "freed": result.frees,
                "removed": {
                    "versions": [
                        _removed_version(env, version, size)
                        for env, version, size, _ in result.versions
                    ],
                    "dangling_images": [
                        {"id": d["id"], "uid": d["uid"], "size": d["size"]} for d in result.dangling
                    ],
                    "build_cache": dict(result.build_cache),
                },
                "skipped": [],
            }
            if dry_run:
                return answer
            removed, freed, skipped = await self._remove_versions(result)
            dangling = []
            for image in result.dangling:
                try:
                    deleted = _deleted_ids(await self.builder.delete_image(None, image["id"]))
                except BuildError as e:
                    skipped.append({"image_id": image["id"], "reason": e.message})
                    continue
                if image["id"] in deleted:
                    freed += image["frees"]
                dangling.append({"id": image["id"], "uid": image["uid"], "size": image["size"]})
            cache = {"count": 0, "size": 0}
            if result.build_cache["count"]:
                try:
                    cache = await self.builder.prune_build_cache(self.settings.build_cache_max_age)
                except BuildError as e:
                    skipped.append({"build_cache": True, "reason": e.message})
            freed += cache["size"]
            answer.update(
                freed=freed,
                removed={"versions": removed, "dangling_images": dangling, "build_cache": cache},
                skipped=skipped,
            )
            self.log.info(
                "Prune: removed %d versions, %d dangling images, %d build cache entries; freed %s",
                len(removed), len(dangling), cache["count"], human_size(freed),
            )
            return answer

    # -- the report --------------------------------------------------------------

    async def report(self):
        """The admins' disk report (``GET api/disk``, see openapi.yaml)."""
        result, environments, versions, usage, users = await self._plan()
        images = (usage or {}).get("images") or {}
        removable = {version.id for _, version, _, _ in result.versions}
        notes = []
        if users is None:
            notes.append(
                f"{self.builder.display_name} cannot tell which servers use an image: "
                "no version is removed"
            )
        listed = []
        for env in environments:
            rows = []
            distinct = {}
            for version in versions.get(env.uid, []):
                image = images.get(version.image_id)
                size = image["size"] if image else version.size
                if size is not None:
                    distinct[version.image_id] = size
                rows.append(
                    {
                        "id": version.id,
                        "number": version.number,
                        "image_name": version.image_name,
                        "image_id": version.image_id,
                        "size": size,
                        "current": version.image_id == env.image_id
                        or version.image_name == env.image_name,
                        "servers": None if users is None else users.get(version.image_id, 0),
                        "removable": version.id in removable,
                        "present": None if usage is None else image is not None,
                    }
                )
            if env.image_id and env.image_id not in distinct:
                image = images.get(env.image_id)
                size = image["size"] if image else env.size
                if size is not None:
                    distinct[env.image_id] = size
            listed.append(
                {
                    "uid": env.uid,
                    "name": env.name,
                    "owner": env.owner,
                    "size": sum(distinct.values()) if distinct or usage is not None else None,
                    "versions": rows,
                }
            )
        if usage is None:
            build_cache = {"size": None, "reclaimable": None, "older_than_max_age": None, "count": None}
            dangling = {"count": None, "size": None, "reclaimable": None}
            all_images = {"count": None, "size": None}
        else:
            entries = usage.get("build_cache") or []
            build_cache = {
                "count": len(entries),
                "size": sum(e["size"] for e in entries if not e["shared"]),
                "reclaimable": sum(
                    e["size"] for e in entries if not e["in_use"] and not e["shared"]
                ),
                "older_than_max_age": result.build_cache["size"],
            }
            dangling = {
                "count": len(result.dangling),
                "size": sum(d["size"] for d in result.dangling),
                "reclaimable": sum(d["frees"] for d in result.dangling),
            }
            all_images = {"count": len(images), "size": usage.get("layers_size")}
        space = await self.builder.disk_space()
        if space.get("note"):
            notes.append(space["note"])
        return {
            "environments": listed,
            "build_cache": {**build_cache, "max_age": self.settings.build_cache_max_age},
            "dangling": dangling,
            "images": all_images,
            "disk": {k: space.get(k) for k in ("path", "total", "used", "free")},
            "min_free_disk": self.settings.min_free_disk,
            "keep_versions": self.settings.keep_versions,
            "reclaimable": result.frees,
            "notes": notes,
        }

    # -- min_free_disk -------------------------------------------------------------

    async def refusal(self, uid=None):
        """Why a build may not start now (the engine's disk is under
        ``min_free_disk``), or None. Free space that cannot be known never
        refuses (said once in the log)."""
        minimum = self.settings.min_free_disk
        if not minimum:
            return None
        try:
            space = await self.builder.disk_space()
        except Exception as e:
            space = {"free": None, "note": f"{e.__class__.__name__}: {e}"}
        free = space.get("free")
        if free is None:
            if not self._unknown_logged:
                self._unknown_logged = True
                self.log.warning(
                    "min_free_disk: the free space of the build backend's disk is unknown (%s): "
                    "builds are not refused for it",
                    space.get("note") or "no figure",
                )
            return None
        if free >= minimum:
            return None
        return (
            f"min_free_disk: the Docker engine's disk ({space.get('path')}) has "
            f"{human_size(free)} free ({free} bytes), under min_free_disk = "
            f"{human_size(minimum)} ({minimum} bytes). Builds are refused until an admin "
            "frees space (Disk page: prune) or lowers min_free_disk"
        )
