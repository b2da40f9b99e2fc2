"""After a restart: builds found again, re-submitted or failed, and images adopted.

:class:`RecoveryMixin` is the part of :class:`~.manager.BuildManager` that
runs at start-up (:meth:`~RecoveryMixin.recover`). A backend that can
re-attach to a build that went on while the service was down
(``Builder.attach``, Docker) is followed from the stored cursor on; one that
cannot (``Builder.resubmit_on_recover``, BinderHub) is asked for the same
build again, and :func:`without_replay` keeps the lines it sends again out of
the stored log.
"""

import asyncio
import contextlib

from ..db import store
from .adoption import adopt_images
from .base import FAILED, LOG, STATUS, BuildEvent


class RecoveryMixin:
    """Recovery (part of ``BuildManager``): uses its ``builder``, ``sessions``,
    ``build_logs``, queue and running builds."""

    async def recover(self, request_for):
        """After a restart: re-attach, fail the vanished, re-queue the queued, adopt images.

        ``request_for(env)`` rebuilds a BuildRequest (without credentials) for a
        queued environment, or for a build the backend asks to re-submit
        (``Builder.resubmit_on_recover``) because it cannot re-attach.
        """
        running = await self.builder.running()
        # Read before re-submitting (which queues) so nothing is queued twice.
        queued = await store.list_environments(self.sessions, [store.QUEUED])
        building = await store.list_environments(self.sessions, [store.BUILDING])
        await self._discard_leftovers(running, building)
        # recover() is tried again when the backend fails half-way through
        # (see TljhRepo2Docker.init_builds): what was recovered stays so.
        building = [env for env in building if not self.is_active(env.uid)]
        queued = [env for env in queued if not self.is_active(env.uid)]
        for env in building:
            events = (
                self.builder.attach(env.uid, env.source_lines, env.source_cursor)
                if env.uid in running
                else None
            )
            if events is None and self.builder.resubmit_on_recover and not env.private:
                self.log.info("Re-submitting build %s after a restart", env.uid)
                # The backend may send again what it sent before: compare.
                lines = [e[2] for e in await store.read_log(self.sessions, env.uid) if e[1] == LOG]
                self._replays[env.uid] = (lines, len(lines) == env.source_lines)
                await store.update_environment(self.sessions, env.uid, status=store.QUEUED)
                await self.submit(env, request_for(env))
                log = self.build_logs.get(env.uid)
                if log is not None:
                    log.source_lines = env.source_lines
                    log.add(STATUS, "re-submitted after a service restart")
                continue
            if events is None:
                await self._finish_stale(
                    env, "The build stopped while the service was not running"
                )
                continue
            self.log.info("Re-attaching to build %s", env.uid)
            log = self.build_logs.open(env.uid, env.last_event_id + 1)
            log.source_lines = env.source_lines
            log.source_cursor = env.source_cursor
            log.add(STATUS, "re-attached after a service restart")
            self.build_logs.ensure_flusher(env.uid)
            self._owners[env.uid] = env.owner  # counts for the queue's fairness
            self._running[env.uid] = asyncio.create_task(self._run(env.uid, events, resumed=True))
        for env in sorted(queued, key=lambda e: (e.queued or e.created, e.id)):
            if env.private:
                await self._finish_stale(
                    env,
                    "The service restarted before this build started, and credentials "
                    "are never stored: rebuild it and give the credentials again",
                )
                continue
            await self.submit(env, request_for(env))
        await self._adopt_images()

    async def _discard_leftovers(self, running, building):
        """Remove what the backend still holds of this service's ended builds.

        Only builds of environments in this database: another service may
        share the Docker engine, and its builds are its own business.
        """
        ended = running - {env.uid for env in building}
        if not ended:
            return
        for env in await store.list_environments(self.sessions):
            if env.uid in ended:
                await self.builder.discard(env.uid)

    async def _finish_stale(self, env, reason):
        self.build_logs.open(env.uid, env.last_event_id + 1)
        self.build_logs.ensure_flusher(env.uid)
        await self._finish(env.uid, BuildEvent(FAILED, reason))

    async def _adopt_images(self):
        await adopt_images(
            self.sessions,
            self.builder,
            self.image_prefix,
            adopt_legacy=bool(getattr(self.parent, "adopt_legacy_images", False)),
        )


async def without_replay(events, stored, complete, backend):
    """The events of a build asked for again after a restart, without the lines it repeats.

    A backend that cannot re-attach (``Builder.resubmit_on_recover``) is
    asked for the same build again. BinderHub then follows the build it
    still runs from its start, so its log begins with the lines already
    stored (``stored``, in order); or it runs the build anew; or, when its
    build ended meanwhile, it only says so, and what it printed while the
    service was down is lost. Which one happened shows in the lines: those
    that repeat ``stored`` from its first line are held back, and dropped
    once all of ``stored`` came again, or sent after all once a line
    differs (a new run). Each case is said in a status line, so that the
    stored log never holds a silent repeat or a silent gap. When
    ``complete`` is False (lines were dropped from the middle of a long
    stored log), nothing can be compared: a status line says that lines may
    repeat.
    """
    # Closing this closes the backend's events too (the build is only followed).
    async with contextlib.aclosing(events) as source:
        async for event in _without_replay(source, stored, complete, backend):
            yield event


async def _without_replay(events, stored, complete, backend):
    if not stored:
        async for event in events:
            yield event
        return
    if not complete:
        yield BuildEvent(
            STATUS,
            f"{backend} may send lines shown above again: the stored log is too long "
            "to tell them apart",
        )
        async for event in events:
            yield event
        return
    held = []
    comparing = True
    async for event in events:
        if comparing and event.phase == LOG:
            if event.message == stored[len(held)]:
                held.append(event)
                if len(held) == len(stored):
                    comparing = False
                    yield BuildEvent(
                        STATUS,
                        f"{backend} sent the {len(held)} log lines above again (it follows "
                        "its build from its start); they are not repeated",
                    )
                continue
            comparing = False
            yield BuildEvent(STATUS, f"{backend} runs the build again: its log starts over here")
            for line in held:
                yield line
        elif comparing and event.final:
            comparing = False
            if held:
                yield BuildEvent(
                    STATUS,
                    f"{backend} sent {len(held)} of the {len(stored)} log lines above again, "
                    "then ended; lines it printed while the service was not running are "
                    "not in this log",
                )
            else:
                yield BuildEvent(
                    STATUS,
                    f"{backend}'s build ended while the service was not running: lines it "
                    "printed after those above are not in this log",
                )
        yield event
