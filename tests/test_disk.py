"""Disk use (issue 15): keep_versions, ``GET api/disk``, ``POST api/disk/prune``, min_free_disk.

Everything is real: a hub of this module's own (``keep_versions=2``) with the
service, the Docker engine, repo2docker and the git server. Each commit of a
test repository copies a new random file into the image, so that every
version has a layer of its own and removing it frees a known amount.

The engine's build cache is shared with everything else on it: every test
hub's ``build_cache_max_age`` is a century (tests/helpers/utils.py ``hub_config``), so
prune never touches it here.
"""

import contextlib
import json
import os
import sqlite3
import subprocess

import pytest

from tests.helpers import utils
from tests.helpers.buildutils import build_containers, docker, dockerfile, image_info, token, wait_for
from tests.helpers.fixtures import BUILDER_IMAGE, running_hub, start_hub, stop_hub
from tests.helpers.gitserver import add_commit, make_repo
from tests.helpers.utils import assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]

KEEP = 2
SERVICE_ARGS = [f"--keep_versions={KEEP}"]
BLOB_BYTES = 300_000
#: Far more than any disk here: every build is refused.
HUGE = 1024**5


@pytest.fixture(scope="module")
def hub(tmp_path_factory, test_images):
    with running_hub(tmp_path_factory.mktemp("disk-hub"), SERVICE_ARGS) as info:
        yield info
        names = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        for name in names:
            if name.startswith(info.image_prefix):
                docker("rmi", "-f", name, check=False)


@pytest.fixture(scope="module")
async def admin(hub):
    user = await utils.HubUser.login(hub, "admin")
    yield user
    await user.close()


@pytest.fixture
async def envs(admin):
    made = []
    yield made
    for uid in made:
        await admin.api("POST", f"api/environments/{uid}/cancel")
        await admin.delete_env(uid)


def blob_files():
    return {
        "Dockerfile": dockerfile("COPY blob /srv/blob"),
        "blob": os.urandom(BLOB_BYTES),
    }


async def build(admin, uid):
    env = await admin.wait_env(uid, {"built", "failed", "cancelled"})
    assert env["status"] == "built", env
    return env


async def rebuild(admin, uid):
    r = await admin.api("POST", f"api/environments/{uid}/rebuild")
    assert r.status_code == 202, r.text
    return await build(admin, uid)


async def disk_report(admin):
    r = await admin.api("GET", "api/disk")
    assert r.status_code == 200, r.text
    return r.json()


def env_report(report, uid):
    [env] = [e for e in report["environments"] if e["uid"] == uid]
    return env


def version_rows(hub, uid):
    """``{number: (image_name, image_id)}`` of the versions table."""
    with contextlib.closing(sqlite3.connect(hub.db_path)) as db:
        rows = db.execute(
            "select v.number, v.image_name, v.image_id from versions v "
            "join environments e on e.id = v.environment_id where e.uid = ?",
            (uid,),
        ).fetchall()
    return {number: (name, image_id) for number, name, image_id in rows}


