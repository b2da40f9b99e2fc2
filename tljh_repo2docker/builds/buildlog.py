"""The build logs: kept in memory while builds run, stored, and sent to live clients.

:class:`BuildLogs` holds the log of every build this process runs (one
:class:`BuildLog` each), the subscribers that follow them, and the task that
writes each one to the database; :class:`~.manager.BuildManager` adds the
builds' events and delegates reading and storing to it.

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

from ..db import store
from ..db.errors import database_unavailable
from .base import BUILT, CANCELLED, FAILED, LOG, STATUS


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


def omitted_marker(count):
    """The line that stands for ``count`` lines dropped from the middle of a log."""
    return f"... {count} log lines omitted ..."


#: Sent (without an id, and not stored) to live clients when the log cannot
#: be written: lines are sent once stored, so they wait.
DATABASE_AWAY_NOTICE = (
    "the database is unavailable: the build goes on, and its log continues here once it is back"
)


class BuildLogs:
    """The logs of the builds this process runs, their subscribers and their writers.

    One per :class:`~.manager.BuildManager`, whose settings it reads each
    time (``sessions``, ``log_head_lines``, ``log_tail_lines``,
    ``flush_interval``, ``db_retry_interval``: they stay the manager's,
    ``c.BuildManager.flush_interval``) and whose logger it uses. The
    manager opens a build's log when the build is queued or found again
    (:meth:`open`, then :meth:`ensure_flusher`), adds the build's events to
    it (:meth:`BuildLog.add`), stores the build's start and result with its
    waiting events (:meth:`flush`, :meth:`until_stored`), and lets the log
    go once the result is stored (:meth:`end`): from then on readers get the
    stored log.
    """

    def __init__(self, owner):
        self._owner = owner
        self._logs = {}  # uid -> BuildLog
        self._flushers = {}  # uid -> asyncio.Task

    @property
    def _logger(self):
        return self._owner.log

    @property
    def subscriber_count(self):
        return sum(len(log.subscribers) for log in self._logs.values())

    def open(self, uid, next_id):
        """Start the log of build ``uid`` in memory; its first event gets ``next_id``."""
        log = BuildLog(uid, next_id, self._owner.log_head_lines, self._owner.log_tail_lines)
        self._logs[uid] = log
        return log

    def __getitem__(self, uid):
        return self._logs[uid]

    def get(self, uid):
        """The log of build ``uid`` while it is in memory, else None."""
        return self._logs.get(uid)

    def end(self, uid):
        """The result of build ``uid`` is stored and sent: its log leaves memory."""
        log = self._logs.get(uid)
        if log is not None:
            log.done = True
        flusher = self._flushers.pop(uid, None)
        if flusher is not None:
            flusher.cancel()
        self._logs.pop(uid, None)

    def flushers(self):
        """The tasks writing logs (cancelled, with the builds' tasks, at shutdown)."""
        return list(self._flushers.values())

    # -- reading -------------------------------------------------------------

    async def subscribe(self, uid, after=0):
        """Yield ``(event_id, phase, message)`` from ``after`` on, live while the build runs.

        Ends after a final event. For a finished build, replays the stored log.
        Only stored events are yielded (see the module's docstring); events
        with id None are markers ("lines omitted") or notices for live clients.
        """
        ended = await self.ended(uid, after)
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

    async def ended(self, uid, after=0):
        """The stored events after ``after`` of an environment whose build is
        not running in this process (all that :meth:`subscribe` would yield),
        or None while it runs (then only :meth:`subscribe` follows it)."""
        log = self._logs.get(uid)
        if log is None or log.done:
            return await self._stored(uid, after)
        return None

    async def _stored(self, uid, after):
        events = await store.read_log(self._owner.sessions, uid, after)
        result = []
        previous = after
        for event in events:
            if result and event[0] > previous + 1:
                result.append((None, LOG, omitted_marker(event[0] - previous - 1)))
            result.append(event)
            previous = event[0]
        return result

    # -- writing -------------------------------------------------------------

    def ensure_flusher(self, uid):
        """Start the task that writes the log of build ``uid``, unless it runs."""
        if uid not in self._flushers:
            self._flushers[uid] = asyncio.create_task(self._flush_loop(uid))

    async def _flush_loop(self, uid):
        """Write a build's new events as soon as some wait, at most every ``flush_interval``."""
        while True:
            log = self._logs.get(uid)
            if log is None:
                return
            if log.waiting_for_database:
                await asyncio.sleep(self._owner.db_retry_interval)
            else:
                await log.pending.wait()
            try:
                await self.flush(uid)
            except Exception as e:
                if not database_unavailable(e):
                    self._logger.exception("Could not store the log of build %s; will retry", uid)
                    await asyncio.sleep(self._owner.db_retry_interval)
            await asyncio.sleep(self._owner.flush_interval)

    async def flush(self, uid, fields=None, publish=True, version=None):
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
                        self._owner.sessions, uid, version=version, **fields
                    )
                return []
            try:
                await store.append_log(
                    self._owner.sessions,
                    uid,
                    events,
                    source_lines=log.source_lines,
                    source_cursor=log.source_cursor,
                    head=self._owner.log_head_lines,
                    tail=self._owner.log_tail_lines,
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
                self._logger.info(
                    "The database is back: stored %d waiting log lines of build %s",
                    len(events),
                    uid,
                )
            return events

    async def until_stored(self, what, write):
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
                await asyncio.sleep(self._owner.db_retry_interval)
                continue
            if warned:
                self._logger.info("The database is back: stored %s", what)
            return result

    def _warn_unavailable(self, exc, what):
        self._logger.warning(
            "The database is unavailable (%s): %s waits in memory; retrying every %gs",
            exc.__class__.__name__,
            what,
            self._owner.db_retry_interval,
        )

    async def store_waiting(self):
        """At shutdown, once the flushers are stopped: store (and send) what waits.

        After the restart, event ids go on from there.
        """
        for uid in list(self._logs):
            try:
                await self.flush(uid)
            except Exception as e:
                if not database_unavailable(e):
                    self._logger.exception("Could not store the log of build %s", uid)
                    continue
                # Never sent to anyone, and after the stored cursor: a
                # re-attach reads them from the backend again.
                self._logger.warning(
                    "The database is unavailable (%s): the last %d log lines of build %s "
                    "are not stored",
                    e.__class__.__name__, len(self._logs[uid].unstored()), uid,
                )
