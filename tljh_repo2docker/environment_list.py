"""The encoded answer of ``GET api/environments``, kept up to date per environment.

With 10,000 environments, loading and encoding all of them takes most of a
second, and every build step is a write. So each environment is encoded once
and kept; after a write, only the environments it changed are read and
encoded again (``store.changed_since``), and the answer is the kept pieces
joined. The whole answer is also kept until the next write or queue move, so
a list that nothing changed costs sending it.

The encoded pieces are those of :func:`store.as_dict`, for admins and for
users; ``position`` (the place in the build queue, admins only) moves without
a write, so the environments in the queue are encoded again at each list.

Compressed answers: with 10,000 environments the answer is about 6 MiB, and
sending it is most of the time of a list that nothing changed; gzip makes it
about an eighth. Compressing it takes about 40 ms, so it is done once per
answer, in a thread (zlib lets other threads run), and until it is ready a
client that accepts gzip gets the plain answer: the first list after a write
never waits for the compression.

Each answer has an ``Etag`` made from its key (this process, the store's
version, the queue positions): Tornado would otherwise hash all 6 MiB of it
at every request, and a client that has it gets a 304.
"""

import asyncio
import hashlib
import json
import uuid
import zlib

from .db import store


class _Entry:
    """One environment: its row and its encoded pieces."""

    __slots__ = ("env", "key", "built", "admin", "user", "position")

    def __init__(self, env, position):
        self.env = env
        self.key = (env.created, env.id)
        self.built = env.image_id is not None
        self.user = json.dumps(store.as_dict(env, admin=False)).encode()
        self.position = position
        self.admin = self._encode_admin()

    def _encode_admin(self):
        return json.dumps(store.as_dict(self.env, position=self.position, admin=True)).encode()

    def admin_piece(self, position):
        if position != self.position:  # moved in the queue, without a write
            self.position = position
            self.admin = self._encode_admin()
        return self.admin


class EnvironmentList:
    """The list for one database (one per service)."""

    def __init__(self, sessions):
        self.sessions = sessions
        self.version = None
        self.entries = {}  # uid -> _Entry
        self.order = []  # uids, oldest first
        self.bodies = {}  # admin -> (key, bytes)
        self.gzipped = {}  # admin -> (key, gzip bytes)
        self._compressing = {}  # admin -> key being compressed
        # Versions count from 0 in every process: Etags name the process too.
        self._instance = uuid.uuid4().hex[:12]

    async def body(self, positions, admin):
        """The encoded ``{"environments": [...]}`` for an admin or a user."""
        await self._refresh()
        key = (self.version, tuple(positions.items()) if admin else ())
        cached = self.bodies.get(admin)
        if cached is not None and cached[0] == key:
            return cached[1]
        if admin:
            pieces = [self.entries[uid].admin_piece(positions.get(uid)) for uid in self.order]
        else:
            pieces = [self.entries[uid].user for uid in self.order if self.entries[uid].built]
        body = b'{"environments": [' + b", ".join(pieces) + b"]}"
        self.bodies[admin] = (key, body)
        return body

    def etag(self, admin, gzipped=False):
        """The ``Etag`` of the answer last made by :meth:`body` for ``admin``."""
        key = self.bodies[admin][0]
        digest = hashlib.sha1(repr((self._instance, admin, key)).encode()).hexdigest()[:20]
        return f'"{digest}{"-gz" if gzipped else ""}"'

    async def gzip_body(self, positions, admin):
        """The same answer gzip-compressed, or None while it is being compressed."""
        body = await self.body(positions, admin)
        key = self.bodies[admin][0]
        cached = self.gzipped.get(admin)
        if cached is not None and cached[0] == key:
            return cached[1]
        if self._compressing.get(admin) != key:
            self._compressing[admin] = key
            asyncio.ensure_future(self._compress(admin, key, body))
        return None

    async def _compress(self, admin, key, body):
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, _gzip, body)
        finally:
            if self._compressing.get(admin) == key:
                del self._compressing[admin]
        current = self.bodies.get(admin)
        if current is not None and current[0] == key:
            self.gzipped[admin] = (key, data)

    async def _refresh(self):
        # The version is read before the query: a write in between costs a
        # second read next time, never a stale answer.
        current = store.version(self.sessions)
        if self.version == current:
            return
        changed = None if self.version is None else store.changed_since(self.sessions, self.version)
        if changed is None:
            envs = await store.list_environments(self.sessions)
            self.entries = {env.uid: _Entry(env, None) for env in envs}
            self.order = [env.uid for env in envs]
        else:
            found = {env.uid: env for env in await store.environments_by_uid(self.sessions, changed)}
            added = removed = False
            for uid in changed:
                if uid in found:
                    added = added or uid not in self.entries
                    self.entries[uid] = _Entry(found[uid], None)
                elif self.entries.pop(uid, None) is not None:
                    removed = True
            # The order (creation time) changes only with what is added or
            # removed; a status update, the most common write, keeps it.
            if added:
                self.order = sorted(self.entries, key=lambda uid: self.entries[uid].key)
            elif removed:
                self.order = [uid for uid in self.order if uid in self.entries]
        self.version = current


def _gzip(data):
    # Level 1: a third of level 6's time for nearly the same size on this JSON.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()
