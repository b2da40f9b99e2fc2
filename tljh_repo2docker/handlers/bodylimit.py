"""A 413 for request bodies over the limit, sent after the body has been read.

Tornado's own limit (``HTTPServer(max_body_size=…)``) answers a bare 400 and
closes the connection while the client is still sending; a proxy in front
(configurable-http-proxy) then fails to send the rest and answers 503 itself,
and the client never learns why. Here the body is read to its end and thrown
away as it comes (nothing over the limit is kept in memory), and the answer is
the API's JSON error. The HTTP server's ``max_body_size`` then only bounds how
much is read and thrown away.
"""

import json
import re

from tornado import httputil

#: Requests that may carry an environment's files or an archive of them.
_FILES_PATH = re.compile(r"/api/environments(/[^/]+)?/?$")
_FILES_METHODS = ("POST", "PATCH")
#: Room for the other fields of such a request.
_SLACK = 64 * 1024


def body_limit(app, method, path):
    """The largest body accepted for ``method`` ``path`` (without its query):
    ``max_body_size``, or for POST and PATCH of ``api/environments`` (which
    take ``files`` and ``archive``) enough for an archive of
    ``max_archive_size`` in base64, or files of ``max_files_size`` as JSON
    (where a byte may take up to six characters)."""
    limit = app.max_body_size
    if method in _FILES_METHODS and _FILES_PATH.search(path.split("?", 1)[0]):
        archive = 4 * -(-int(app.max_archive_size) // 3)
        files = 6 * int(app.max_files_size)
        limit = max(limit, archive + _SLACK, files + _SLACK)
    return limit


class BodyLimit(httputil.HTTPServerConnectionDelegate):
    """Wraps the Tornado application: requests with bodies over ``limit`` bytes get 413.

    ``limit``: bytes, or ``limit(method, path)`` giving them per request.
    """

    def __init__(self, app, limit, log):
        self.app = app
        self.limit = limit
        self.log = log

    def start_request(self, server_conn, request_conn):
        delegate = self.app.start_request(server_conn, request_conn)
        return _LimitedRequest(delegate, request_conn, self.limit, self.log)


    def on_close(self, server_conn):
        self.app.on_close(server_conn)


class _LimitedRequest(httputil.HTTPMessageDelegate):
    def __init__(self, delegate, connection, limit, log):
        self.delegate = delegate
        self.connection = connection
        self.limit = limit
        self.log = log
        self.received = 0
        self.too_large = False
        self.start_line = None

    def headers_received(self, start_line, headers):
        self.start_line = start_line
        if callable(self.limit):
            self.limit = self.limit(start_line.method, start_line.path)
        try:
            declared = int(headers.get("Content-Length", "0"))
        except ValueError:
            declared = 0  # Tornado refuses a bad Content-Length itself
        if declared > self.limit:
            self.too_large = True
            return None
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk):
        if self.too_large:
            return None
        self.received += len(chunk)
        if self.received > self.limit:
            # A chunked body grew past the limit: the application forgets
            # what it was given, as when a client goes away.
            self.too_large = True
            self.delegate.on_connection_close()
            return None
        return self.delegate.data_received(chunk)

    def finish(self):
        if not self.too_large:
            return self.delegate.finish()
        self.log.info(
            "413 %s %s: request body over %d bytes",
            self.start_line.method,
            self.start_line.path.split("?", 1)[0],
            self.limit,
        )
        body = json.dumps(
            {"status": 413, "message": f"The request body is larger than {self.limit} bytes"}
        ).encode()
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 413, "Payload Too Large"),
            httputil.HTTPHeaders(
                {
                    "Content-Type": "application/json; charset=UTF-8",
                    "Content-Length": str(len(body)),
                    "Cache-Control": "no-store",
                }
            ),
            body,
        )
        self.connection.finish()

    def on_connection_close(self):
        if not self.too_large:
            self.delegate.on_connection_close()
