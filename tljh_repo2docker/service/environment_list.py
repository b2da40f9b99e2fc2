"""The encoded answer of ``GET api/environments``, kept up to date per environment.

With 10,000 environments, loading and encoding all of them takes most of a
second, and every build step is a write. So each environment is encoded once
and kept; after a write, only the environments it changed are read and
encoded again (``store.changed_since``), and the answer is the kept pieces
joined. The whole answer is also kept until the next write or queue move, so
a list that nothing changed costs sending it.

The encoded pieces are those of :func:`store.as_dict` with the one-line
``summary`` of the current version (:func:`summaries`: one query for the
environments read, never one per environment), for admins (and an
environment's owner) and for users; ``position`` (the place in the build
queue, admins and owners only) moves without a write, so the environments in
the queue are encoded again at each list.

A user's list keeps the pieces of the environments that exist for them
(:meth:`access.Access.shows`): a check of a few set look-ups per entry, on
what the entry keeps, nothing encoded again. The last answers are kept per
user (``KEPT_BODIES``) until the next write, queue move or change of their
groups.

Compressed answers: with 10,000 environments the answer is about 6 MiB, and
sending it is most of the time of a list that nothing changed; gzip makes it
about an eighth. Compressing it takes about 40 ms, so it is done once per
answer (kept with the plain one, per user), in a thread (zlib lets other
threads run), and until it is ready a client that accepts gzip gets the plain
answer: the first list after a write never waits for the compression.

Build phases: while a build runs, an admin's (or owner's) entry carries
``phase`` ("building", "pulling", "checking", "pushing", ...), the phase of
its last status event (:func:`build_phases`, read from the build logs in
memory, no query). Like ``position`` it moves without a write: it is part of
the key of the kept answers, and only the running builds' entries are encoded
again when it moves.

Each answer has an ``Etag`` made from its key (this process, who it is for,
the store's version, the queue positions): Tornado would otherwise hash all
6 MiB of it at every request, and a client that has it gets a 304.
"""

import asyncio
import collections
import hashlib
import json
import re
import uuid
import zlib

from ..access import Access, Viewer
from ..builds.base import STATUS
from ..db import store
from .packages import summary


class _Entry:
    """One environment: its row and its encoded pieces."""

    __slots__ = ("env", "key", "built", "admin", "user", "position", "phase", "access", "summary")

    def __init__(self, env, position, summary=None):
        self.env = env
        self.key = (env.created, env.id)
        self.built = env.image_id is not None
        self.access = Access(env.owner, env.sharing)
        self.summary = summary
        self.user = json.dumps(store.as_dict(env, admin=False, summary=summary)).encode()
        self.position = position
        self.phase = None
        self.admin = self._encode_admin()

    def _encode_admin(self):
        model = store.as_dict(self.env, position=self.position, admin=True, summary=self.summary)
        if self.phase is not None:
            model["phase"] = self.phase
        return json.dumps(model).encode()

    def admin_piece(self, position, phase=None):
        if phase is not None and self.env.status != store.BUILDING:
            phase = None  # a phase left from before the row's last write
        if position != self.position or phase != self.phase:  # moved without a write
            self.position = position
            self.phase = phase
            self.admin = self._encode_admin()
        return self.admin


