"""Asking a repository, without building it: where a ref is, and which files a push changed.

``git ls-remote`` says which commit a ref is at (the ref poller, and a
user's rebuild, which skips a commit already built). The files changed
between the commit built and a new one (``rebuild_on: "environment"``) come
from a small cache of the service's own: one bare repository per
environment under ``cache_dir``, fetched with no file contents where the
host allows it (``--filter=blob:none``), then ``git diff --name-only``.

git runs with an empty home of its own, no prompts, no credential helper
and only the http(s), git, ssh and file protocols; private repositories
are never asked (their credentials are never stored). Every failure is a
RemoteGitError whose message says why: callers then build, never skip.
"""

import asyncio
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

#: Protocols git may use: never ext:: or other helpers that run commands.
ALLOWED_PROTOCOLS = "http:https:git:ssh:file"
MAX_OUTPUT = 1024 * 1024
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_UID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RemoteGitError(Exception):
    """git did not answer; the message says why (for owners and the log)."""


def git_environment(home):
    """The environment git runs in: no secrets, no prompts; ``home``: an empty directory."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LANG": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
    }


async def _kill(proc):
    """Stop ``proc`` and its process group, and wait for them."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    await proc.wait()


def last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


async def run_git(args, *, env, timeout, cwd=None):
    """``(returncode, stdout, stderr)`` of ``git *args``; RemoteGitError after ``timeout`` seconds."""
    proc = await asyncio.create_subprocess_exec(
        "git", *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        # its own process group: git's helpers (git-remote-http, ssh) hold
        # the pipes too, and are stopped with it
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        await _kill(proc)
        raise RemoteGitError(f"git {args[0]} took longer than {timeout:g}s") from None
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    return proc.returncode, out[:MAX_OUTPUT], err.decode("utf-8", "replace")


def is_full_sha(ref):
    return bool(ref) and bool(_FULL_SHA.match(ref.lower()))


def patterns(ref):
    """The ref names ``git ls-remote`` is asked for, for the environment's ``ref``."""
    if ref == "HEAD":
        return ["HEAD"]
    if ref.startswith("refs/"):
        return [ref, f"{ref}^{{}}"]
    return [f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"]


def resolve(output, ref):
    """The commit ``ref`` is at in ``git ls-remote`` output, or None if it is not there.

    A branch wins over a tag of the same name (as ``git checkout`` does);
    an annotated tag is the commit it points to (its ``^{}`` line).
    """
    found = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if sha and name:
            found[name.strip()] = sha.strip().lower()
    if ref == "HEAD":
        return found.get("HEAD")
    names = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    for name in names:
        if f"{name}^{{}}" in found:
            return found[f"{name}^{{}}"]
        if name in found:
            return found[name]
    return None


class RemoteGit:
    """The service's door to remote repositories for what they say, not what they build.

    ``timeout``: seconds one git command may take; ``cache_dir``: where the
    bare repositories of :meth:`changed_files` are kept (None: a temporary
    directory, removed by :meth:`close`).
    """

    #: How many commits of history a fetch takes at first (a push rarely
    #: moves a ref further); deepened once when the commit built is older.
    DEPTH = 50

    def __init__(self, *, log, timeout=30.0, cache_dir=None):
        self.log = log
        self.timeout = timeout
        self._cache_dir = cache_dir
        self._temporary = None
        self._locks = {}

    def _home(self):
        return str(self._root() / "home")

    def _root(self):
        if self._cache_dir:
            root = Path(self._cache_dir)
        else:
            if self._temporary is None:
                self._temporary = tempfile.mkdtemp(prefix="tljh-r2d-gitcache-")
            root = Path(self._temporary)
        (root / "home").mkdir(parents=True, exist_ok=True)
        return root

    def close(self):
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    async def _git(self, *args, cwd=None):
        code, out, err = await run_git(
            args, env=git_environment(self._home()), timeout=self.timeout, cwd=cwd
        )
        return code, out.decode("utf-8", "replace"), err

    async def commit_of(self, repo, ref):
        """The full commit ``ref`` of ``repo`` is at: the ref itself when it
        is a full commit id, else asked with ``git ls-remote``; RemoteGitError
        when git cannot say (an abbreviated commit id cannot be asked)."""
        if is_full_sha(ref):
            return ref.lower()
        code, out, err = await self._git("ls-remote", "--", repo, *patterns(ref))
        if code != 0:
            message = last_line(err)
            if "terminal prompts disabled" in message or "Authentication failed" in message:
                message = "the repository asks for credentials (it is private?)"
            raise RemoteGitError(f"git ls-remote failed: {message or code}")
        commit = resolve(out, ref)
        if commit is None:
            raise RemoteGitError(f"the repository has no branch or tag {ref!r}")
        return commit

    async def changed_files(self, uid, repo, ref, old, new):
        """``(paths, config_folder_exists)``: the files that differ between
        commits ``old`` and ``new`` of ``repo`` (fetched at ``ref``), and
        whether ``binder/`` or ``.binder/`` exists at ``new``. RemoteGitError
        when it cannot be known."""
        if not _UID.match(uid or ""):
            raise RemoteGitError("not a uid the cache can use")
        if not (is_full_sha(old) and is_full_sha(new)):
            raise RemoteGitError("the commits are not both known in full")
        async with self._locks.setdefault(uid, asyncio.Lock()):
            cwd = await self._cache_of(uid, repo)
            for depth in (self.DEPTH, None):
                if await self._has(cwd, old) and await self._has(cwd, new):
                    break
                await self._fetch(cwd, ref, depth)
            else:
                if not (await self._has(cwd, old) and await self._has(cwd, new)):
                    raise RemoteGitError(
                        f"the commits {old[:12]} and {new[:12]} are not both in {ref!r}"
                    )
            code, out, err = await self._git(
                "diff", "--name-only", "--no-renames", "-z", old, new, cwd=cwd
            )
            if code != 0:
                raise RemoteGitError(f"git diff failed: {last_line(err)}")
            paths = [p for p in out.split("\0") if p]
            code, out, err = await self._git("ls-tree", "--name-only", new, cwd=cwd)
            if code != 0:
                raise RemoteGitError(f"git ls-tree failed: {last_line(err)}")
            top = set(out.splitlines())
            return paths, bool(top & {"binder", ".binder"})

    async def _has(self, cwd, commit):
        code, _, _ = await self._git("cat-file", "-e", f"{commit}^{{commit}}", cwd=cwd)
        return code == 0

    async def _cache_of(self, uid, repo):
        """The bare repository that caches ``uid``'s commits (made on first
        use, ``repo`` as its promisor remote: fetched without file contents)."""
        path = self._root() / "repos" / uid
        cwd = str(path)
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True)
            setup = [
                ("init", "--quiet", "--bare", cwd),
                ("config", "remote.origin.url", repo),
                ("config", "remote.origin.promisor", "true"),
                ("config", "remote.origin.partialclonefilter", "blob:none"),
                ("config", "extensions.partialClone", "origin"),
            ]
            for args in setup:
                code, _, err = await self._git(*args, cwd=cwd if args[0] != "init" else None)
                if code != 0:
                    shutil.rmtree(path, ignore_errors=True)
                    raise RemoteGitError(f"git {args[0]} failed: {last_line(err)}")
        else:
            code, out, _ = await self._git("config", "remote.origin.url", cwd=cwd)
            if code != 0 or out.strip() != repo:
                shutil.rmtree(path, ignore_errors=True)
                return await self._cache_of(uid, repo)
        return cwd

    async def _fetch(self, cwd, ref, depth):
        """Fetch ``ref`` into the cache: ``depth`` commits of it, or all of its history."""
        args = ["fetch", "--quiet", "--no-tags", "--filter=blob:none"]
        if depth:
            args.append(f"--depth={depth}")
        elif (Path(cwd) / "shallow").exists():
            args.append("--unshallow")
        code, _, err = await self._git(*args, "origin", ref, cwd=cwd)
        if code != 0:
            raise RemoteGitError(f"git fetch failed: {last_line(err)}")
