"""A JupyterHub managed service that answers constants: the limit for bench_load.py.

It stands where tljh-repo2docker stands (behind the same proxy, started by
the same hub, checking the same API tokens with HubOAuth, which caches the
hub's answer) and sends the same bytes, but does no work: no database, no
build manager, no encoding.

- ``GET <prefix>api/environments``: the bytes of ``--list-file``;
- ``GET <prefix>api/environments/<uid>/logs``: the bytes of ``--log-file``
  as ``text/event-stream``.

Started by the hub (``c.JupyterHub.services``) with ``--port``; bench_load.py
writes both files from what tljh-repo2docker answered.
"""

import argparse
import asyncio
import os
from pathlib import Path

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web


class ConstantHandler(HubOAuthenticated, web.RequestHandler):
    def initialize(self, body, content_type):
        self.body = body
        self.content_type = content_type

    async def prepare(self):
        # As the service does: ask (or the cache) who the token is, asynchronously.
        user = await self.hub_auth.get_user(self, sync=False)
        if user is None:
            raise web.HTTPError(403)

    def compute_etag(self):
        return None

    async def get(self, *args):
        self.set_header("Content-Type", self.content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.body.read())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--list-file", required=True)
    parser.add_argument("--log-file", required=True)
    args = parser.parse_args()
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/constant/")
    # Read at the first request: bench_load.py writes them once the hub runs.
    list_body = _LazyFile(args.list_file)
    log_body = _LazyFile(args.log_file)
    app = web.Application(
        [
            (
                prefix + "api/environments",
                ConstantHandler,
                {"body": list_body, "content_type": "application/json; charset=UTF-8"},
            ),
            (
                prefix + r"api/environments/([^/]+)/logs",
                ConstantHandler,
                {"body": log_body, "content_type": "text/event-stream; charset=UTF-8"},
            ),
        ],
        cookie_secret=os.urandom(32),
    )

    async def serve():
        app.listen(args.port, address="127.0.0.1")
        await asyncio.Event().wait()

    asyncio.run(serve())


class _LazyFile:
    def __init__(self, path):
        self.path = Path(path)
        self.data = None

    def read(self):
        if self.data is None:
            self.data = self.path.read_bytes()
        return self.data


if __name__ == "__main__":
    main()
