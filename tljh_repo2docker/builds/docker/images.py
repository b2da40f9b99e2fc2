"""The Docker backend's images: naming (and pushing) a build's result, versions,
deleting, disk use, adoption.

:class:`ImagesMixin` is the part of
:class:`~tljh_repo2docker.builds.docker.DockerBuilder` that works on images
rather than on build containers. repo2docker builds into a staging name
unique to the build, and only a successful build gets the environment's
image name (:meth:`ImagesMixin._publish`): repo2docker skips the build when
the name it is given already exists, which would make every rebuild keep the
old image; and this way the previous image keeps its name, for new servers,
until the new one is ready.

Each build kept as a version has its own reference, ``repo:tag--vN``
(:func:`tljh_repo2docker.contract.version_reference`, the one definition
of that pattern).

With ``push`` on, the named image, each version's reference and the name
moved by a rollback are pushed to their registry (see :mod:`.push`).
Removing a version removes its local reference only: its tag stays in the
registry.
"""

import asyncio
import json
import shutil
import time

import aiodocker
import aiohttp

from ..base import BUILT, FAILED, STATUS, BuildError, BuildEvent
from ...contract import split_reference, version_reference
from .engine import (
    BUILD_LABEL,
    ENGINE_ERRORS,
    IMAGE_NAME_LABEL,
    LEGACY_LABEL,
    UID_LABEL,
    container_name,
    describe,
    from_image_context,
    shielded,
    timestamp,
)
from .check import CHECK_LABEL
from .push import PushFailed, PushProgress

#: Seconds a disk-use question waits for the engine's other one to end.
_DF_WAIT = 30


