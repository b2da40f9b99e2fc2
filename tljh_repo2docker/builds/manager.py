"""The build queue, live log fan-out, persistence and recovery.

This is the one place that runs builds, whatever the backend. Handlers call
:meth:`BuildManager.submit`, :meth:`cancel` and :meth:`subscribe`; they never
run a build themselves. Data flows one way: backend events -> this manager ->
the database and the SSE subscribers.

Stored first, then sent
-----------------------
Every event gets its id here, and live subscribers receive it only once the
database holds it (with, for a log line, the backend's ``cursor`` just after
that line, in the same transaction). So an event id a client has seen is
always stored with that very event, whatever the moment the service dies
(SIGKILL included): after the restart, the stored log, its last event id and
the stored cursor agree, the backend goes on right after the cursor
(:meth:`Builder.attach`), and a client that comes back with ``Last-Event-ID``
gets the next event, never a different one under an id it saw, nor a line it
saw under a new id. What a kill loses is only what no client was sent: the
events not yet stored, which the backend reads again after the cursor.

The price is that a line reaches clients after its write: the writer starts
as soon as something waits, and at most every ``flush_interval`` seconds, so
with a local database a line is sent a few milliseconds after it arrived,
and lines that come fast are written (and sent) in batches.
"""

import asyncio
import collections
import contextlib
import time

from traitlets import Any, Float, Instance, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from ..db import store
from ..db.errors import database_unavailable
from .adoption import adopt_images
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


class BuildLog:
    """The live log of one build: recent events in memory and their subscribers.

    Events are ``(event_id, phase, message)``. :meth:`add` gives the next id
    and keeps the event in memory; only :meth:`publish`, called once events
    are stored, hands them to subscribers (see the module's docstring).
    """

    def __init__(self, uid, next_id, head, tail):
        self.uid = uid
        self.next_id = next_id
        self.head = head
        self.tail = tail
        self.head_events = []
        self.tail_events = collections.deque(maxlen=tail)
        self.subscribers = set()
        # Events up to this id are in the database (and were sent). The rest
        # wait in memory, bounded like the log itself (see ``unstored``).
        self.stored_id = next_id - 1
        # Whether the last write of this log found the database unavailable.
        self.waiting_for_database = False
        # Lines read from the backend so far, and the cursor after the last
        # one: stored with the events that hold them.
        self.source_lines = 0
        self.source_cursor = None
        self.done = False
        # Set when an event waits to be written; the flusher waits for it.
        self.pending = asyncio.Event()
        # One write of this log at a time, in order: the stored last event id
        # and line count must never go back (the periodic flush and the final
        # one can overlap).
        self.flush_lock = asyncio.Lock()

    def add(self, phase, message):
        event = (self.next_id, phase, message)
        self.next_id += 1
        if len(self.head_events) < self.head:
            self.head_events.append(event)
        else:
            self.tail_events.append(event)
        self.pending.set()
        return event

    def publish(self, events):
        """Hand stored events to the subscribers (id None: a notice, never stored)."""
        for queue in self.subscribers:
            for event in events:
                queue.put_nowait(event)

    def since(self, after):
        """Stored events in memory with an id above ``after``, with a marker where lines were dropped."""
        events = [e for e in self.head_events if after < e[0] <= self.stored_id]
        tail = [e for e in self.tail_events if after < e[0] <= self.stored_id]
        if tail:
            last_head = self.head_events[-1][0] if self.head_events else 0
            gap_from = max(after, last_head) + 1
            if tail[0][0] > gap_from:
                events.append((None, LOG, omitted_marker(tail[0][0] - gap_from)))
        return events + tail

    def unstored(self):
        """Events in memory not yet written to the database, oldest first.

        While the database cannot be written, lines that leave the middle of
        a long log are dropped here as the database would drop them: what
        waits is never more than ``head + tail`` events, and readers of the
        stored log see the usual "lines omitted" marker.
        """
        tail = []
        for event in reversed(self.tail_events):
            if event[0] <= self.stored_id:
                break
            tail.append(event)
        tail.reverse()
        if self.head_events and self.head_events[-1][0] > self.stored_id:
            return [e for e in self.head_events if e[0] > self.stored_id] + tail
        return tail


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


def omitted_marker(count):
    return f"... {count} log lines omitted ..."


