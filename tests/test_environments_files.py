"""Environments built from files written in the page and from uploaded archives (issue 23).

Everything is real: JupyterHub and its proxy, this service, the Docker
engine and repo2docker in its build container. The files are a
``Dockerfile`` on the single-user test image (offline: nothing to
download), handed to repo2docker as a local directory: no git server, no
network fetch.
"""

import base64
import io
import json
import tarfile
import zipfile

import pytest

from tests.helpers.buildutils import (
    build_containers,
    docker,
    dockerfile,
    image_info,
    token,
    wait_building,
)
from tests.helpers.fixtures import add
from tests.helpers.utils import assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def b64_tar_gz(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return base64.b64encode(buffer.getvalue()).decode()


def b64_zip(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return base64.b64encode(buffer.getvalue()).decode()


async def versions_of(user, uid):
    r = await user.api("GET", f"api/environments/{uid}/versions")
    assert r.status_code == 200, r.text
    return r.json()["versions"]


async def test_files_built_patched_diffed_rolled_back(admin, envs):
    first = dockerfile("RUN echo files-v1 > /tmp/version && sleep 3")
    env = await add(
        admin, envs, {"files": {"Dockerfile": first, "notes/README.md": "v1\n"}, "name": f"Files {token()}"}
    )
    uid = env["uid"]
    assert env["source"] == "files"
    assert env["repo"] == "" and env["ref"] == ""
    assert env["image_name"].endswith(":latest")
    assert env["files"] == {"Dockerfile": first, "notes/README.md": "v1\n"}

    # Built from a local directory: no URL, no --ref on repo2docker's command line.
    await wait_building(admin, uid)
    [container] = build_containers(uid)
    cmd = json.loads(docker("inspect", "--format", "{{json .Config.Cmd}}", container).stdout)
    assert cmd[-2:] == ["--", "/tmp/tljh-r2d-source"], cmd
    assert "--ref" not in cmd

    built = await admin.wait_env(uid, {"built", "failed"})
    assert built["status"] == "built", built
    assert len(built["commit"]) == 40
    [v1] = await versions_of(admin, uid)
    r = await admin.api("GET", f"api/environments/{uid}/versions/{v1['id']}/files")
    assert r.status_code == 200 and r.json() == {"files": env["files"]}

    # The list never carries files; one environment does.
    [listed] = [e for e in _envs(await admin.api("GET", "api/environments")) if e["uid"] == uid]
    assert "files" not in listed

    # A rebuild of the same files: nothing to build, like git's same commit.
    r = await admin.api("POST", f"api/environments/{uid}/rebuild", json={})
    assert r.status_code == 200, r.text
    assert "same files" in r.json()["message"]

    # New files: the next version.
    second = dockerfile("RUN echo files-v2 > /tmp/version")
    r = await admin.api(
        "PATCH", f"api/environments/{uid}",
        json={"files": {"Dockerfile": second, "extra.txt": "new\n"}},
    )
    assert r.status_code == 202, r.text
    assert r.json()["files"] == {"Dockerfile": second, "extra.txt": "new\n"}
    built2 = await admin.wait_env(uid, {"built", "failed"})
    assert built2["status"] == "built", built2
    assert built2["commit"] != built["commit"]
    v2, old = await versions_of(admin, uid)
    assert old["id"] == v1["id"] and v2["current"]

    r = await admin.api("GET", f"api/environments/{uid}/versions/{v2['id']}/diff?from={v1['id']}")
    assert r.status_code == 200, r.text
    diff = r.json()["files"]
    assert diff["added"] == ["extra.txt"]
    assert diff["removed"] == ["notes/README.md"]
    assert [c["path"] for c in diff["changed"]] == ["Dockerfile"]
    assert "+RUN echo files-v2" in diff["changed"][0]["diff"]

    # Rolled back: version 1 current again, and its files the environment's.
    r = await admin.api("POST", f"api/environments/{uid}/rollback", json={"version": v1["id"]})
    assert r.status_code == 200, r.text
    now = await admin.get_env(uid)
    assert now["image_id"] == v1["image_id"]
    assert now["files"] == env["files"]

    # A rebuild of version 2 builds its files again (same content: forced).
    r = await admin.api(
        "POST", f"api/environments/{uid}/rebuild", json={"version": v2["id"], "force": True}
    )
    assert r.status_code == 202, r.text
    built3 = await admin.wait_env(uid, {"built", "failed"})
    assert built3["status"] == "built", built3
    assert built3["commit"] == built2["commit"]
    assert (await admin.get_env(uid))["files"]["extra.txt"] == "new\n"

    # The image holds what the files said.
    info = image_info(built3["image_id"])
    assert info is not None


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
async def test_archive_upload_builds(admin, envs, kind):
    files = {"Dockerfile": dockerfile(f"RUN echo archive-{kind}")}
    archive = b64_tar_gz(files) if kind == "tar.gz" else b64_zip(files)
    env = await add(admin, envs, {"archive": archive})
    assert env["source"] == "files" and env["files"] == files
    built = await admin.wait_env(env["uid"], {"built", "failed"})
    assert built["status"] == "built", built


async def test_hostile_archive_refused_nothing_stored(admin, envs):
    before = {e["uid"] for e in _envs(await admin.api("GET", "api/environments"))}
    name = f"evil-{token()}"
    for archive in (
        b64_tar_gz({"../../etc/evil": "x"}),
        b64_zip({"/abs/evil": "x"}),
        base64.b64encode(b"\x1f\x8b" + b"\x00" * 100).decode(),
    ):
        r = await admin.api("POST", "api/environments", json={"archive": archive, "name": name})
        body = assert_json_error(r, 400)
        assert body.get("field") == "archive", body
    r = await admin.api(
        "POST", "api/environments",
        json={"files": {"a/../../b": "x"}, "name": name},
    )
    assert assert_json_error(r, 400).get("field") == "files"
    # Two sources, a field that makes no sense for files, none at all
    r = await admin.api("POST", "api/environments", json={"files": {"a": "b"}, "archive": "x"})
    assert assert_json_error(r, 400).get("field") == "archive"
    r = await admin.api(
        "POST", "api/environments", json={"files": {"a": "b"}, "ref": "main", "name": name}
    )
    assert assert_json_error(r, 400).get("field") == "ref"
    r = await admin.api("POST", "api/environments", json={"name": name})
    assert assert_json_error(r, 400).get("field") == "repo"
    after = {e["uid"] for e in _envs(await admin.api("GET", "api/environments"))}
    assert after == before


async def test_patch_files_refused_for_git_and_nothing_half_stored(admin, envs, built_env):
    uid = built_env["uid"]
    r = await admin.api("PATCH", f"api/environments/{uid}", json={"files": {"a": "b"}})
    assert assert_json_error(r, 400).get("field") == "files"

    env = await add(admin, envs, {"files": {"Dockerfile": dockerfile("RUN true")}})
    assert (await admin.wait_env(env["uid"], {"built", "failed"}))["status"] == "built"
    r = await admin.api(
        "PATCH", f"api/environments/{env['uid']}",
        json={"archive": b64_tar_gz({"../x": "y"}), "auto_rebuild": False},
    )
    assert assert_json_error(r, 400).get("field") == "archive"
    assert (await admin.get_env(env["uid"]))["files"] == env["files"]

    # The same files again, with another change: nothing to build, the change stored.
    r = await admin.api(
        "PATCH", f"api/environments/{env['uid']}",
        json={"files": env["files"], "sharing": {"everyone": False}},
    )
    assert r.status_code == 200, r.text
    assert "same files" in r.json()["message"]
    assert r.json()["sharing"]["everyone"] is False
    assert r.json()["status"] == "built"


def _envs(response):
    assert response.status_code == 200, response.text
    body = response.json()
    return body if isinstance(body, list) else body["environments"]
