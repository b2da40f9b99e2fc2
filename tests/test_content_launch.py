"""Content pulled at launch, end to end: a real hub, real Docker, the test git server.

The puller runs on the spawner's network (the hub's test network), as the
servers do; the git server of this module listens on that network's gateway
(the address the servers reach the hub by), so the puller reaches it as it
would a git host outside, with no host network. (Builds reach the session's
git server on 127.0.0.1 through ``--builder_network=host``; a server's
network has no such way to the loopback.)
"""

import json
import subprocess
import uuid

import pytest

from .helpers.gitserver import add_commit, make_repo
from .helpers.servers import Files, container, wait_server
from .helpers.utils import HubUser, assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]

NOTEBOOK = json.dumps(
    {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1
) + "\n"


def home_file(user, server, path):
    """The text of ``~/path`` in the running server's container (None: no such file)."""
    info = container(user, server)
    assert info is not None, f"no container for {user}/{server}"
    out = subprocess.run(
        ["docker", "exec", info["Id"], "cat", f"/home/jovyan/{path}"], capture_output=True, text=True
    )
    return out.stdout if out.returncode == 0 else None


async def test_content_is_cloned_then_updated_keeping_the_users_edit(hub, built_env, content_server):
    root, git = content_server
    make_repo(root, "course", {"intro.ipynb": NOTEBOOK, "lesson.md": "line 1\nline 2\n"})
    url = git.url("course")
    name = f"content{uuid.uuid4().hex[:6]}"
    user = await HubUser.login(hub, name)
    files = Files(hub, name)
    try:
        r = await user.api(
            "POST", "api/servers",
            json={"name": "class", "environment": built_env["name"], "content": url},
        )
        assert r.status_code == 202, r.text
        assert r.json()["url"].endswith(f"/user/{name}/class/lab/tree/course")
        assert r.json()["content"] == {
            "repo": url, "ref": "", "dir": "course", "urlpath": "lab/tree/course"
        }
        await wait_server(user, "class")
        # the repository's notebook is in the new server's home, the user's own
        assert home_file(name, "class", "course/intro.ipynb") == NOTEBOOK
        assert await files.read("class", "course/lesson.md") == "line 1\nline 2\n"
        info = container(name, "class")
        assert "JUPYTERHUB_DEFAULT_URL=/lab/tree/course" in info["Config"]["Env"]

        # the user edits the lesson; upstream changes it too and adds a notebook
        await files.write("class", "course/lesson.md", "line 1\nmy answer\n")
        add_commit(root, "course", {"lesson.md": "line 1\nline 2, fixed\n", "week2.ipynb": NOTEBOOK})

        r = await user.api("DELETE", "api/servers/class")
        assert r.status_code == 202
        await wait_server(user, "class", "stopped")
        # launched again by the direct link, with the same content
        r = await user.api(
            "GET", "servers",
            params={"name": "class", "content": url, "urlpath": "lab/tree/course/week2.ipynb"},
        )
        assert r.status_code == 200, r.text
        assert f'data-url="/user/{name}/class/lab/tree/course/week2.ipynb"' in r.text
        await wait_server(user, "class")
        assert await files.read("class", "course/lesson.md") == "line 1\nmy answer\n"
        assert home_file(name, "class", "course/week2.ipynb") == NOTEBOOK
        info = container(name, "class")
        assert "JUPYTERHUB_DEFAULT_URL=/lab/tree/course/week2.ipynb" in info["Config"]["Env"]
        # nothing of the user's went upstream
        log = subprocess.run(
            ["git", "log", "--format=%s", "main"], cwd=root / "course.git", capture_output=True, text=True
        )
        assert log.stdout.split("\n")[:2] == ["Update", "Initial commit"]
    finally:
        await user.api("DELETE", "api/servers/class", params={"remove": "true"})
        await files.close()
        await user.close()


async def test_a_failed_pull_does_not_stop_the_start(hub, built_env, content_server):
    root, git = content_server
    name = f"content{uuid.uuid4().hex[:6]}"
    user = await HubUser.login(hub, name)
    try:
        missing = git.url("no-such-repository")
        r = await user.api(
            "POST", "api/servers",
            json={"name": "gone", "environment": built_env["name"], "content": missing},
        )
        assert r.status_code == 202, r.text
        await wait_server(user, "gone")
        assert home_file(name, "gone", "no-such-repository/README.md") is None
        log = (hub.workdir / "jupyterhub.log").read_text()
        [line] = [l for l in log.splitlines() if "was not pulled" in l and name in l]
        assert missing in line and "git clone failed" in line
    finally:
        await user.api("DELETE", "api/servers/gone", params={"remove": "true"})
        await user.close()


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"content": "https://u:secret@example.org/x.git"}, "content"),
        ({"content": "file:///etc"}, "content"),
        ({"content": "https://example.org/x.git", "content_ref": "--upload-pack=x"}, "content_ref"),
        ({"content": "https://example.org/x.git", "urlpath": "../../hub/admin"}, "urlpath"),
        ({"content": "https://example.org/x.git", "urlpath": "https://evil.example.org/"}, "urlpath"),
    ],
)
async def test_refusals_name_the_field(alice, built_env, fields, field):
    r = await alice.api(
        "POST", "api/servers", json={"name": "refused", "environment": built_env["name"], **fields}
    )
    body = assert_json_error(r, 400, f"{field}:")
    assert "secret" not in body["message"]
    r = await alice.api("GET", "servers", params={"name": "refused", "environment": built_env["name"], **fields})
    assert r.status_code == 400 and f"{field}:" in r.text and "secret" not in r.text
    r = await alice.api("GET", "api/servers")
    assert "refused" not in {s["name"] for s in r.json()["servers"]}


