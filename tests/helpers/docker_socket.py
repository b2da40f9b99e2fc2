"""A Docker engine that starts answering late: ``SocketForwarder(path)`` is a
unix socket at ``path`` forwarding every connection to the real engine's
socket (``DOCKER_SOCKET``), from the moment it is started.
"""

import asyncio
import threading

DOCKER_SOCKET = "/var/run/docker.sock"


class SocketForwarder:
    """A unix socket at ``path`` that forwards every connection to ``target``:
    a Docker engine that starts answering when this starts."""

    def __init__(self, path, target=DOCKER_SOCKET):
        self.path, self.target = str(path), target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self):
        self.thread.start()

        async def serve():
            self.server = await asyncio.start_unix_server(self._handle, self.path)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def stop(self):
        async def close():
            if self.server is not None:
                self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
