"""The build queue: running builds, finishing them (versions), and recovery.

This is the one place that runs builds, whatever the backend. Handlers call
:meth:`BuildManager.submit`, :meth:`cancel` and :meth:`subscribe`; they never
run a build themselves. Data flows one way: backend events -> this manager ->
the build logs (:mod:`.buildlog`: stored first, then sent) -> the database
and the SSE subscribers.
"""

import asyncio
import collections
import time

from traitlets import Any, Float, Instance, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from ..db import store
from .base import (
    BUILT,
    CANCELLED,
    FAILED,
    LOG,
    STATUS,
    Builder,
    BuildEvent,
    BuildRequest,
    Timeline,
)
from .buildlog import BuildLogs
from .finishing import FinishingMixin
from .recovery import RecoveryMixin, without_replay


async def _checked_start(check, uid, events, log):
    """The backend's ``events``, unless ``check(uid)`` gives a reason not to
    build: then one failed event with it, and the backend is never asked."""
    try:
        reason = await check(uid)
    except Exception:
        log.exception("Could not check whether build %s may start", uid)
        reason = None
    closer = getattr(events, "aclose", None)
    if reason:
        if closer is not None:
            await closer()
        yield BuildEvent(FAILED, reason)
        return
    try:
        async for event in events:
            yield event
    finally:
        if closer is not None:
            await closer()


async def _drain(events):
    async for _ in events:
        pass