class EnvironmentList:
    """The list for one database (one per service)."""

    #: How many users' last answers are kept, and how many bytes in all
    #: (plain and compressed).
    KEPT_BODIES = 256
    KEPT_BYTES = 64 * 1024 * 1024

    def __init__(self, sessions):
        self.sessions = sessions
        self.version = None
        self.entries = {}  # uid -> _Entry
        self.order = []  # uids, oldest first
        self.building = set()  # uids of the environments whose status is building
        self.bodies = collections.OrderedDict()  # viewer (None: admins) -> (key, bytes)
        self.gzipped = {}  # viewer (None: admins) -> (key, gzip bytes), only for kept bodies
        self.kept_bytes = 0
        self._compressing = {}  # viewer -> key being compressed
        # Versions count from 0 in every process: Etags name the process too.
        self._instance = uuid.uuid4().hex[:12]

    async def body(self, positions, viewer=None, *, admin=None, phases=None, builds=None):
        """The encoded ``{"environments": [...]}`` for ``viewer`` (an access.Viewer;
        ``admin=True``/``False``: an admin, or a user who owns nothing and is in no group).
        ``phases``: ``{uid: phase}`` of the running builds; or ``builds`` (the
        BuildManager), to read them from its logs (:func:`build_phases`)."""
        viewer = _viewer(viewer, admin)
        await self._refresh()
        if phases is None:
            phases = build_phases(builds, self.building) if builds is not None else {}
        admin = viewer.admin
        cache_key = _cache_key(viewer)
        owns = (not admin) and any(
            self.entries[uid].access.owner == viewer.name for uid in positions if uid in self.entries
        )
        key = (
            self.version,
            (tuple(positions.items()), tuple(sorted(phases.items()))) if admin or owns else (),
        )
        cached = self.bodies.get(cache_key)
        if cached is not None and cached[0] == key:
            self.bodies.move_to_end(cache_key)
            return cached[1]
        if admin:
            pieces = [
                self.entries[uid].admin_piece(positions.get(uid), phases.get(uid)) for uid in self.order
            ]
        else:
            pieces = []
            name = viewer.name
            for uid in self.order:
                entry = self.entries[uid]
                if entry.access.owner == name:
                    pieces.append(entry.admin_piece(positions.get(uid), phases.get(uid)))
                elif entry.built and entry.access.allows(viewer):
                    pieces.append(entry.user)
        body = _joined(pieces)
        self._forget(cache_key)
        self.bodies[cache_key] = (key, body)
        self.kept_bytes += len(body)
        self._trim()
        return body

    def etag(self, viewer=None, gzipped=False, *, admin=None):
        """The ``Etag`` of the answer last made by :meth:`body` for ``viewer``."""
        cache_key = _cache_key(_viewer(viewer, admin))
        key = self.bodies[cache_key][0]
        digest = hashlib.sha1(repr((self._instance, cache_key, key)).encode()).hexdigest()[:20]
        return f'"{digest}{"-gz" if gzipped else ""}"'

    async def gzip_body(self, positions, viewer=None, *, admin=None, phases=None, builds=None):
        """The same answer gzip-compressed, or None while it is being compressed."""
        viewer = _viewer(viewer, admin)
        body = await self.body(positions, viewer, phases=phases, builds=builds)
        cache_key = _cache_key(viewer)
        key = self.bodies[cache_key][0]
        cached = self.gzipped.get(cache_key)
        if cached is not None and cached[0] == key:
            return cached[1]
        if self._compressing.get(cache_key) != key:
            self._compressing[cache_key] = key
            asyncio.ensure_future(self._compress(cache_key, key, body))
        return None

    async def _compress(self, cache_key, key, body):
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, _gzip, body)
        finally:
            if self._compressing.get(cache_key) == key:
                del self._compressing[cache_key]
        current = self.bodies.get(cache_key)
        if current is not None and current[0] == key:  # still the answer kept for them
            old = self.gzipped.pop(cache_key, None)
            if old is not None:
                self.kept_bytes -= len(old[1])
            self.gzipped[cache_key] = (key, data)
            self.kept_bytes += len(data)
            self._trim()

    def _forget(self, cache_key):
        """Drop the answers kept for ``cache_key`` (plain and compressed)."""
        for kept in (self.bodies, self.gzipped):
            old = kept.pop(cache_key, None)
            if old is not None:
                self.kept_bytes -= len(old[1])

    def _trim(self):
        while len(self.bodies) > 1 and (
            len(self.bodies) > self.KEPT_BODIES or self.kept_bytes > self.KEPT_BYTES
        ):
            self._forget(next(iter(self.bodies)))

    async def _refresh(self):
        # The version is read before the query: a write in between costs a
        # second read next time, never a stale answer.
        current = store.version(self.sessions)
        if self.version == current:
            return
        changed = None if self.version is None else store.changed_since(self.sessions, self.version)
        if changed is None:
            envs = await store.list_environments(self.sessions)
            lines = await summaries(self.sessions)
            self.entries = {env.uid: _Entry(env, None, lines.get(env.uid)) for env in envs}
            self.order = [env.uid for env in envs]
            self.building = {env.uid for env in envs if env.status == store.BUILDING}
        else:
            found = {env.uid: env for env in await store.environments_by_uid(self.sessions, changed)}
            lines = await summaries(self.sessions, found) if found else {}
            moved = removed = False
            for uid in changed:
                old = self.entries.get(uid)
                if uid in found:
                    self.entries[uid] = entry = _Entry(found[uid], None, lines.get(uid))
                    moved = moved or old is None or old.key != entry.key
                elif self.entries.pop(uid, None) is not None:
                    removed = True
            for uid in changed:
                entry = self.entries.get(uid)
                if entry is not None and entry.env.status == store.BUILDING:
                    self.building.add(uid)
                else:
                    self.building.discard(uid)
            # The order (creation time) changes only with what is added or
            # removed; an update in place (a build step, sharing), the most
            # common write, keeps it.
            if moved:
                self.order = sorted(self.entries, key=lambda uid: self.entries[uid].key)
            elif removed:
                self.order = [uid for uid in self.order if uid in self.entries]
        self.version = current


