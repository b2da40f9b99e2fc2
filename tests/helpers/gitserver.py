"""A tiny git server for tests: bare repositories over HTTP, with optional basic auth.

Dependency-free (standard library + the ``git`` command). The server is a threaded
``http.server`` on 127.0.0.1 (port 0, so the OS picks a free port) serving a directory
that holds bare repositories ``NAME.git``. HTTP basic auth is optional; every request is
recorded so a test can check that credentials were needed and used.

Two protocols:

* ``smart=True`` (default): git's smart HTTP through ``git http-backend`` (a CGI
  program that ships with git). Supports shallow clones, which repo2docker makes
  whenever no ref (or ``HEAD``) is asked for (``git clone --depth 1``).
* ``smart=False``: git's "dumb" HTTP, plain static files (kept fresh by
  ``git update-server-info``). Full clones and fetches only: ``--depth`` fails with
  "dumb http transport does not support shallow capabilities".

A client reaches a repository at ``server.url(NAME)``; from a Docker container that
needs ``--network host`` (the server listens on loopback only by default).

    root = tmp_path / "repos"
    make_repo(root, "demo", {"Dockerfile": "FROM scratch\\n"})
    with GitServer(root, username="u", password="p") as server:
        url = server.url("demo")            # http://127.0.0.1:PORT/demo.git
        url_with_creds = server.url("demo", with_credentials=True)
        server.records                      # [Request(method, path, status, had_auth, username)]
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import subprocess
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, urlsplit

GIT_IDENTITY = ("-c", "user.name=test", "-c", "user.email=test@example.invalid")
SOURCE_DIR = "_src"  # working repositories live in ROOT/_src/NAME (not served as repos)
# Requests that go to `git http-backend` in smart mode.
_SMART_PATH = re.compile(r"^/.+\.git/(info/refs|git-upload-pack|git-receive-pack)$")


class Request(NamedTuple):
    """One HTTP request the server answered."""

    method: str
    path: str  # the request target, query string included
    status: int
    had_auth: bool  # an Authorization header was sent
    username: str | None  # the basic-auth user name sent, if any


# ---------------------------------------------------------------- git helpers


def _git(*args: str, cwd: Path | None = None) -> str:
    env = dict(os.environ)
    # Independent of the user's configuration and of any terminal.
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
    )
    result = subprocess.run(
        ["git", *GIT_IDENTITY, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"git {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    return result.stdout.strip()


def _write_files(work: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def _work_dir(root: Path, name: str) -> Path:
    return Path(root) / SOURCE_DIR / name


def _bare_dir(root: Path, name: str) -> Path:
    return Path(root) / f"{name}.git"


def make_repo(
    root: Path,
    name: str,
    files: dict[str, str | bytes],
    branch: str = "main",
    message: str = "Initial commit",
) -> Path:
    """Create a repository with one commit and its bare copy ``ROOT/NAME.git``.

    The working repository is kept in ``ROOT/_src/NAME`` for later commits
    (see :func:`add_commit`). Returns the path of the bare repository.
    """
    root = Path(root)
    work = _work_dir(root, name)
    bare = _bare_dir(root, name)
    if work.exists() or bare.exists():
        raise FileExistsError(f"repository {name!r} already exists under {root}")
    work.mkdir(parents=True)
    _git("init", "--quiet", "--initial-branch", branch, cwd=work)
    _write_files(work, files)
    _git("add", "--all", cwd=work)
    _git("commit", "--quiet", "--message", message, cwd=work)
    _git("clone", "--quiet", "--bare", str(work), str(bare))
    # A dumb-HTTP client reads info/refs and objects/info/packs, which only
    # update-server-info writes.
    _git("update-server-info", cwd=bare)
    _git("remote", "add", "served", str(bare), cwd=work)
    return bare


def add_commit(
    root: Path,
    name: str,
    files: dict[str, str | bytes],
    message: str = "Update",
) -> str:
    """Commit ``files`` (added or changed) to repository ``name`` and publish it.

    Returns the new commit's sha.
    """
    work = _work_dir(root, name)
    bare = _bare_dir(root, name)
    _write_files(work, files)
    _git("add", "--all", cwd=work)
    _git("commit", "--quiet", "--allow-empty", "--message", message, cwd=work)
    branch = _git("symbolic-ref", "--short", "HEAD", cwd=work)
    _git("push", "--quiet", "served", f"HEAD:refs/heads/{branch}", cwd=work)
    _git("update-server-info", cwd=bare)
    return _git("rev-parse", "HEAD", cwd=work)


def head_commit(root: Path, name: str, ref: str = "HEAD") -> str:
    """The sha that ``ref`` (default: HEAD) points to in the served bare repository."""
    return _git("rev-parse", ref, cwd=_bare_dir(root, name))


# ---------------------------------------------------------------- HTTP server


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def _credentials(self) -> tuple[bool, str | None, str | None]:
        header = self.headers.get("Authorization")
        if not header:
            return False, None, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return True, None, None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return True, None, None
        user, sep, password = decoded.partition(":")
        return True, user, (password if sep else None)

    def _handle(self, method: str) -> None:
        had_auth, user, password = self._credentials()
        git_server = self.server.git_server
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        try:
            if git_server.requires_auth and (
                user != git_server.username or password != git_server.password
            ):
                status = HTTPStatus.UNAUTHORIZED
                body = b"authentication required\n"
                self.send_response(status)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)
                return
            self._status = HTTPStatus.OK
            if git_server.smart and _SMART_PATH.match(urlsplit(self.path).path):
                self._run_backend(method, user if had_auth else None)
            elif method == "POST":
                self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)
            elif method == "HEAD":
                super().do_HEAD()
            else:
                super().do_GET()
            status = self._status
        finally:
            git_server._record(Request(method, self.path, int(status), had_auth, user))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer lines up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _run_backend(self, method: str, user: str | None) -> None:
        """Answer through `git http-backend` (CGI)."""
        split = urlsplit(self.path)
        body = self._read_body() if method == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.git_server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": self.request_version,
            "REQUEST_METHOD": method,
            "PATH_INFO": split.path,
            "QUERY_STRING": split.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if user:
            env["REMOTE_USER"] = user
        for key, value in self.headers.items():
            name = key.upper().replace("-", "_")
            if name not in ("CONTENT_TYPE", "CONTENT_LENGTH", "AUTHORIZATION"):
                env[f"HTTP_{name}"] = value  # e.g. Git-Protocol, Content-Encoding
        result = subprocess.run(
            ["git", "-c", "safe.directory=*", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
        )
        head, sep, payload = result.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = result.stdout.partition(b"\n\n")
        if result.returncode != 0 and not sep:
            self.send_error(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                explain=result.stderr.decode("utf-8", "replace")[-500:],
            )
            return
        status, reason, headers = 200, None, []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            elif key:
                headers.append((key.strip(), value.strip()))
        self.send_response(status, reason or None)
        for key, value in headers:
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def send_response(self, code, message=None):  # records the status sent
        self._status = code
        super().send_response(code, message)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def end_headers(self) -> None:
        # Never let a proxy or git cache what changes between commits.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.server.git_server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    git_server: GitServer


class GitServer:
    """Serve the bare repositories under ``root`` over HTTP on ``host``.

    ``smart=True`` (default) answers git's smart protocol through ``git http-backend``
    (shallow clones work); ``smart=False`` serves only the dumb protocol's static files.

    With ``username`` and ``password`` set, every request needs HTTP basic auth
    with exactly those credentials (otherwise: 401 and ``WWW-Authenticate``).
    """

    def __init__(
        self,
        root: Path,
        username: str | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        smart: bool = True,
        verbose: bool = False,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.root = Path(root)
        self.username = username
        self.password = password
        self.host = host
        self.smart = smart
        self.verbose = verbose
        self.port: int | None = None
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._records: list[Request] = []

    @property
    def requires_auth(self) -> bool:
        return self.username is not None

    # -- lifecycle

    def start(self) -> GitServer:
        if self._httpd is not None:
            return self
        handler = partial(_Handler, directory=str(self.root))
        httpd = _Server((self.host, 0), handler)
        httpd.git_server = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"gitserver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("GitServer is not started")
        return f"http://{self.host}:{self.port}"

    def url(self, repo_name: str, with_credentials: bool = False) -> str:
        """``http://HOST:PORT/NAME.git``; with the credentials in it if asked."""
        if repo_name.endswith(".git"):
            repo_name = repo_name[: -len(".git")]
        if with_credentials and self.requires_auth:
            creds = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
            return f"http://{creds}{self.host}:{self.port}/{repo_name}.git"
        return f"{self.base_url}/{repo_name}.git"

    # -- what happened

    def _record(self, request: Request) -> None:
        with self._lock:
            self._records.append(request)

    @property
    def records(self) -> list[Request]:
        """Every request answered: method, path, status, had_auth, username."""
        with self._lock:
            return list(self._records)

    @property
    def requests(self) -> list[tuple[str, int]]:
        """Every request answered, as ``(path, status)``."""
        return [(r.path, r.status) for r in self.records]

    def requests_for(self, repo_name: str) -> list[Request]:
        """The records of requests under ``/NAME.git/``."""
        prefix = f"/{repo_name.removesuffix('.git')}.git/"
        return [r for r in self.records if urlsplit(r.path).path.startswith(prefix)]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
