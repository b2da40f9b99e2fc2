"""Build logs as Server-Sent Events."""

import asyncio
import json

from tornado import web
from tornado.iostream import StreamClosedError

from ..access import environment_for
from ..db import store
from .base import APIHandler


class EventStreamHandler(APIHandler):
    """Base of event-stream responses: headers, keep-alives, closed-client handling."""

    keepalive_seconds = 25

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    def write_error(self, status_code, **kwargs):
        # Errors before the stream starts are ordinary JSON errors.
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        super().write_error(status_code, **kwargs)

    def write_event(self, data, event_id=None):
        """Add one event to what the next flush sends."""
        lines = []
        if event_id is not None:
            lines.append(f"id: {event_id}")
        lines.append(f"data: {json.dumps(data)}")
        self.write("\n".join(lines) + "\n\n")

    async def send_event(self, data, event_id=None):
        self.write_event(data, event_id)
        await self.flush()

    async def keepalive(self):
        while True:
            await asyncio.sleep(self.keepalive_seconds)
            try:
                self.write(": keepalive\n\n")
                await self.flush()
            except StreamClosedError:
                return

    def on_connection_close(self):
        task = getattr(self, "_stream_task", None)
        if task is not None:
            task.cancel()


class LogsAPIHandler(EventStreamHandler):
    @web.authenticated
    async def get(self, uid):
        environment_for(
            self.viewer, await store.get_environment(self.sessions, uid), uid,
            manage=True, action="read its build log",
        )
        last = self.request.headers.get("Last-Event-ID") or self.get_argument("last_event_id", "0")
        try:
            after = max(int(last), 0)
        except ValueError:
            raise web.HTTPError(400, "Last-Event-ID must be a number") from None
        ended = await self.builds.ended_log(uid, after)
        if ended is not None:
            # A finished build's log: all of it at once (one write through
            # the proxy instead of one per event).
            for event_id, phase, message in ended:
                self.write_event({"phase": phase, "message": message}, event_id)
            self.finish()
            return
        keepalive = asyncio.ensure_future(self.keepalive())
        self._stream_task = asyncio.current_task()
        try:
            async for event_id, phase, message in self.builds.subscribe(uid, after):
                await self.send_event({"phase": phase, "message": message}, event_id)
        except (StreamClosedError, asyncio.CancelledError):
            return
        finally:
            keepalive.cancel()
        self.finish()


default_handlers = [
    (r"api/environments/([^/]+)/logs", LogsAPIHandler),
]