#: Sent (without an id, and not stored) to live clients when the log cannot
#: be written: lines are sent once stored, so they wait.
DATABASE_AWAY_NOTICE = (
    "the database is unavailable: the build goes on, and its log continues here once it is back"
)


class BuildManager(LoggingConfigurable):
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
        self._logs = {}  # uid -> BuildLog
        self._flushers = {}  # uid -> asyncio.Task
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
        return sum(len(log.subscribers) for log in self._logs.values())

    def is_active(self, uid):
        return uid in self._queue or uid in self._running

    async def submit(self, env, request: BuildRequest):
        """Queue a build of ``env`` (already stored with status queued)."""
        request.timeline = self._timelines[env.uid] = Timeline()
        log = self._open_log(env.uid, env.last_event_id + 1)
        if len(self._owners) > 1000:
            self._owners = {uid: o for uid, o in self._owners.items() if self.is_active(uid)}
        self._owners[env.uid] = getattr(env, "owner", None)
        self._queue[env.uid] = request
        position = len(self._queue)
        log.add(STATUS, f"queued (position {position})")
        # A build that starts at once writes its "queued" with its start
        # (see _run): its task runs before the flusher's.
        self._pump()
        self._ensure_flusher(env.uid)

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

    async def subscribe(self, uid, after=0):
        """Yield ``(event_id, phase, message)`` from ``after`` on, live while the build runs.

        Ends after a final event. For a finished build, replays the stored log.
        Only stored events are yielded (see the module's docstring); events
        with id None are markers ("lines omitted") or notices for live clients.
        """
        ended = await self.ended_log(uid, after)
        if ended is not None:
            for event in ended:
                yield event
            return
        log = self._logs[uid]
        queue = asyncio.Queue()
        log.subscribers.add(queue)
        try:
            # Everything still in memory covers the stored part too, except
            # for lines dropped from the middle of a very long log.
            first_in_memory = (log.head_events or list(log.tail_events) or [(log.next_id,)])[0][0]
            last = after
            if after + 1 < first_in_memory:
                for event in await self._stored(uid, after):
                    if event[0] is not None and event[0] >= first_in_memory:
                        break
                    if event[0] is not None:
                        last = event[0]
                    yield event
            for event in log.since(last):
                if event[0] is not None:
                    last = event[0]
                yield event
                if event[1] in (BUILT, FAILED, CANCELLED):
                    return
            while True:
                event = await queue.get()
                if event[0] is None:
                    yield event  # a notice for live clients, not part of the log
                    continue
                if event[0] <= last:
                    continue
                if last > after and event[0] > last + 1:
                    # Dropped from the middle while the database was away.
                    yield (None, LOG, omitted_marker(event[0] - last - 1))
                last = event[0]
                yield event
                if event[1] in (BUILT, FAILED, CANCELLED):
                    return
        finally:
            log.subscribers.discard(queue)

    async def ended_log(self, uid, after=0):
        """The stored events after ``after`` of an environment whose build is
        not running in this process (all that :meth:`subscribe` would yield),
        or None while it runs (then only :meth:`subscribe` follows it)."""
        log = self._logs.get(uid)
        if log is None or log.done:
            return await self._stored(uid, after)
        return None

    async def _stored(self, uid, after):
        events = await store.read_log(self.sessions, uid, after)
        result = []
        previous = after
        for event in events:
            if result and event[0] > previous + 1:
                result.append((None, LOG, omitted_marker(event[0] - previous - 1)))
            result.append(event)
            previous = event[0]
        return result

    # -- running builds ------------------------------------------------------

    def _open_log(self, uid, next_id):
        log = BuildLog(uid, next_id, self.log_head_lines, self.log_tail_lines)
        self._logs[uid] = log
        return log

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
        log = self._logs[uid]
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
                await self._until_stored(
                    f"the start of build {uid}", lambda: self._flush(uid, fields)
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

    async def _finish(self, uid, event, release=None):
        """Record the final state of a build, then tell subscribers.

        Waits for the database when it is unavailable: the result is written
        once it is back, never dropped. ``release()``, when given, starts
        once the result is stored and subscribers were sent the final event,
        and goes on in the background (see :meth:`_released`).
        """
        result = f"the result of build {uid}"
        env = await self._until_stored(result, lambda: store.get_environment(self.sessions, uid))
        fields = {"finished": store.now(), "status": event.phase}
        message = event.message
        version = None
        if env is not None and event.phase == BUILT:
            fields.update(
                image_name=event.image_name or env.image_name,
                image_id=event.image_id,
                size=event.size,
                commit=event.commit or env.commit,
                error=None,
            )
            # Every build is a version; the previous image stays, as one
            # (keep_versions decides when it goes).
            version = self._new_version(env, event, fields)
        elif env is not None:
            fields["error"] = event.message
            if env.image_id and env.build_number > 1:
                message = f"{event.message}. The previous image is kept and still used."
                fields["error"] = message
        # The result, the final event and the lines not yet stored are
        # written in one transaction: a kill can never leave a result
        # without the end of its log (the restarted service would not
        # re-attach to a finished build). Subscribers hear of the end only
        # once it is stored (a client that saw it may ask for the
        # environment at once).
        log = self._logs.get(uid)
        stored = []
        if log is not None:
            log.add(event.phase, message)
            # _flush says itself when the database goes away and comes back.
            stored = await self._until_stored(
                None,
                lambda: self._flush(
                    uid, fields if env is not None else None, publish=False, version=version
                ),
            )
        elif env is not None:
            await self._until_stored(
                result,
                lambda: store.update_environment(self.sessions, uid, version=version, **fields),
            )
        self._mark(uid, "result stored")
        if log is not None:
            log.publish(stored)
            self._mark(uid, "final event sent")
        if version is not None:
            self._run_hook(self._keep_version(uid, fields["image_name"], version))
        if release is not None:
            # Runs from the next turn of the loop, after subscribers had the end.
            self._release_later(uid, release)
        if log is not None:
            log.done = True
        flusher = self._flushers.pop(uid, None)
        if flusher is not None:
            flusher.cancel()
        self._logs.pop(uid, None)
        self.log.info("Build %s finished: %s", uid, event.phase)
        if release is None:
            timeline = self._timelines.pop(uid, None)
            if timeline is not None:
                self.log.debug("Build %s timeline: %s", uid, timeline.summary())

    def _new_version(self, env, event, fields):
        """The fields of the Version a successful build makes (stored with its result).

        Its own reference is only named here; the backend makes it once the
        result is stored (:meth:`_keep_version`), off the build's path. Until
        the next build moves the environment's name, the environment's name
        keeps the image; a kill in between is made good at the next start
        (adoption.py gives a current version its missing reference).
        """
        image_name = fields["image_name"]
        duration = None
        if env.started is not None:
            duration = round((fields["finished"] - env.started).total_seconds(), 3)
        return {
            "number": env.build_number,
            "image_name": self.builder.version_name(image_name, env.build_number),
            "image_id": event.image_id or image_name,
            "commit": fields["commit"],
            "built_at": fields["finished"],
            "size": event.size,
            "duration": duration,
            "built_by": env.requested_by,
            "reason": env.build_reason or "request",
        }

    async def _keep_version(self, uid, image_name, version):
        try:
            await self.builder.keep_version(image_name, version["image_id"], version["number"])
        except Exception as e:
            # The version stays usable for a rollback by its image id while
            # the environment's name keeps the image; the next start tries again.
            self.log.warning("Could not tag build %d of %s: %s", version["number"], uid, e)

    def _ensure_flusher(self, uid):
        if uid not in self._flushers:
            self._flushers[uid] = asyncio.create_task(self._flush_loop(uid))

    async def _flush_loop(self, uid):
        """Write a build's new events as soon as some wait, at most every ``flush_interval``."""
        while True:
            log = self._logs.get(uid)
            if log is None:
                return
            if log.waiting_for_database:
                await asyncio.sleep(self.db_retry_interval)
            else:
                await log.pending.wait()
            try:
                await self._flush(uid)
            except Exception as e:
                if not database_unavailable(e):
                    self.log.exception("Could not store the log of build %s; will retry", uid)
                    await asyncio.sleep(self.db_retry_interval)
            await asyncio.sleep(self.flush_interval)

    async def _flush(self, uid, fields=None, publish=True, version=None):
        """Write the log's new events, then send them to subscribers.

        Raises when the write fails; the events are written (and sent) next
        time. The line count and cursor are read together with the events:
        they describe exactly the lines written. ``fields`` (the result of
        the build) are written in the same transaction. Returns the events
        written; with ``publish=False`` the caller sends them.
        """
        log = self._logs.get(uid)
        if log is None:
            return []
        async with log.flush_lock:
            log.pending.clear()
            events = log.unstored()
            if not events:
                if fields:
                    await store.update_environment(
                        self.sessions, uid, version=version, **fields
                    )
                return []
            try:
                await store.append_log(
                    self.sessions,
                    uid,
                    events,
                    source_lines=log.source_lines,
                    source_cursor=log.source_cursor,
                    head=self.log_head_lines,
                    tail=self.log_tail_lines,
                    fields=fields,
                    version=version,
                )
            except asyncio.CancelledError:
                # The store finishes a write before passing a cancel on.
                log.stored_id = events[-1][0]
                if publish:
                    log.publish(events)
                raise
            except Exception as e:
                log.pending.set()
                if database_unavailable(e) and not log.waiting_for_database:
                    log.waiting_for_database = True
                    self._warn_unavailable(e, f"the log of build {uid}")
                    log.publish([(None, STATUS, DATABASE_AWAY_NOTICE)])
                raise
            log.stored_id = events[-1][0]
            if publish:
                log.publish(events)
            if log.waiting_for_database:
                log.waiting_for_database = False
                self.log.info(
                    "The database is back: stored %d waiting log lines of build %s", len(events), uid
                )
            return events

    async def _until_stored(self, what, write):
        """``await write()`` until the database takes it; other errors are raised.

        ``what`` names what waits, for the log: one warning when the database
        is found unavailable, one line when it is back (``None``: silent).
        """
        warned = False
        while True:
            try:
                result = await write()
            except Exception as e:
                if not database_unavailable(e):
                    raise
                if what and not warned:
                    self._warn_unavailable(e, what)
                    warned = True
                await asyncio.sleep(self.db_retry_interval)
                continue
            if warned:
                self.log.info("The database is back: stored %s", what)
            return result

    def _warn_unavailable(self, exc, what):
        self.log.warning(
            "The database is unavailable (%s): %s waits in memory; retrying every %gs",
            exc.__class__.__name__,
            what,
            self.db_retry_interval,
        )

    # -- start-up and shutdown -------------------------------------------------

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
                if env.uid in self._logs:
                    self._logs[env.uid].source_lines = env.source_lines
                    self._logs[env.uid].add(STATUS, "re-submitted after a service restart")
                continue
            if events is None:
                await self._finish_stale(
                    env, "The build stopped while the service was not running"
                )
                continue
            self.log.info("Re-attaching to build %s", env.uid)
            log = self._open_log(env.uid, env.last_event_id + 1)
            log.source_lines = env.source_lines
            log.source_cursor = env.source_cursor
            log.add(STATUS, "re-attached after a service restart")
            self._ensure_flusher(env.uid)
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
        self._open_log(env.uid, env.last_event_id + 1)
        self._ensure_flusher(env.uid)
        await self._finish(env.uid, BuildEvent(FAILED, reason))

    async def _adopt_images(self):
        await adopt_images(
            self.sessions,
            self.builder,
            self.image_prefix,
            adopt_legacy=bool(getattr(self.parent, "adopt_legacy_images", False)),
        )

    async def close(self):
        """Stop following builds without cancelling them, so a restart re-attaches."""
        self._closing = True
        # Ended builds: let their containers go (a restart would remove them too).
        releasing = list(self._releasing.values())
        if releasing:
            await asyncio.wait(releasing, timeout=30)
        tasks = [*self._running.values(), *self._flushers.values(), *self._hooks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Store (and send) what waits: after the restart, ids go on from there.
        for uid in list(self._logs):
            try:
                await self._flush(uid)
            except Exception as e:
                if not database_unavailable(e):
                    self.log.exception("Could not store the log of build %s", uid)
                    continue
                # Never sent to anyone, and after the stored cursor: a
                # re-attach reads them from the backend again.
                self.log.warning(
                    "The database is unavailable (%s): the last %d log lines of build %s "
                    "are not stored",
                    e.__class__.__name__, len(self._logs[uid].unstored()), uid,
                )
        self._queue.clear()
        self._replays.clear()
