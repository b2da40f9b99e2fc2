"""Reading a build container's Docker log: its lines, and a cursor after each one.

The cursor is what lets a restarted service (or a build followed again after
the Docker engine came back) go on right after the last line it stored,
without repeating or losing a line: see :class:`LogReader`.
"""

import collections
import datetime
import re


class LogReader:
    """The lines of a build container's Docker log, and where each one ends.

    Fed the items of ``container.log(..., follow=True, timestamps=True)``.
    For a container without a terminal the engine stores each line written
    to stdout or stderr as one message, stamped (to the nanosecond) when the
    engine read it; a line longer than the engine's buffer (16 KiB) becomes
    several messages without a line end but the last, and so does output a
    container leaves without a line end when it exits. aiodocker yields one
    item per message: ``"<RFC 3339 stamp> <text>"``. A line here is the text
    of consecutive messages up to one ending with ``\n``, without it (and a
    ``\r`` before it). Empty lines are lines. Stdout and stderr are read as
    one stream, in the engine's order (aiodocker does not say which stream a
    message came from): a long stdout line would take a stderr line written
    while it was cut in the middle; that happens the same way on every read.

    **Cursor** (stored with each line; see :class:`~.base.BuildEvent`):
    ``"<since> <count>"``, where ``<since>`` is a time stamp in nanoseconds
    since the epoch, a whole second at least ``_CURSOR_MARGIN_NS`` before
    the last message read, and ``<count>`` how many messages read so far are
    stamped at or after ``<since>``. Reading the log again from its start,
    the messages up to the cursor are those stamped before ``<since>`` and
    the first ``<count>`` stamped at or after it. This is exact whatever the
    order of the stamps: the messages read are a prefix of the log, so those
    of them stamped at or after ``<since>`` come first among all the log's
    messages stamped at or after it. Stamps are almost in order (stdout and
    stderr are stamped by two threads of the engine, microseconds apart);
    the margin covers a message stamped before ``<since>`` but stored after
    the last message read. It does not rely on counting the same number of
    lines on every read: when the engine rotated the log (``max-size``) and
    lost its start, the messages around the cursor are still there.

    ``skip_lines`` (without a cursor): lines a service that stored no cursor
    recorded; the first ``skip_lines`` lines are then the old ones.
    """

    def __init__(self, cursor=None, skip_lines=0):
        self._skip_since, self._skip_count = _parse_cursor(cursor)
        self._skip_lines = 0 if self._skip_since is not None else max(skip_lines or 0, 0)
        self._seen_at_or_after = 0  # messages stamped at or after _skip_since
        self._pending = []  # texts of the unfinished line
        self._pending_new = False
        self._lines = 0  # complete lines read, old and new
        self._recent = collections.deque()  # stamps of messages read, newest last
        self._since = None
        self._count = 0
        self._last_stamp = 0
        self.cursor = cursor

    def again(self):
        """A reader for the same log read again from its start, after what this one read."""
        if self.cursor is not None:
            return LogReader(cursor=self.cursor)
        return LogReader(skip_lines=max(self._skip_lines, self._lines))

    def feed(self, item):
        """``[(line, new, cursor)]`` for the lines that the message ``item`` completes.

        ``new`` is False for lines up to the cursor the reader started from.
        """
        stamp, text = self._split(item)
        old = self._is_old(stamp)
        self._read(stamp)
        self._pending.append(text)
        self._pending_new = self._pending_new or not old
        if not text.endswith("\n"):
            return []
        return [self._complete()]

    def finish(self):
        """The unfinished last line, once the log has ended: ``[]`` or ``[(line, new, cursor)]``."""
        if not self._pending:
            return []
        return [self._complete()]

    def _complete(self):
        line = "".join(self._pending)
        line = line.removesuffix("\n").removesuffix("\r")
        new = self._pending_new
        self._pending = []
        self._pending_new = False
        self._lines += 1
        if self._skip_lines and self._lines <= self._skip_lines:
            new = False
        self.cursor = self._make_cursor()
        return line, new, self.cursor

    def _split(self, item):
        head, sep, text = item.partition(" ")
        stamp = _nanoseconds(head) if sep else None
        if stamp is None:
            # Not stamped (cannot happen with timestamps=True): keep the text
            # whole, with the last stamp, so that cursors still only grow.
            return self._last_stamp, item
        self._last_stamp = stamp
        return stamp, text

    def _is_old(self, stamp):
        if self._skip_since is None:
            return False
        if stamp < self._skip_since:
            return True
        self._seen_at_or_after += 1
        return self._seen_at_or_after <= self._skip_count

    def _read(self, stamp):
        self._recent.append(stamp)
        if self._since is not None and stamp >= self._since:
            self._count += 1

    def _make_cursor(self):
        newest = self._recent[-1]
        target = (newest - _CURSOR_MARGIN_NS) // 1_000_000_000 * 1_000_000_000
        if self._since is None or target > self._since:
            # At most once a second of log: count again what is recent.
            self._since = target
            while self._recent and self._recent[0] < target:
                self._recent.popleft()
            self._count = sum(1 for stamp in self._recent if stamp >= target)
        return f"{self._since} {self._count}"


#: How far before the last message read a cursor's ``<since>`` lies (ns).
_CURSOR_MARGIN_NS = 1_000_000_000

_STAMP_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def _nanoseconds(stamp):
    """Nanoseconds since the epoch of a Docker log stamp (RFC 3339), or None."""
    match = _STAMP_RE.match(stamp)
    if not match:
        return None
    seconds, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    whole = int(datetime.datetime.fromisoformat(seconds + zone).timestamp())
    return whole * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def _parse_cursor(cursor):
    """``(since, count)`` of a cursor made by :class:`LogReader`, or ``(None, 0)``."""
    try:
        since, count = (int(part) for part in (cursor or "").split(" "))
    except ValueError:
        return None, 0
    return since, max(count, 0)

