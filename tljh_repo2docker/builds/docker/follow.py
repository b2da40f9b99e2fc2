"""Following a started build container to its result, through restarts of the engine.

:class:`FollowMixin` is the part of
:class:`~tljh_repo2docker.builds.docker.DockerBuilder` that reads the build
container's log (with a :class:`~.logreader.LogReader`), notes the commit
that was built, and turns the container's end into the build's final event.

The commit that was built is read from the log: git prints ``HEAD is now at
<sha>`` when repo2docker checks out a ref, and for the default branch
(``HEAD``, a shallow clone without that line) a ``post-checkout`` hook
uploaded into the container prints ``tljh-repo2docker: checked out <sha>``
(see :mod:`.container`).

A build that repo2docker ends with 0 is checked before it gets its name
(:mod:`.check`), while what it holds is listed (:mod:`.inside`): an image
that fails its check is kept as a failed version under its version
reference, and the environment's name stays where it was.
"""

import asyncio
import collections
import contextlib
import dataclasses
import re
import time

import aiodocker
import aiohttp

from ... import contract
from .. import failure
from ..base import BUILT, CANCELLED, FAILED, LOG, STATUS, BuildEvent
from . import check as checks
from . import credentials
from .check import CheckSpec
from .engine import ENGINE_ERRORS, NO_CONNECTION, describe, forget, option, shielded
from .inside import build_pack_of

# With core.abbrev=40 (set for git, see container.py) git prints the full commit id here.
_HEAD_RE = re.compile(r"HEAD is now at ([0-9a-f]{7,64})\b")
# Printed by the post-checkout hook (see container.py) after a clone of the default branch.
_CHECKOUT_RE = re.compile(r"^tljh-repo2docker: checked out ([0-9a-f]{40}|[0-9a-f]{64})$")
_FULL_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# What explains a failure best: the build tool's or git's own error line, else
# any line that sounds like an error (Python's traceback comes last in the log).
_TAIL_LINES = failure.TAIL_LINES
# Engine losses one build lives through before it is marked failed.
_MAX_ENGINE_LOSSES = 10


class _ContainerGone(Exception):
    """The build container disappeared while we followed it."""


class _EngineLost(Exception):
    """The Docker engine stopped answering and did not come back in time."""