def df_images():
    """``{image id: (Size, SharedSize)}`` from the engine's ``GET /system/df``."""
    out = subprocess.run(
        ["curl", "-s", "--unix-socket", "/var/run/docker.sock", "http://localhost/system/df"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {i["Id"]: (i["Size"], i["SharedSize"]) for i in json.loads(out)["Images"]}


def dangling_image(labels):
    """Build an untagged image with ``labels``; returns its id."""
    args = ["docker", "build", "-q"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    result = subprocess.run(
        [*args, "-"], input=dockerfile(f"LABEL probe={token()}"), capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    image_id = result.stdout.strip().splitlines()[-1]
    assert image_info(image_id)["RepoTags"] == []
    return image_id


async def test_keep_versions_disk_report_and_prune(hub, admin, envs, git_root, git_server):
    name = f"disk-{token()}"
    make_repo(git_root, name, blob_files())
    env = await admin.create_env({"repo": git_server.url(name), "name": name})
    uid = env["uid"]
    envs.append(uid)
    await build(admin, uid)
    [(v1_name, v1_id)] = version_rows(hub, uid).values()

    # A container (never started, as a stopped server's) uses version 1.
    container = docker("create", "--label", f"tljh-disk-test={uid}", v1_id, "true").stdout.strip()
    other_hub = our_dangling = unlabelled = None
    try:
        for _ in range(3):
            add_commit(git_root, name, blob_files())
            await rebuild(admin, uid)

        # After each build: what is past the newest 2, not current and unused goes.
        def settled():
            return sorted(version_rows(hub, uid)) == [1, 3, 4]

        await wait_for(settled, timeout=60, what="version 2 removed by keep_versions")
        log = (hub.workdir / "jupyterhub.log").read_text()
        assert f"keep_versions={KEEP}: removed 1 old version of {uid} (v2), freeing" in log
        rows = version_rows(hub, uid)
        assert rows[1] == (v1_name, v1_id)
        env = await admin.get_env(uid)
        assert image_info(env["image_name"])["Id"] == rows[4][1]
        for number in (1, 3, 4):
            assert image_info(rows[number][0])["Id"] == rows[number][1]
        # version 2: its tag and its image are gone from the engine
        assert image_info(f"{env['image_name'].rpartition(':')[0]}:HEAD--v2") is None

        report = await disk_report(admin)
        versions = {v["number"]: v for v in env_report(report, uid)["versions"]}
        assert sorted(versions) == [1, 3, 4]
        for number, version in versions.items():
            assert version["size"] == image_info(rows[number][1])["Size"]
            assert version["removable"] is False
        assert versions[1]["servers"] == 1 and not versions[1]["current"]
        assert versions[4]["current"] and versions[4]["servers"] == 0
        assert env_report(report, uid)["size"] == sum(v["size"] for v in versions.values())
        assert report["keep_versions"] == KEEP
        assert report["disk"]["path"] == "/var/lib/docker"
        assert 0 < report["disk"]["free"] <= report["disk"]["total"]

        # Nothing to prune while the container uses version 1.
        r = await admin.api("POST", "api/disk/prune", json={"dry_run": True})
        assert r.status_code == 200, r.text
        assert [v["uid"] for v in r.json()["removed"]["versions"]].count(uid) == 0

        docker("rm", container)
        container = None
        other_hub = dangling_image(
            {"tljh_repo2docker.uid": uid, "tljh_repo2docker.image_prefix": "another-hub/"}
        )
        our_dangling = dangling_image(
            {"tljh_repo2docker.uid": f"gone-{token()}", "tljh_repo2docker.image_prefix": hub.image_prefix}
        )
        unlabelled = dangling_image({})
        sizes = df_images()
        expected_free = sum(sizes[i][0] - sizes[i][1] for i in (v1_id, our_dangling))
        assert sizes[v1_id][0] - sizes[v1_id][1] >= BLOB_BYTES

        report = await disk_report(admin)
        assert {v["number"]: v["removable"] for v in env_report(report, uid)["versions"]} == {
            1: True, 3: False, 4: False,
        }
        r = await admin.api("POST", "api/disk/prune", json={"dry_run": True})
        assert r.status_code == 200, r.text
        dry = r.json()
        assert dry["dry_run"] is True
        mine = [v for v in dry["removed"]["versions"] if v["uid"] == uid]
        assert [(v["number"], v["image_name"]) for v in mine] == [(1, v1_name)]
        assert [d["id"] for d in dry["removed"]["dangling_images"]] == [our_dangling]
        assert dry["removed"]["build_cache"] == {"count": 0, "size": 0}
        assert dry["freed"] == expected_free == report["reclaimable"]
        assert image_info(v1_id) is not None, "a dry run removes nothing"

        r = await admin.api("POST", "api/disk/prune", json={})
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["dry_run"] is False and done["skipped"] == []
        assert done["removed"] == dry["removed"]
        assert done["freed"] == dry["freed"]
        assert image_info(v1_id) is None and image_info(our_dangling) is None
        assert sorted(version_rows(hub, uid)) == [3, 4]
        # Another hub's image and an image without our labels stay.
        assert image_info(other_hub) is not None and image_info(unlabelled) is not None
        run = docker("run", "--rm", env["image_name"], "ls", "/srv/blob")
        assert run.stdout.strip() == "/srv/blob"
    finally:
        if container:
            docker("rm", "-f", container, check=False)
        for image in (other_hub, our_dangling, unlabelled):
            if image:
                docker("rmi", image, check=False)


async def test_disk_is_for_admins_and_checks_its_input(hub, admin):
    user = await utils.HubUser.login(hub, "alice")
    try:
        r = await user.api("GET", "api/disk")
        assert_json_error(r, 403, "admin")
        r = await user.api("POST", "api/disk/prune", json={"dry_run": True})
        assert_json_error(r, 403, "admin")
        r = await user.client.get(user.service_path("disk"), follow_redirects=False)
        assert r.status_code == 403
    finally:
        await user.close()
    r = await admin.api("POST", "api/disk/prune", json={"dry_run": "yes"})
    assert_json_error(r, 400, "dry_run")
    assert r.json()["field"] == "dry_run"
    r = await admin.api("POST", "api/disk/prune", json={"everything": True})
    assert_json_error(r, 400, "everything")
    r = await admin.api("POST", "api/disk/prune", content=b"[1")
    assert_json_error(r, 400, "JSON")
    page = await admin.client.get(admin.service_path("disk"))
    assert page.status_code == 200 and "js/disk.js" in page.text
    servers_page = await admin.client.get(admin.service_path("servers"))
    assert 'href="/services/tljh_repo2docker/disk"' in servers_page.text


def _restart_with(hub, extra_args):
    stop_hub(hub)
    config = utils.hub_config(hub, BUILDER_IMAGE, extra_service_args=[*SERVICE_ARGS, *extra_args])
    (hub.workdir / "jupyterhub_config.py").write_text(config)
    start_hub(hub)


async def test_builds_refused_under_min_free_disk(hub, admin, envs, git_root, git_server):
    name = f"full-{token()}"
    make_repo(git_root, name, blob_files())
    env = await admin.create_env({"repo": git_server.url(name), "name": name})
    uid = env["uid"]
    envs.append(uid)
    env = await build(admin, uid)
    _restart_with(hub, [f"--min_free_disk={HUGE}"])
    try:
        await admin.refresh_xsrf()
        before = {row[0] for row in _environment_rows(hub)}
        r = await admin.api(
            "POST", "api/environments", json={"repo": git_server.url(name), "name": f"{name}-2"}
        )
        assert_json_error(r, 507, "min_free_disk")
        message = r.json()["message"]
        assert str(HUGE) in message and "free" in message
        assert {row[0] for row in _environment_rows(hub)} == before

        add_commit(git_root, name, blob_files())
        r = await admin.api("POST", f"api/environments/{uid}/rebuild")
        assert_json_error(r, 507, "min_free_disk")
        assert str(HUGE) in r.json()["message"]
        after = await admin.get_env(uid)
        assert after["status"] == "built" and after["commit"] == env["commit"]
        assert after["finished"] == env["finished"]
        assert build_containers(uid) == []
        assert sorted(version_rows(hub, uid)) == [1]
    finally:
        _restart_with(hub, [])
        await admin.refresh_xsrf()


def _environment_rows(hub):
    with contextlib.closing(sqlite3.connect(hub.db_path)) as db:
        return db.execute("select uid, name, status from environments").fetchall()