#: A hub whose servers have no home and keep their container when stopped.
NO_HOME_CONFIG = """
c.Repo2DockerSpawner.home_scope = "none"
c.DockerSpawner.remove = False
"""


@pytest.fixture(scope="module")
def no_home_hub(tmp_path_factory, test_images):
    """A hub of its own (own ports, image prefix, database) with ``home_scope = "none"``
    and ``remove = False``, on the same test network as the session's hub (so
    ``content_server``, on that network's gateway, serves its servers too)."""
    from .helpers.fixtures import running_hub

    with running_hub(tmp_path_factory.mktemp("no-home-hub"), extra_config=NO_HOME_CONFIG) as info:
        yield info


async def test_content_is_pulled_into_a_server_with_no_home_and_updated_in_its_kept_container(
    no_home_hub, dockerfile_repo, content_server
):
    hub = no_home_hub
    root, git = content_server
    make_repo(root, "lessons", {"intro.ipynb": NOTEBOOK, "lesson.md": "line 1\nline 2\n"})
    url = git.url("lessons")
    name = f"nohome{uuid.uuid4().hex[:6]}"
    admin = await HubUser.login(hub, "admin")
    user = await HubUser.login(hub, name)
    files = Files(hub, name)
    try:
        env = await admin.create_env({"repo": dockerfile_repo, "name": "no-home-env"})
        env = await admin.wait_env(env["uid"], {"built", "failed"})
        assert env["status"] == "built", env

        # first launch by the direct link, with content
        r = await user.api(
            "GET", "servers", params={"name": "kept", "environment": env["name"], "content": url}
        )
        assert r.status_code == 200, r.text
        await wait_server(user, "kept")
        first = container(name, "kept")
        assert not [m for m in first["Mounts"] if m["Destination"] == "/home/jovyan"]
        assert home_file(name, "kept", "lessons/intro.ipynb") == NOTEBOOK

        # the user edits the lesson in the container; upstream changes it and adds a notebook
        await files.write("kept", "lessons/lesson.md", "line 1\nmy answer\n")
        add_commit(root, "lessons", {"lesson.md": "line 1\nline 2, fixed\n", "week2.ipynb": NOTEBOOK})

        r = await user.api("DELETE", "api/servers/kept")
        assert r.status_code == 202
        await wait_server(user, "kept", "stopped")
        stopped = container(name, "kept")
        assert stopped["Id"] == first["Id"] and not stopped["State"]["Running"]

        # launched again by the direct link: the same container, updated, the edit kept
        r = await user.api("GET", "servers", params={"name": "kept", "content": url})
        assert r.status_code == 200, r.text
        await wait_server(user, "kept")
        assert container(name, "kept")["Id"] == first["Id"]
        assert home_file(name, "kept", "lessons/week2.ipynb") == NOTEBOOK
        assert await files.read("kept", "lessons/lesson.md") == "line 1\nmy answer\n"
        owner = subprocess.run(
            ["docker", "exec", first["Id"], "stat", "-c", "%u", "/home/jovyan/lessons/week2.ipynb"],
            capture_output=True, text=True,
        )
        assert owner.stdout.strip() == "1000", owner
        log = (hub.workdir / "jupyterhub.log").read_text()
        assert not [l for l in log.splitlines() if "was not pulled" in l and name in l]
        pulls = [l for l in log.splitlines() if "Pulling" in l and "it has no home" in l and name in l]
        assert len(pulls) == 2, pulls
    finally:
        await user.api("DELETE", "api/servers/kept", params={"remove": "true"})
        await files.close()
        await user.close()
        await admin.close()
