"""The test git server really serves clones, and really enforces its credentials."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

try:
    from gitserver import GitServer, add_commit, head_commit, make_repo
except ImportError:  # tests/ imported as a package
    from tests.helpers.gitserver import GitServer, add_commit, head_commit, make_repo


def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a git client that has no stored credentials and cannot prompt."""
    env = dict(
        os.environ,
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    env.pop("SSH_ASKPASS", None)
    return subprocess.run(
        ["git", "-c", "credential.helper=", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    root = tmp_path / "repos"
    make_repo(root, "demo", {"Dockerfile": "FROM scratch\n", "sub/README.md": "hello\n"})
    return root


@pytest.mark.parametrize("smart", [True, False], ids=["smart", "dumb"])
def test_clone_and_fetch_new_commit(repos: Path, tmp_path: Path, smart: bool) -> None:
    with GitServer(repos, smart=smart) as server:
        url = server.url("demo")
        assert url == f"http://127.0.0.1:{server.port}/demo.git"

        result = git("clone", url, str(tmp_path / "clone"))
        assert result.returncode == 0, result.stderr
        clone = tmp_path / "clone"
        assert (clone / "sub" / "README.md").read_text() == "hello\n"
        assert git("rev-parse", "HEAD", cwd=clone).stdout.strip() == head_commit(repos, "demo")

        sha = add_commit(repos, "demo", {"new.txt": "v2\n"}, "second")
        assert head_commit(repos, "demo") == sha
        result = git("pull", "--ff-only", cwd=clone)
        assert result.returncode == 0, result.stderr
        assert (clone / "new.txt").read_text() == "v2\n"
        assert git("rev-parse", "HEAD", cwd=clone).stdout.strip() == sha

        assert server.requests, "no request was recorded"
        assert all(status == 200 for _, status in server.requests)
        assert all(path.startswith("/demo.git/") for path, _ in server.requests)
        assert not any(r.had_auth for r in server.records)


def test_shallow_clone_needs_smart_protocol(repos: Path, tmp_path: Path) -> None:
    # repo2docker clones with --depth 1 when no ref is asked for.
    with GitServer(repos, smart=True) as server:
        result = git("clone", "--depth", "1", server.url("demo"), str(tmp_path / "a"))
        assert result.returncode == 0, result.stderr
    with GitServer(repos, smart=False) as server:
        result = git("clone", "--depth", "1", server.url("demo"), str(tmp_path / "b"))
        assert result.returncode != 0
        assert "shallow" in result.stderr


def test_auth_required_and_used(repos: Path, tmp_path: Path) -> None:
    with GitServer(repos, username="alice", password="s3cret") as server:
        result = git("clone", server.url("demo"), str(tmp_path / "anon"))
        assert result.returncode != 0
        assert not (tmp_path / "anon" / "Dockerfile").exists()
        assert server.records
        assert all(r.status == 401 and not r.had_auth for r in server.records)

        server.clear()
        url = server.url("demo", with_credentials=True)
        assert url.startswith(f"http://alice:s3cret@127.0.0.1:{server.port}/")
        result = git("clone", url, str(tmp_path / "authed"))
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "authed" / "Dockerfile").read_text() == "FROM scratch\n"
        ok = [r for r in server.records if r.status == 200]
        assert ok, server.records
        assert all(r.had_auth and r.username == "alice" for r in ok)
        assert server.requests_for("demo") == server.records


@pytest.mark.parametrize("smart", [True, False], ids=["smart", "dumb"])
def test_wrong_password_refused(repos: Path, tmp_path: Path, smart: bool) -> None:
    with GitServer(repos, username="alice", password="s3cret", smart=smart) as server:
        url = f"http://alice:wrong@127.0.0.1:{server.port}/demo.git"
        result = git("clone", url, str(tmp_path / "clone"))
        assert result.returncode != 0
        assert "Authentication failed" in result.stderr
        assert any(r.had_auth and r.username == "alice" for r in server.records)
        assert all(r.status == 401 for r in server.records)
