"""Which pushes change what repo2docker builds (service/rebuild_rules.py), and
the git that tells which files a push changed (service/remote_git.py), on
real repositories of the test git server."""

import logging

import pytest

from tests.helpers.gitserver import add_commit, head_commit, make_repo
from tljh_repo2docker.service.rebuild_rules import CONFIG_FILES, changes_environment
from tljh_repo2docker.service.remote_git import RemoteGit, RemoteGitError


@pytest.mark.parametrize(
    "paths, folder, changes",
    [
        (["README.md"], False, False),
        (["analysis.ipynb", "data/table.csv"], False, False),
        (["requirements.txt"], False, True),
        (["Dockerfile"], False, True),
        (["environment.yml", "README.md"], False, True),
        (["postBuild"], False, True),
        (["pyproject.toml"], False, True),
        # only the root's files count, not files of that name elsewhere
        (["docs/requirements.txt"], False, False),
        (["sub/Dockerfile"], False, False),
        # with binder/ (or .binder/), only it is read
        (["requirements.txt"], True, False),
        (["binder/requirements.txt"], True, True),
        (["binder/anything-at-all"], True, True),
        ([".binder/postBuild"], True, True),
        # adding or removing the folder changes where repo2docker looks
        (["binder/environment.yml"], False, True),
        ([], False, False),
        (["", "  "], False, False),
    ],
)
def test_changes_environment(paths, folder, changes):
    assert changes_environment(paths, folder) is changes


def test_the_documented_files_are_known():
    for name in ("environment.yml", "requirements.txt", "Pipfile", "Pipfile.lock", "setup.py",
                 "install.R", "DESCRIPTION", "apt.txt", "postBuild", "start", "runtime.txt",
                 "default.nix", "Project.toml", "REQUIRE", "Dockerfile"):
        assert name in CONFIG_FILES


@pytest.fixture
def remote_git(tmp_path):
    git = RemoteGit(log=logging.getLogger("test"), timeout=30, cache_dir=str(tmp_path / "cache"))
    yield git
    git.close()


async def test_changed_files_of_a_real_repository(remote_git, git_server, git_root):
    make_repo(git_root, "rules-real", {"Dockerfile": "FROM scratch\n", "README.md": "hi\n"})
    url = git_server.url("rules-real")
    first = head_commit(git_root, "rules-real")
    assert await remote_git.commit_of(url, "main") == first
    assert await remote_git.commit_of(url, first.upper()) == first  # a full commit id is itself
    second = add_commit(git_root, "rules-real", {"notes.ipynb": "{}\n"})
    paths, folder = await remote_git.changed_files("uid1", url, "main", first, second)
    assert paths == ["notes.ipynb"] and folder is False
    third = add_commit(git_root, "rules-real", {"binder/requirements.txt": "numpy\n"})
    paths, folder = await remote_git.changed_files("uid1", url, "main", second, third)
    assert paths == ["binder/requirements.txt"] and folder is True
    # from the first commit: every change since
    paths, _ = await remote_git.changed_files("uid1", url, "main", first, third)
    assert sorted(paths) == ["binder/requirements.txt", "notes.ipynb"]


async def test_changed_files_says_why_it_cannot_tell(remote_git, git_server, git_root):
    make_repo(git_root, "rules-bad", {"README.md": "hi\n"})
    url = git_server.url("rules-bad")
    first = head_commit(git_root, "rules-bad")
    with pytest.raises(RemoteGitError, match="not both"):
        await remote_git.changed_files("uid2", url, "main", "0" * 40, first)
    with pytest.raises(RemoteGitError, match="known in full"):
        await remote_git.changed_files("uid2", url, "main", "abc1234", first)
    with pytest.raises(RemoteGitError, match="fetch failed"):
        await remote_git.changed_files("uid3", git_server.url("nothere"), "main", first, first)
    with pytest.raises(RemoteGitError, match="no branch or tag"):
        await remote_git.commit_of(url, "nothere")
    with pytest.raises(RemoteGitError):
        await remote_git.changed_files("../escape", url, "main", first, first)