class BuildManager(FinishingMixin, RecoveryMixin, LoggingConfigurable):
    """Runs builds through the configured backend, at most ``max_concurrent_builds`` at a time."""

    max_concurrent_builds = Integer(
        2,
        help="""
        How many builds may run at the same time. Further builds wait in a
        first-in, first-out queue, and their position is shown.
        """,
    ).tag(config=True)

    log_head_lines = Integer(
        2000,
        min=0,
        help="""
        Lines kept from the start of each build log. With ``log_tail_lines``,
        this bounds the stored log: lines in between are dropped and a marker
        says how many.
        """,
    ).tag(config=True)

    log_tail_lines = Integer(
        8000,
        min=1,
        help="Lines kept from the end of each build log (see ``log_head_lines``); at least 1.",
    ).tag(config=True)

    flush_interval = Float(
        0.05,
        min=0,
        help="""
        Shortest time, in seconds, between two writes of one build's new log
        lines to the database. Live clients get a line once it is written
        (so that an event id they saw is always stored, even if the service
        is killed), so this is also the longest a line waits when lines come
        fast; a line after a quiet spell is written at once. Larger values
        mean fewer, bigger writes. Default: 0.05.
        """,
    ).tag(config=True)

    db_retry_interval = Float(
        2.0,
        help="""
        Seconds between attempts to store a build's log, start and result
        while the database is unavailable. Meanwhile builds go on, their log
        waits in memory (at most ``log_head_lines + log_tail_lines`` lines per
        build, the part that would be stored) and their result waits too:
        everything is written, and sent to live clients, once the database is
        back.
        """,
    ).tag(config=True)

    image_prefix = Unicode(
        help="""
        Only images whose names start with this are adopted after a restart:
        another service (or test session) sharing the Docker engine labels its
        images the same way, and adopting them would let this service delete
        them. Default: the application's ``image_prefix``.
        """,
    )

    @default("image_prefix")
    def _default_image_prefix(self):
        return getattr(self.parent, "image_prefix", "") or ""

    builder = Instance(Builder)
    sessions = Any(help="The database's async_sessionmaker.")
    on_started = Any(
        None,
        allow_none=True,
        help="Optional callback(uid) when a build leaves the queue and starts; used for metrics.",
    )
    on_finished = Any(
        None,
        allow_none=True,
        help="Optional callback(uid, phase, seconds) after each build; used for metrics.",
    )

    on_built = Any(
        None,
        allow_none=True,
        help="""Optional coroutine function(uid), run as a task after a build is
        stored as built; the service removes old versions with it (keep_versions).""",
    )
    start_check = Any(
        None,
        allow_none=True,
        help="""Optional coroutine function(uid) -> reason or None, awaited when a
        queued build starts: a reason fails the build with it, before the backend
        is asked (the service refuses builds under min_free_disk).""",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._hooks = set()  # on_built tasks still running
        self._queue = collections.OrderedDict()  # uid -> BuildRequest, waiting
        self._owners = {}  # uid -> owner of a queued or running build (fairness)
        self._last_start = {}  # owner -> number of the last build of theirs started
        self._starts = 0
        self._running = {}  # uid -> asyncio.Task
        # The builds' logs in memory, their subscribers and their writers.
        self.build_logs = BuildLogs(self)
        # uid -> (stored log lines, whether complete), for re-submitted builds
        self._replays = {}
        self._closing = False
        # uid -> Timeline of a build submitted by this process (debug log).
        self._timelines = {}
        # uid -> asyncio.Task removing what the backend holds of an ended
        # build (its container), after its final event was sent.
        self._releasing = {}

    # -- what handlers ask -------------------------------------------------

    def position(self, uid):
        """1-based place in the queue, or None when not queued."""
        for index, queued_uid in enumerate(self._queue, 1):
            if queued_uid == uid:
                return index
        return None

    def positions(self):
        return {uid: index for index, uid in enumerate(self._queue, 1)}

    @property
    def running_count(self):
        return len(self._running)

    @property
    def queued_count(self):
        return len(self._queue)

    @property
    def subscriber_count(self):
        return self.build_logs.subscriber_count

    def is_active(self, uid):
        return uid in self._queue or uid in self._running

    async def submit(self, env, request: BuildRequest):
        """Queue a build of ``env`` (already stored with status queued)."""
        request.timeline = self._timelines[env.uid] = Timeline()
        log = self.build_logs.open(env.uid, env.last_event_id + 1)
        if len(self._owners) > 1000:
            self._owners = {uid: o for uid, o in self._owners.items() if self.is_active(uid)}
        self._owners[env.uid] = getattr(env, "owner", None)
        self._queue[env.uid] = request
        position = len(self._queue)
        log.add(STATUS, f"queued (position {position})")
        # A build that starts at once writes its "queued" with its start
        # (see _run): its task runs before the flusher's.
        self._pump()
        self.build_logs.ensure_flusher(env.uid)

    async def cancel(self, uid):
        """Cancel a queued or running build. Returns True if there was one."""
        if uid in self._queue:
            del self._queue[uid]
            self._replays.pop(uid, None)
            await self._finish(uid, BuildEvent(CANCELLED, "Build cancelled before it started"))
            return True
        task = self._running.get(uid)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            return True
        return False

    def subscribe(self, uid, after=0):
        """``(event_id, phase, message)`` from ``after`` on (an async iterator), live while it runs.

        Ends after a final event. For a finished build, replays the stored log.
        Only stored events are yielded (see :mod:`.buildlog`); events with id
        None are markers ("lines omitted") or notices for live clients.
        """
        return self.build_logs.subscribe(uid, after)

    async def ended_log(self, uid, after=0):
        """The stored events after ``after`` of an environment whose build is
        not running in this process (all that :meth:`subscribe` would yield),
        or None while it runs (then only :meth:`subscribe` follows it)."""
        return await self.build_logs.ended(uid, after)

    # -- running builds ------------------------------------------------------

    def _next_queued(self):
        """The queued build to start next, round robin over owners: of the
        owners with the fewest builds running, the one whose last build
        started longest ago (or never), and their oldest build. So one
        user's queued builds cannot keep others' waiting (admins' builds,
        with no owner known, count as one more owner)."""
        running = collections.Counter(self._owners.get(uid) for uid in self._running)
        best = None
        for order, uid in enumerate(self._queue):
            owner = self._owners.get(uid)
            rank = (running[owner], self._last_start.get(owner, -1), order)
            if best is None or rank < best[0]:
                best = (rank, uid)
        return best[1]

    def _pump(self):
        """Start queued builds while there is room."""
        if self._closing:
            return
        # A build whose container is still being removed keeps its place:
        # never more than max_concurrent_builds build containers at once.
        while (
            self._queue
            and len(self._running) + len(self._releasing) < self.max_concurrent_builds
        ):
            uid = self._next_queued()
            request = self._queue.pop(uid)
            request.mark("left the queue")
            self._starts += 1
            self._last_start[self._owners.get(uid)] = self._starts
            events = self.builder.build(request)
            if self.start_check is not None:
                events = _checked_start(self.start_check, uid, events, self.log)
            replay = self._replays.pop(uid, None)
            if replay is not None:
                events = without_replay(events, *replay, self.builder.display_name)
            self._running[uid] = asyncio.create_task(self._run(uid, events))
            if self.on_started is not None:
                self.on_started(uid)

    def _mark(self, uid, point):
        timeline = self._timelines.get(uid)
        if timeline is not None:
            timeline.mark(point)

    async def _run(self, uid, events, resumed=False):
        started = time.monotonic()
        log = self.build_logs[uid]
        final = None
        # The backend's own final event. The backend goes on after it only
        # once the result is stored (see _finish's ``release``).
        reported = None
        try:
            if not resumed:
                # The previous build of this environment may still be letting go.
                await self._released(uid)
                # With the events that wait (its "queued"), in one transaction
                # and under the log's lock: two writers at once would make
                # SQLite's second one sleep until the first is done.
                fields = {"status": store.BUILDING, "started": store.now()}
                await self.build_logs.until_stored(
                    f"the start of build {uid}", lambda: self.build_logs.flush(uid, fields)
                )
                self._mark(uid, "building stored")
                log.add(STATUS, "building")
            async for event in events:
                if event.phase == LOG:
                    self._mark(uid, "first log line")
                    log.source_lines += 1
                    if event.cursor is not None:
                        log.source_cursor = event.cursor
                    log.add(LOG, event.message)
                elif event.phase == STATUS:
                    log.add(STATUS, event.message)
                elif event.final:
                    self._mark(uid, "backend's result")
                    final = reported = event
                    break
            if final is None:
                final = BuildEvent(FAILED, "The build ended without a result")
        except asyncio.CancelledError:
            if self._closing:
                # Shutting down: leave the build running so that the next
                # start re-attaches to it.
                raise
            final = BuildEvent(CANCELLED, "Build cancelled")
            try:
                note = await self.builder.cancel(uid)
            except Exception:
                self.log.exception("Could not stop build %s", uid)
            else:
                if note:
                    log.add(STATUS, note)
        except Exception as e:
            self.log.exception("Build %s crashed", uid)
            final = BuildEvent(FAILED, f"The build failed unexpectedly: {e.__class__.__name__}")
        finally:
            if reported is None:
                await self._close_events(events)

        async def release():
            # Let the backend run to its end: the Docker backend removes the
            # build container only now, so that a kill before the result is
            # stored still finds it, re-attaches and reports the same result.
            # It runs after the final event is sent (removing a container
            # takes Docker 20-100 ms that nobody needs to wait for); a new
            # build of the same environment waits for it (_released).
            try:
                await asyncio.wait_for(_drain(events), 60)
            except Exception as e:
                self.log.warning("Build %s: the backend did not end cleanly: %s", uid, e)
            finally:
                await self._close_events(events)

        try:
            await self._finish(uid, final, release if reported is not None else None)
        finally:
            self._running.pop(uid, None)
            if self.on_finished is not None:
                self.on_finished(uid, final.phase, time.monotonic() - started)
            if final.phase == BUILT and self.on_built is not None and not self._closing:
                self._run_hook(self.on_built(uid))
            self._pump()

    def _run_hook(self, coro):
        task = asyncio.create_task(coro)
        self._hooks.add(task)
        task.add_done_callback(self._hook_done)

    def _hook_done(self, task):
        self._hooks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("After a build: %r", task.exception())

    async def _released(self, uid):
        """Wait until the backend let go of the previous build of ``uid``, if it still holds it."""
        task = self._releasing.get(uid)
        if task is not None:
            await asyncio.shield(task)

    def _release_later(self, uid, release):
        # This build's timeline: a new build of the same uid may start meanwhile.
        timeline = self._timelines.pop(uid, None)

        async def run():
            try:
                await release()
                if timeline is not None:
                    timeline.mark("backend released")
            finally:
                if self._releasing.get(uid) is task:
                    del self._releasing[uid]
                if timeline is not None:
                    self.log.debug("Build %s timeline: %s", uid, timeline.summary())
                self._pump()

        task = self._releasing[uid] = asyncio.ensure_future(run())
        return task

    async def _close_events(self, events):
        """Stop following a backend's events (never while shutting down: the build goes on)."""
        closer = getattr(events, "aclose", None)
        if closer is not None and not self._closing:
            try:
                await asyncio.shield(closer())
            except BaseException:
                pass

    # -- shutdown ------------------------------------------------------------

    async def close(self):
        """Stop following builds without cancelling them, so a restart re-attaches."""
        self._closing = True
        # Ended builds: let their containers go (a restart would remove them too).
        releasing = list(self._releasing.values())
        if releasing:
            await asyncio.wait(releasing, timeout=30)
        tasks = [*self._running.values(), *self.build_logs.flushers(), *self._hooks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Store (and send) what waits: after the restart, ids go on from there.
        await self.build_logs.store_waiting()
        self._queue.clear()
        self._replays.clear()