#: The phase a build's status event says it is in (builds' STATUS messages:
#: "building", "pulling <image>", "checking the image: ...", "check: ...",
#: "pushing to <registry>", "BinderHub: <phase>"); other status events (a
#: restart, the engine away) leave the phase as it was.
_PHASES = (
    (re.compile(r"^building\b"), "building"),
    (re.compile(r"^pulling\b"), "pulling"),
    (re.compile(r"^(checking\b|check:)"), "checking"),
    (re.compile(r"^pushing\b"), "pushing"),
)
_BINDERHUB_PHASE = re.compile(r"^BinderHub: ([a-z][a-z ]*)$")


def phase_of(message):
    """The phase a status event's ``message`` names, or None."""
    text = str(message or "")
    for pattern, phase in _PHASES:
        if pattern.match(text):
            return phase
    match = _BINDERHUB_PHASE.match(text)
    return match.group(1) if match else None


def build_phases(builds, uids):
    """``{uid: phase}`` of the builds of ``uids`` that run in this process:
    the phase of the last status event of their log in memory (builds: the
    BuildManager). No query; what has no known phase is left out."""
    logs = getattr(builds, "build_logs", None)
    phases = {}
    if logs is None:
        return phases
    for uid in uids:
        log = logs.get(uid)
        if log is None or log.done:
            continue
        for events in (log.tail_events, log.head_events):
            phase = _last_phase(events)
            if phase is not None:
                phases[uid] = phase
                break
    return phases


def _last_phase(events):
    for _, event_phase, message in reversed(events):
        if event_phase == STATUS:
            phase = phase_of(message)
            if phase is not None:
                return phase
    return None


async def summaries(sessions, uids=None):
    """``{uid: summary}`` of the current versions of environments ``uids``
    (None: all), e.g. ``"Python 3.12 · 143 packages"`` (see
    packages.summary); environments with nothing known are left out. One
    query (per 500 uids)."""
    facts = await store.current_version_facts(sessions, uids)
    lines = {uid: summary(inside, count) for uid, (inside, count) in facts.items()}
    return {uid: line for uid, line in lines.items() if line}


def _joined(pieces):
    """``{"environments": [<pieces>]}``, changing the list ``pieces``: one
    copy of the pieces (with 10,000 environments each copy of the 6 MiB
    answer costs milliseconds)."""
    if not pieces:
        return b'{"environments": []}'
    pieces[0] = b'{"environments": [' + pieces[0]
    pieces[-1] = pieces[-1] + b"]}"
    return b", ".join(pieces)


def _viewer(viewer, admin):
    if viewer is None:
        viewer = bool(admin)
    if isinstance(viewer, bool):  # an admin, or a user of no group who owns nothing
        viewer = Viewer("", admin=viewer)
    return viewer


def _cache_key(viewer):
    return None if viewer.admin else viewer


def _gzip(data):
    # Level 1: a third of level 6's time for nearly the same size on this JSON.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()