class ImagesMixin:
    """Images (part of ``DockerBuilder``): uses its ``docker`` client, ``log``,
    ``docker_url``, ``container_prefix``, ``_root_dir``, ``push`` and its
    push steps (see :mod:`.push`)."""

    # -- the result of a build -----------------------------------------------

    async def _publish(self, staging, image_name, commit, uid=None, mark=None, number=None):
        """Give the image built as ``staging`` its real name, and push it
        when ``push`` is on; yield the push's events, then the final one.

        A build re-attached after it ended (the service was killed before it
        stored the result) was named (and pushed) already: its staging name
        is gone, and ``image_name`` is the image (labelled with the build's
        uid; repo2docker ended with 0, so it built it, perhaps all from
        BuildKit's cache). The staging name goes only once the push is done,
        so a build re-attached during its push is named and pushed again.

        A push that fails fails the build: ``image_name`` names its previous
        image again, and the new one (still named ``staging``) is removed
        with the staging name, as after any failure.

        With ``number`` (the version the build makes) and push on, the
        version's own reference (``name:tag--vN``) is tagged and pushed too,
        before the build counts as built: pods that start that reference
        (spawners/kube.py) find it in the registry.
        """
        mark = mark or (lambda point: None)
        if not staging or staging == image_name:
            yield await self._built_event(image_name, commit)
            return
        previous = digest = None
        try:
            if self.push:
                new_id = await self._image_id(staging)
                if new_id is not None:
                    previous = await self._previous_image(image_name, new_id, uid)
            repository, tag = split_reference(image_name)
            await self.docker.images.tag(staging, repository, tag=tag)
        except aiodocker.DockerError as e:
            if e.status == 404:
                if await self._made_by(image_name, uid):
                    yield await self._built_event(image_name, commit)
                    return
                yield BuildEvent(
                    FAILED, f"repo2docker finished but the image {staging} does not exist"
                )
                return
            yield BuildEvent(FAILED, f"Cannot name the built image: {describe(e)}")
            return
        except (aiohttp.ClientError, OSError) as e:
            yield BuildEvent(FAILED, f"Cannot name the built image: {describe(e)}")
            return
        mark("image named")
        if self.push:
            progress = PushProgress()
            try:
                async for event in self._push(image_name, progress, uid):
                    yield event
            except PushFailed as e:
                await self._put_name_back(image_name, previous)
                yield BuildEvent(FAILED, str(e))
                return
            except BaseException:
                # Stopped following (or cancelled) while it pushed: the new
                # image is not the environment's until it is pushed.
                await shielded(self._put_name_back(image_name, previous))
                raise
            digest = progress.digest
            mark("image pushed")
            if number:
                version = version_reference(image_name, number)
                try:
                    repository_v, tag_v = split_reference(version)
                    await self.docker.images.tag(image_name, repository_v, tag=tag_v)
                    async for event in self._push(version, PushProgress(), uid):
                        if event.phase != STATUS:
                            yield event
                except (PushFailed, *ENGINE_ERRORS) as e:
                    await self._put_name_back(image_name, previous)
                    await self._untag(version)
                    message = str(e) if isinstance(e, PushFailed) else describe(e)
                    yield BuildEvent(FAILED, f"Cannot push the version {version}: {message}")
                    return
                except BaseException:
                    await shielded(self._put_name_back(image_name, previous))
                    raise
                mark("version pushed")
        await self._untag(staging)
        mark("staging name removed")
        event = await self._built_event(image_name, commit)
        if digest is not None and event.phase == BUILT:
            event.message = f"{event.message}, pushed as {repository}@{digest}"
        yield event

    async def _made_by(self, image_name, uid):
        """Whether ``image_name`` exists and is labelled as built for ``uid``."""
        if not uid:
            return False
        try:
            image = await self.docker.images.inspect(image_name)
        except ENGINE_ERRORS:
            return False
        return (image["Config"].get("Labels") or {}).get(UID_LABEL) == uid

    async def _untag(self, name):
        await self._delete_quietly(name, noprune=True)

    async def _delete_quietly(self, name, **kwargs):
        """Remove an image or image name: a missing one is fine, other errors are logged."""
        try:
            await self.docker.images.delete(name, **kwargs)
        except aiodocker.DockerError as e:
            if e.status != 404:
                self.log.warning("Could not remove image %s: %s", name, e)
        except (aiohttp.ClientError, OSError) as e:
            self.log.warning("Could not remove image %s: %s", name, e)

    async def _remove_staging(self, uid, staging):
        """Remove what an unfinished build tagged under its staging name, if anything."""
        if not staging:
            return
        try:
            image = await self.docker.images.inspect(staging)
        except ENGINE_ERRORS:
            return
        if (image["Config"].get("Labels") or {}).get(UID_LABEL) not in (None, uid):
            return
        self.log.warning("Build %s: removing the unfinished image %s", uid, staging)
        await self._delete_quietly(staging)

    async def _built_event(self, image_name, commit):
        try:
            image = await self.docker.images.inspect(image_name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return BuildEvent(
                    FAILED,
                    f"repo2docker finished but the image {image_name} does not exist",
                )
            return BuildEvent(FAILED, f"Cannot inspect the built image: {describe(e)}")
        except (aiohttp.ClientError, OSError) as e:
            return BuildEvent(FAILED, f"Cannot inspect the built image: {describe(e)}")
        return BuildEvent(
            BUILT,
            f"Built {image_name}",
            image_name=image_name,
            image_id=image["Id"],
            size=image.get("Size"),
            commit=commit,
        )

    async def _remove_leftover_image(self, uid, info):
        """Remove an image the cancelled build managed to tag anyway."""
        image_name = (info["Config"].get("Labels") or {}).get(IMAGE_NAME_LABEL)
        if not image_name:
            return
        try:
            image = await self.docker.images.inspect(image_name)
        except ENGINE_ERRORS:
            return
        labels = image["Config"].get("Labels") or {}
        # Only an image of this very build: a previous build of the same
        # environment can carry the same name and uid, but it is older.
        built = timestamp(image.get("Created"))
        if labels.get(UID_LABEL) != uid or built < timestamp(info.get("Created")):
            return
        self.log.warning("Build %s: removing image %s tagged despite the cancel", uid, image_name)
        try:
            await self.docker.images.delete(image_name)
        except aiodocker.DockerError as e:
            self.log.warning("Could not remove image %s: %s", image_name, e)

    # -- versions ------------------------------------------------------------

    def version_name(self, image_name, number):
        return version_reference(image_name, number)

    async def keep_version(self, image_name, image_id, number):
        ref = version_reference(image_name, number)
        repository, tag = split_reference(ref)
        await self.docker.images.tag(image_id or image_name, repository, tag=tag)
        if self.push:
            # Its layers are in the registry already: only the tag goes up.
            # The version is kept here even if the push fails.
            try:
                digest = await self._push_now(ref)
            except PushFailed as e:
                self.log.warning("Version %s is kept here but not in its registry: %s", ref, e)
            else:
                self.log.info("Pushed version %s (%s)", ref, digest)
        return ref

    async def image_references(self):
        images = await self.docker.images.list()
        return {tag for image in images for tag in image.get("RepoTags") or ()}

    async def make_current(self, version_image, image_id, image_name):
        repository, tag = split_reference(image_name)
        previous = None
        try:
            if self.push:
                previous = await self._image_id(image_name)
            await self.docker.images.tag(image_id or version_image, repository, tag=tag)
        except aiodocker.DockerError as e:
            raise BuildError(f"Cannot restore image {version_image}: {describe(e)}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise BuildError(f"Cannot restore image {version_image}: {describe(e)}") from e
        if self.push:
            # Servers elsewhere (Kubernetes) pull the name from the registry.
            try:
                await self._push_now(image_name)
            except PushFailed as e:
                await self._put_name_back(image_name, previous)
                raise BuildError(str(e)) from None
        return image_name

    # -- images --------------------------------------------------------------

    async def image_exists(self, image_name):
        try:
            await self.docker.images.inspect(image_name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def image_users(self):
        """``{image id: number of containers}`` over the engine's containers,
        build and check containers left out (any state: a stopped server's container
        still needs its image to start again)."""
        containers = await self.docker.containers.list(all=True)
        users = {}
        for container in containers:
            info = container._container  # the list entry (aiodocker keeps it there)
            labels = info.get("Labels") or {}
            # Build containers, and those checking a new image (never a server's).
            if labels.get(BUILD_LABEL) or labels.get(CHECK_LABEL):
                continue
            image_id = info.get("ImageID")
            if image_id:
                users[image_id] = users.get(image_id, 0) + 1
        return users

    async def delete_image(self, image_name, image_id=None):
        image = None
        target = None
        for candidate in (image_name, image_id):
            if not candidate:
                continue
            try:
                image = await self.docker.images.inspect(candidate)
            except aiodocker.DockerError as e:
                if e.status == 404:
                    continue
                raise BuildError(f"Cannot inspect image {candidate}: {describe(e)}") from e
            except (aiohttp.ClientError, OSError) as e:
                raise BuildError(f"Cannot reach the Docker engine: {describe(e)}") from e
            target = candidate
            break
        if image is None:
            return []
        try:
            candidates = await self.docker.containers.list(
                all=True, filters={"ancestor": [image["Id"]]}
            )
        except ENGINE_ERRORS as e:
            raise BuildError(f"Cannot list containers: {describe(e)}") from e
        users = [c for c in candidates if "ImageID" in c and c["ImageID"] == image["Id"]]
        if users:
            names = sorted(container_name(c) for c in users)
            raise BuildError(
                f"Image {image_name or image_id} is used by "
                f"{len(names)} container{'s' if len(names) > 1 else ''}: {', '.join(names)}"
            )
        try:
            answer = await self.docker.images.delete(target)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return []
            raise BuildError(f"Cannot remove image {target}: {describe(e)}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise BuildError(f"Cannot reach the Docker engine: {describe(e)}") from e
        self.log.info("Removed image %s", target)
        return answer if isinstance(answer, list) else []

    # -- disk ----------------------------------------------------------------

    async def _system_df(self):
        """GET /system/df. The engine computes one at a time and refuses a
        second one meanwhile ("a disk usage operation is already running"):
        this service's own are queued behind a lock, and one refused because
        another client of the engine asked at the same moment is asked again,
        for up to ``_DF_WAIT`` seconds."""
        deadline = time.monotonic() + _DF_WAIT
        async with self._df_lock:
            while True:
                try:
                    return await self.docker._query_json("system/df", method="GET")
                except aiodocker.DockerError as e:
                    if "already running" in str(e.message) and time.monotonic() < deadline:
                        await asyncio.sleep(0.5)
                        continue
                    raise BuildError(f"Cannot ask the Docker engine for its disk use: {describe(e)}") from e
                except ENGINE_ERRORS as e:
                    raise BuildError(f"Cannot ask the Docker engine for its disk use: {describe(e)}") from e

    async def disk_usage(self):
        # GET /system/df: every image with its own size and the part of it
        # shared with other images, and the build cache (BuildKit's records).
        df = await self._system_df()
        images = {}
        for image in df.get("Images") or []:
            images[image["Id"]] = {
                "size": image.get("Size") or 0,
                # -1 when the engine did not compute it
                "shared_size": max(image.get("SharedSize") or 0, 0),
                "containers": image.get("Containers", -1),
                "tags": [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"],
                "labels": image.get("Labels") or {},
                "created": image.get("Created") or 0,
            }
        cache = [
            {
                "id": entry.get("ID"),
                "size": entry.get("Size") or 0,
                "in_use": bool(entry.get("InUse")),
                "shared": bool(entry.get("Shared")),
                "last_used": timestamp(entry.get("LastUsedAt") or entry.get("CreatedAt")),
            }
            for entry in df.get("BuildCache") or []
        ]
        return {"images": images, "layers_size": df.get("LayersSize"), "build_cache": cache}

    async def disk_space(self):
        space = {"path": None, "total": None, "used": None, "free": None, "note": None}
        if not self.docker_url.startswith("unix://"):
            space["note"] = (
                f"The Docker engine at {self.docker_url} is on another machine: its disk "
                "cannot be measured from here"
            )
            return space
        if self._root_dir is None:
            try:
                info = await self.docker.system.info()
            except ENGINE_ERRORS as e:
                space["note"] = f"Cannot ask the Docker engine where it stores images: {describe(e)}"
                return space
            self._root_dir = info.get("DockerRootDir") or ""
        space["path"] = self._root_dir or None
        try:
            usage = shutil.disk_usage(self._root_dir)
        except OSError as e:
            space["note"] = (
                f"The engine stores images in {self._root_dir or '?'}, which this service "
                f"cannot see ({e.strerror or e.__class__.__name__}): run it on the engine's "
                "machine (not in a container without that folder) to know the free space"
            )
            return space
        space.update(total=usage.total, used=usage.used, free=usage.free)
        return space

    async def prune_build_cache(self, older_than):
        # POST /build/prune: "all" takes every unused entry, not only the
        # dangling ones; "until" keeps those used within the duration. The
        # build cache is the engine's, shared by every hub and user of it.
        params = {"all": "true", "filters": json.dumps({"until": [f"{int(older_than)}s"]})}
        try:
            answer = await self.docker._query_json("build/prune", method="POST", params=params)
        except ENGINE_ERRORS as e:
            raise BuildError(f"Cannot prune the build cache: {describe(e)}") from e
        return {
            "count": len(answer.get("CachesDeleted") or []),
            "size": answer.get("SpaceReclaimed") or 0,
        }

    # -- adoption ------------------------------------------------------------

    async def adoptable_images(self):
        # Ours carry the uid label; those of tljh-repo2docker 3.x only its
        # image_name label (they are re-labelled when adopted: adopt_image()).
        images = {}
        for label in (UID_LABEL, LEGACY_LABEL):
            for image in await self.docker.images.list(filters={"label": [label]}):
                images[image["Id"]] = image
        staging = self.container_prefix.lower()
        result = []
        for image in images.values():
            tags = sorted(
                t
                for t in image.get("RepoTags") or []
                # Staging names are left by builds that never finished.
                if t != "<none>:<none>" and not t.startswith(staging)
            )
            if not tags:
                continue
            labels = dict(image.get("Labels") or {})
            wanted = labels.get(LEGACY_LABEL)
            result.append(
                {
                    "image_name": wanted if wanted in tags else tags[0],
                    "image_id": image["Id"],
                    "size": image.get("Size"),
                    "labels": labels,
                }
            )
        return result

    async def adopt_image(self, image_name, labels):
        """Make ``image_name`` an image of the environment that ``labels`` describe.

        An image that already carries the environment's uid is used as it
        is. Otherwise (an image of tljh-repo2docker 3.x, without our labels)
        a new image is made from it with the labels added: the same layers
        (nothing is copied), a new id, the same name. Returns ``{"image_id",
        "size"}``, or None when there is no such image.
        """
        try:
            image = await self.docker.images.inspect(image_name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise BuildError(f"Cannot inspect image {image_name}: {describe(e)}") from e
        current = image["Config"].get("Labels") or {}
        if current.get(UID_LABEL) == labels.get(UID_LABEL) and all(
            current.get(k) == v for k, v in labels.items()
        ):
            return {"image_id": image["Id"], "size": image.get("Size")}
        context = from_image_context(image['Id'])
        try:
            await self.docker.images.build(
                fileobj=context, encoding="identity", tag=image_name, labels=labels, rm=True
            )
            relabelled = await self.docker.images.inspect(image_name)
        except ENGINE_ERRORS as e:
            raise BuildError(f"Cannot label image {image_name}: {describe(e)}") from e
        self.log.info(
            "Labelled image %s (was %s, now %s) for environment %s",
            image_name, image["Id"][:19], relabelled["Id"][:19], labels.get(UID_LABEL),
        )
        return {"image_id": relabelled["Id"], "size": relabelled.get("Size")}