class FollowMixin:
    """Follow a build container (part of ``DockerBuilder``).

    Uses the builder's ``docker`` client, ``docker_url``,
    ``engine_wait_timeout``, the uids it cancelled (``_cancelled``), and
    its image, container, check and listing steps (``_publish``,
    ``_remove_staging``, ``_remove``, ``_check_image``, ``_describe``).
    """

    async def _follow(
        self,
        container,
        uid,
        image_name,
        staging,
        reader,
        secrets,
        mark=None,
        number=None,
        check=None,
    ):
        """Yield a started container's log lines, then the final event.

        repo2docker builds ``staging``; a successful build is then tagged
        ``image_name``, and pushed with ``push`` on (see :meth:`_publish`).
        ``reader`` (a :class:`~.logreader.LogReader`) knows which lines were yielded
        before (by the service before it restarted): those are read again,
        for the commit and the failure message, but not yielded. Each line
        yielded carries its cursor (see :class:`~.logreader.LogReader`).

        Shared by build() and attach(). The container is removed after the
        final event, when the consumer asks for more (the manager does once
        the result is stored). If the consumer stops early (its task is
        cancelled, or it closes this generator), only the following stops:
        the container stays for attach() or cancel().

        A restart of the engine (``dockerd``) is told from a failed build:
        a stopping engine first closes its socket to new connections, keeps
        serving the ones open (so the log stream and the wait for the
        container's exit may still answer), stops the containers unless it
        runs with ``live-restore``, and exits. So when the container ends
        with an error, or the connection breaks, and a new connection is
        refused, this waits up to ``engine_wait_timeout`` for the engine to
        answer again and looks at the container: one that still runs is
        followed further, without repeating lines; one that the restart
        stopped fails the build with a reason naming the engine, and is
        removed like any other. ``mark(point)``, when given, notes the moments
        of the build's steps (see :class:`~..base.Timeline`). ``check`` (a
        :class:`~.check.CheckSpec`) is what the check of the built image needs
        (see :meth:`_check_and_publish`).
        """
        mark = mark or (lambda point: None)
        started = time.monotonic()
        commit = None
        ref = None
        tail = collections.deque(maxlen=_TAIL_LINES)
        final = None
        lost = None  # why the engine was lost, while it is
        losses = 0
        code = None
        build_pack = None
        builder = (None, None)  # the builder image's reference and id

        def take(line):
            """Scrub ``line``, note what it tells, and return it."""
            nonlocal commit, build_pack
            match = _CHECKOUT_RE.match(line) or _HEAD_RE.search(line)
            if match:
                commit = match.group(1)
            build_pack = build_pack_of(line) or build_pack
            line = credentials.scrub(line, secrets)
            if line.strip():
                tail.append(line)
            return line

        try:
            while True:
                try:
                    info = await container.show()
                    ref = option(info["Config"]["Cmd"], "--ref")
                    builder = (info["Config"].get("Image"), info.get("Image"))
                    if lost is not None and not info["State"].get("Running"):
                        # The container ended while the engine was away.
                        code = info["State"].get("ExitCode")
                        break
                    if lost is not None:
                        self.log.info("Build %s: the Docker engine is back; following again", uid)
                        yield BuildEvent(STATUS, "the Docker engine answers again; following the build")
                        # The log is read again from its start: what was
                        # yielded is skipped, an unfinished line read again.
                        reader = reader.again()
                        tail.clear()
                        lost = None
                    # Asked for while the log is followed: its answer is
                    # there when the log ends (a request less after the exit).
                    waiter = asyncio.ensure_future(container.wait())
                    try:
                        async with contextlib.aclosing(
                            container.log(stdout=True, stderr=True, follow=True, timestamps=True)
                        ) as chunks:
                            async for chunk in chunks:
                                for line, new, cursor in reader.feed(chunk):
                                    line = take(line)
                                    if new:
                                        yield BuildEvent(LOG, line, cursor=cursor)
                        mark("container log ended")
                        code = (await waiter).get("StatusCode")
                    finally:
                        forget(waiter)
                    mark("container exited")
                    # The container has ended, so its log has: output it
                    # left without a line end is its last line. (aiodocker
                    # also ends the stream when the connection breaks; then
                    # the wait above fails and the line is read again.)
                    for line, new, cursor in reader.finish():
                        line = take(line)
                        if new:
                            yield BuildEvent(LOG, line, cursor=cursor)
                    # A busy engine is not a stopping one: only a refused
                    # connection means that it is going away.
                    if code == 0 or await self._probe_engine() != "refused":
                        break
                    lost = "it stopped accepting connections as the build ended"
                except aiodocker.DockerError as e:
                    if e.status == 404:
                        raise _ContainerGone() from e
                    if e.status != NO_CONNECTION:
                        raise
                    lost = describe(e)
                except (aiohttp.ClientError, OSError) as e:
                    lost = f"the connection broke: {e.__class__.__name__}"
                losses += 1
                self.log.warning("Build %s: lost the Docker engine: %s", uid, lost)
                yield BuildEvent(
                    STATUS,
                    f"lost contact with the Docker engine ({lost}); "
                    f"waiting up to {self.engine_wait_timeout:g} s for it to answer again",
                )
                if losses > _MAX_ENGINE_LOSSES or not await self._wait_for_engine():
                    raise _EngineLost()
        except _ContainerGone:
            if uid in self._cancelled:
                final = BuildEvent(CANCELLED, "Build cancelled")
            elif losses:
                final = BuildEvent(
                    FAILED, "The Docker engine restarted during the build and its container is gone"
                )
            else:
                final = BuildEvent(FAILED, "The build container disappeared")
        except _EngineLost:
            self.log.error("Build %s: the Docker engine did not come back: %s", uid, lost)
            final = BuildEvent(
                FAILED,
                f"Lost contact with the Docker engine at {self.docker_url}, and it did not "
                f"answer again within {self.engine_wait_timeout:g} s ({lost})",
            )
        except ENGINE_ERRORS as e:
            self.log.error("Build %s: lost the Docker engine: %s", uid, e)
            final = BuildEvent(FAILED, f"Lost contact with the Docker engine: {describe(e)}")
        else:
            if ref and _FULL_SHA_RE.match(ref):
                commit = ref
            if uid in self._cancelled:
                # Even if the build got to its end: cancel() removes its image.
                final = BuildEvent(CANCELLED, "Build cancelled")
            elif code == 0:
                # Checked, then named and pushed when push is on: the
                # check's and the push's lines come first.
                steps = self._check_and_publish(
                    uid, image_name, staging, commit, mark, number,
                    check or CheckSpec(), secrets, build_pack, builder,
                )  # fmt: skip
                async with contextlib.aclosing(steps) as events:
                    async for event in events:
                        if event.final:
                            final = event
                            continue
                        if event.phase == LOG and event.cursor is None:
                            # The check's output is not the build container's:
                            # its lines leave the cursor where the build's log
                            # ended (a restart checks again, and says so).
                            event.cursor = reader.cursor
                        yield event
                if uid in self._cancelled:
                    # cancel() came during the check: what it kept goes too.
                    if final.phase == FAILED and final.image_id and number:
                        await self._delete_quietly(contract.version_reference(image_name, number))
                    final = BuildEvent(CANCELLED, "Build cancelled")
            elif lost is not None:
                final = BuildEvent(
                    FAILED,
                    "The Docker engine restarted during the build, which stopped the build "
                    f"container (exit code {code}): rebuild the environment",
                )
            else:
                final = BuildEvent(FAILED, _failure_message(code, tail))
        if final.phase != BUILT:
            await self._remove_staging(uid, staging)
        self.log.info("Build %s: %s after %.1f s", uid, final.phase, time.monotonic() - started)
        yield final
        # Only once the consumer asks for more (the manager: once it stored
        # the result), so that a service killed before that finds the
        # container, re-attaches and reports the same result.
        await self._remove(container, uid)

    async def _check_and_publish(
        self, uid, image_name, staging, commit, mark, number, spec, secrets, build_pack, builder
    ):
        """Check the image built as ``staging`` and list what it holds; name
        (and push) it when it passes. Yields the check's and the push's
        events, then the final one, which carries the check, what the image
        holds and the builder (``(reference, id)`` of its image).

        An image that fails its check never gets ``image_name``: with the
        version's ``number`` it is kept under the version's own reference
        (``name:tag--vN``, local only: never pushed), so that what it holds
        can still be looked at, and the final ``failed`` event carries its
        id (the manager records a failed version, never current).
        """
        builder_image, builder_image_id = builder
        about = {"builder_image": builder_image, "builder_image_id": builder_image_id}
        new_id = None
        if staging and staging != image_name:
            try:
                new_id = await self._image_id(staging)
            except ENGINE_ERRORS as e:
                yield BuildEvent(FAILED, f"Cannot inspect the built image: {describe(e)}")
                return
        if new_id is None:
            # Named before the service restarted (so checked then, if at
            # all), or never made: _publish tells which.
            # aclosing: a consumer that stops following closes the push at
            # once (it puts the name back; see _publish), not when collected.
            publish = self._publish(staging, image_name, commit, uid, mark, number)
            async with contextlib.aclosing(publish) as events:
                async for event in events:
                    if event.phase == BUILT:
                        inside, packages = await self._describe(
                            uid, image_name, build_pack, builder_image_id, spec
                        )
                        about.update(inside=inside, packages=packages)
                        event = dataclasses.replace(event, **about)
                    yield event
            return
        try:
            # What a check cut short by a restart left: its server is taken over.
            server = await self._take_over_checks(uid, new_id)
        except ENGINE_ERRORS as e:
            yield BuildEvent(FAILED, f"Cannot check the built image: {describe(e)}")
            return
        listing = asyncio.ensure_future(
            self._describe(uid, staging, build_pack, builder_image_id, spec)
        )
        outcome = {}
        try:
            try:
                checking = self._check_image(uid, staging, spec, secrets, outcome, server)
                async for event in checking:
                    yield event
            except ENGINE_ERRORS as e:
                if uid in self._cancelled:  # cancel() removed what the check used
                    await self._remove_checks(uid)
                    yield BuildEvent(CANCELLED, "Build cancelled")
                    return
                self.log.error("Build %s: could not check the image: %s", uid, e)
                yield BuildEvent(FAILED, f"Cannot check the built image: {describe(e)}")
                return
            mark("image checked")
            about["inside"], about["packages"] = await listing
            mark("image listed")
        finally:
            if not listing.done():
                listing.cancel()
                await shielded(_ended(listing))
        if uid in self._cancelled:
            # cancel() stopped the check: its verdict means nothing.
            await self._remove_checks(uid)
            yield BuildEvent(CANCELLED, "Build cancelled")
            return
        check = outcome.get("check")
        about["check"] = check
        if check is not None and check["status"] == checks.FAILED:
            self.log.info("Build %s: the image failed its check: %s", uid, check["message"])
            kept = await self._keep_failed(uid, staging, image_name, number)
            yield BuildEvent(
                FAILED,
                check["message"],
                image_id=new_id if kept else None,
                commit=commit,
                **about,
            )
            return
        publish = self._publish(staging, image_name, commit, uid, mark, number)
        async with contextlib.aclosing(publish) as events:  # (see above)
            async for event in events:
                if event.final:
                    event = dataclasses.replace(event, **about)
                yield event

    async def _keep_failed(self, uid, staging, image_name, number):
        """Give an image that failed its check its version's own reference
        instead of its staging name; whether it did."""
        if not number:
            return False
        version = contract.version_reference(image_name, number)
        try:
            repository, tag = contract.split_reference(version)
            await self.docker.images.tag(staging, repository, tag=tag)
        except ENGINE_ERRORS as e:
            self.log.warning("Build %s: could not keep the failed image as %s: %s", uid, version, e)
            return False
        await self._untag(staging)
        return True

    async def _probe_engine(self):
        """``"ok"``, ``"refused"`` (no new connection) or ``"error"``, asking the engine anew.

        A new client, not the shared one: an engine that is shutting down
        refuses new connections but still answers on those already open.
        """
        client = None
        try:
            client = aiodocker.Docker(url=self.docker_url)
            await asyncio.wait_for(client.version(), 10)
            return "ok"
        except aiodocker.DockerError as e:
            return "refused" if e.status == NO_CONNECTION else "error"
        except (aiohttp.ClientConnectionError, OSError):
            return "refused"
        except (asyncio.TimeoutError, aiohttp.ClientError, ValueError):
            return "error"
        finally:
            if client is not None:
                await client.close()

    async def _wait_for_engine(self):
        """Whether the engine answers again within ``engine_wait_timeout`` seconds."""
        deadline = time.monotonic() + self.engine_wait_timeout
        while True:
            if await self._probe_engine() == "ok":
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(1)



async def _ended(task):
    """Wait for a cancelled ``task`` to end; its cancellation is no error."""
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


def _failure_message(code, tail):
    return failure.describe(f"repo2docker exited with code {code}", tail)
