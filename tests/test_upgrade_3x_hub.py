"""A hub that ran tljh-repo2docker 3.0.21 upgrades in place: nothing is lost.

The service's working directory holds what 3.0.21 left (its database and
cookie secret, from ``tests/data/upstream-3.0.21/``), the engine holds images
with exactly 3.x's labels, and the hub's database a server with 3.x's
``user_options``. The hub then runs this package, with the same
configuration, directory and images:

- the hub starts (the service reads 3.x's raw cookie secret, converts the
  database and backs it up first);
- the old environments are listed as built, with their limits, for admins and
  users; their images are labelled as this service's (same name, new id);
- the spawn form offers them, a user starts a new server from one, and the
  named server made under 3.x (stored 3.x ``user_options``, a container whose
  home is in its writable layer) restarts from the converted environment
  without losing its files;
- an admin removes one (3.x's own delete call, kept as an alias, included) and
  rebuilds the other.

3.0.21 itself is never installed: its state is what the fixtures hold, its
images are made here with its labels.
"""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import utils
from tests.helpers.buildutils import docker, token
from tests.helpers.fixtures import SINGLEUSER_IMAGE, running_hub
from tests.helpers.servers import Files, container, wait_server

pytestmark = [pytest.mark.hub, pytest.mark.docker]

DATA = Path(__file__).parent / "data" / "upstream-3.0.21"
STATE = json.loads((DATA / "state.json").read_text())


def legacy_labels(image_name, display_name, mem_limit, cpu_limit, repo, ref="main"):
    """The labels 3.0.21 puts on an image (see state.json), for another image."""
    labels = dict(STATE["image_labels"]["upg-one:main"])
    labels.update({
        "repo2docker.repo": repo,
        "repo2docker.ref": ref,
        "tljh_repo2docker.image_name": image_name,
        "tljh_repo2docker.display_name": display_name,
        "tljh_repo2docker.mem_limit": mem_limit,
        "tljh_repo2docker.cpu_limit": cpu_limit,
    })
    return labels


def build_legacy_image(image_name, marker, labels, workdir):
    """An image as 3.x builds it: our single-user image plus a file, with 3.x's labels only."""
    context = workdir / f"ctx-{marker}"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {SINGLEUSER_IMAGE}\nRUN echo {marker} > /home/jovyan/marker.txt\n"
    )
    args = ["build", "-q", "-t", image_name]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    docker(*args, str(context))
    return json.loads(docker("image", "inspect", image_name).stdout)[0]


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory, test_images, git_server, git_root):
    """A 3.x working directory and images, then a hub running this package on them."""
    workdir = tmp_path_factory.mktemp("hub-3x")
    tag = token()
    names = {"upg-one": f"upg-one-{tag}:main", "upg-two": f"upg-two-{tag}:main"}
    # 3.x's database and cookie secret, as it left them; the image names made
    # unique to this run (other test runs may share the Docker engine).
    db = workdir / "tljh_repo2docker.sqlite"
    shutil.copy(DATA / "tljh_repo2docker.sqlite", db)
    shutil.copy(DATA / "tljh_repo2docker_cookie_secret", workdir / "tljh_repo2docker_cookie_secret")
    db.chmod(0o644)
    con = sqlite3.connect(db)
    for old, new in (("upg-one:main", names["upg-one"]), ("upg-two:main", names["upg-two"])):
        con.execute("UPDATE images SET name = ? WHERE name = ?", (new, old))
    con.commit()
    rows = con.execute("SELECT uid, name, image_meta FROM images ORDER BY name").fetchall()
    con.close()
    from tests.helpers.gitserver import make_repo

    # the repositories the environments were built from, for the rebuild
    repos = {}
    for display in ("upg-one", "upg-two"):
        repo_name = f"{display}-{tag}"
        make_repo(git_root, repo_name, {
            "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo {display}-rebuilt > /home/jovyan/marker.txt\n"
        })
        repos[display] = git_server.url(repo_name)
    con = sqlite3.connect(db)
    for uid, _, meta in rows:
        meta = json.loads(meta)
        meta["repo"] = repos[meta["display_name"]]
        con.execute("UPDATE images SET image_meta = ? WHERE uid = ?", (json.dumps(meta), uid))
    con.commit()
    con.close()
    old_images = {
        "upg-one": build_legacy_image(
            names["upg-one"], "one",
            legacy_labels(names["upg-one"], "upg-one", "1G", "0.5", repos["upg-one"]), workdir,
        ),
        "upg-two": build_legacy_image(
            names["upg-two"], "two",
            legacy_labels(names["upg-two"], "upg-two", "", "", repos["upg-two"]), workdir,
        ),
    }
    # what a 3.x plugin (Plasma's) passes to the service: kept working
    custom = workdir / "templates"
    custom.mkdir()
    (custom / "servers.html").write_text(
        '{% extends "tljh_repo2docker/servers.html" %}{% block title %}Plasma servers{% endblock %}'
    )
    logo = workdir / "plasma-logo.png"
    logo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"plasma" * 10)
    service_args = [
        '--custom_links={"Permissions": "../tljh_plasma/permissions"}',
        f"--template_paths={custom}",
        f"--logo_file={logo}",
        "--logo_url=https://plasma.example.org/",
    ]
    info = None
    try:
        with running_hub(workdir, service_args) as info:
            utils.wait_for_http(f"{info.service_url}health", timeout=60, ok=(200,))
            yield {"info": info, "names": names, "old_images": old_images, "workdir": workdir,
                   "logo": logo,
                   "uids": {json.loads(m)["display_name"]: uid for uid, _, m in rows}}
    finally:
        for name in names.values():
            docker("rmi", "-f", name, check=False)
        for image in old_images.values():
            docker("rmi", "-f", image["Id"], check=False)


@pytest.fixture(scope="module")
async def admin3x(upgraded):
    user = await utils.HubUser.login(upgraded["info"], "admin")
    yield user
    await user.close()


@pytest.fixture(scope="module")
async def user3x(upgraded):
    user = await utils.HubUser.login(upgraded["info"], "upgbob")
    yield user
    await user.close()


async def test_old_environments_are_listed_as_built_with_their_limits(upgraded, admin3x, user3x):
    names, uids = upgraded["names"], upgraded["uids"]
    r = await admin3x.api("GET", "api/environments")
    assert r.status_code == 200, r.text
    envs = {e["name"]: e for e in r.json()["environments"]}
    assert set(envs) == {"upg-one", "upg-two"}
    one, two = envs["upg-one"], envs["upg-two"]
    assert one["uid"] == uids["upg-one"] and two["uid"] == uids["upg-two"]
    assert one["status"] == "built" and two["status"] == "built"
    assert one["image_name"] == names["upg-one"]  # kept, without our prefix
    assert (one["memory"], one["cpu"]) == ("1G", 0.5)
    assert (two["memory"], two["cpu"]) == (None, None)
    assert one["owner"] == "alice"
    assert one["created"].startswith("2026-12-01")
    # users see them too
    r = await user3x.api("GET", "api/environments")
    assert {e["name"] for e in r.json()["environments"]} == {"upg-one", "upg-two"}
    # the image is labelled as ours: same name, new id, same layers
    image = json.loads(docker("image", "inspect", names["upg-one"]).stdout)[0]
    labels = image["Config"]["Labels"]
    assert labels["tljh_repo2docker.uid"] == uids["upg-one"]
    assert labels["tljh_repo2docker.image_prefix"] == upgraded["info"].image_prefix
    assert labels["repo2docker.ref"] == "main"  # 3.x's labels stay
    assert image["Id"] != upgraded["old_images"]["upg-one"]["Id"]
    assert image["RootFS"]["Layers"] == upgraded["old_images"]["upg-one"]["RootFS"]["Layers"]


async def test_the_log_and_the_backup_are_kept(upgraded, admin3x):
    uid = upgraded["uids"]["upg-one"]
    events = await utils.read_sse(admin3x.client, admin3x.service_path(f"api/environments/{uid}/logs"))
    messages = [data["message"] for _, data in events]
    assert messages[0] == "Picked Git content provider."
    assert any("naming to docker.io/library/upg-one:main-build" in m for m in messages)
    (backup,) = upgraded["workdir"].glob("tljh_repo2docker.sqlite.bak-*")
    con = sqlite3.connect(backup)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone() == ("ac1b4e7e52f3",)
    assert con.execute("SELECT count(*) FROM images").fetchone() == (2,)
    con.close()
    # the 3.x cookie secret file is used as it is, and not rewritten
    assert (upgraded["workdir"] / "tljh_repo2docker_cookie_secret").read_bytes() == (
        DATA / "tljh_repo2docker_cookie_secret"
    ).read_bytes()


async def test_spawn_form_offers_them_and_a_new_server_starts(upgraded, user3x):
    names = upgraded["names"]
    r = await user3x.client.get("hub/spawn/upgbob/fromform")
    assert r.status_code == 200
    assert f'value="{names["upg-one"]}"' in r.text and f'value="{names["upg-two"]}"' in r.text
    r = await user3x.api("POST", "api/servers", json={"name": "fresh", "environment": "upg-one"})
    assert r.status_code == 202, r.text
    await wait_server(user3x, "fresh")
    info = container("upgbob", "fresh")
    assert info["HostConfig"]["Memory"] == 1024**3
    host = info["HostConfig"]
    assert host["CpuQuota"] / host["CpuPeriod"] == pytest.approx(0.5)
    text = await read_file(user3x, "fresh", "marker.txt")
    assert text.strip() == "one"
    await user3x.api("DELETE", "api/servers/fresh", params={"remove": "true"})
    await wait_server(user3x, "fresh", "absent")


async def read_file(user, server, path):
    files = Files(user.info, user.name)
    try:
        return await files.read(server, path)
    finally:
        await files.close()


async def test_server_made_under_3x_restarts_with_its_files(upgraded):
    """The hub replays the user_options 3.x stored; the container 3.x made keeps the
    user's files in its writable layer: they survive the restart on the labelled image."""
    info, names = upgraded["info"], upgraded["names"]
    # a user who had a server under 3.x and none since (so no home yet)
    user3x = await utils.HubUser.login(info, "upgold")
    options = json.loads(json.dumps(STATE["hub_user_options"]["bob/s1"]))
    options["image"] = names["upg-one"]
    # the container 3.x's spawner made for this server, with a file the user wrote
    old = upgraded["old_images"]["upg-one"]["Id"]
    name = "tljh-r2d-test-upgold-s1"
    docker("create", "--name", name, old, "sleep", "1")
    workfile = upgraded["workdir"] / "notes.txt"
    workfile.write_text("written under 3.x\n")
    docker("cp", str(workfile), f"{name}:/home/jovyan/notes.txt")
    try:
        with utils.admin_api(info) as api:
            # what the hub stored under 3.x: started once with these options...
            r = api.post("users/upgold/servers/s1", json=options)
            assert r.status_code in (201, 202), r.text
        server = await wait_server(user3x, "s1")
        assert server["environment"] == "upg-one"
        assert (await read_file(user3x, "s1", "notes.txt")) == "written under 3.x\n"
        with utils.admin_api(info) as api:
            api.delete("users/upgold/servers/s1")
        await wait_server(user3x, "s1", "stopped")
        # ...and started again by the hub alone, replaying them
        with utils.admin_api(info) as api:
            r = api.post("users/upgold/servers/s1")
            assert r.status_code in (201, 202), r.text
        await wait_server(user3x, "s1")
        assert (await read_file(user3x, "s1", "notes.txt")) == "written under 3.x\n"
        assert container("upgold", "s1")["HostConfig"]["Memory"] == 1024**3
    finally:
        with utils.admin_api(info) as api:
            api.request("DELETE", "users/upgold/servers/s1", json={"remove": True})
        await wait_server(user3x, "s1", "absent")
        docker("rm", "-f", name, check=False)
        await user3x.close()


async def test_admin_removes_one_with_3x_delete_call_and_rebuilds_the_other(upgraded, admin3x):
    names, uids = upgraded["names"], upgraded["uids"]
    # 3.x's scripts delete with DELETE api/environments and {"name": <uid>}
    r = await admin3x.api("DELETE", "api/environments", json={"name": uids["upg-two"]})
    assert r.status_code in (200, 204), r.text
    assert "Deprecation" in r.headers
    assert docker("image", "inspect", names["upg-two"], check=False).returncode != 0
    r = await admin3x.api("GET", f"api/environments/{uids['upg-two']}")
    assert r.status_code == 404
    r = await admin3x.api("POST", f"api/environments/{uids['upg-one']}/rebuild")
    assert r.status_code == 202, r.text
    env = await admin3x.wait_env(uids["upg-one"], {"built", "failed"})
    assert env["status"] == "built", env
    image = json.loads(docker("image", "inspect", names["upg-one"]).stdout)[0]
    assert image["Config"]["Labels"]["tljh_repo2docker.uid"] == uids["upg-one"]
    marker = docker("run", "--rm", "--entrypoint", "cat", names["upg-one"], "/home/jovyan/marker.txt")
    assert marker.stdout.strip() == "upg-one-rebuilt"  # built from its repository, same name


async def test_settings_of_3x_plugins_are_honoured(upgraded, user3x):
    base = f"/services/{utils.SERVICE}/"
    r = await user3x.client.get(user3x.service_path("servers"))
    assert r.status_code == 200
    page = r.text
    assert "<title>Plasma servers" in page  # template_paths: the plugin's template
    assert f'href="{base}../tljh_plasma/permissions">Permissions</a>' in page  # custom_links
    assert f'src="{base}logo"' in page and 'href="https://plasma.example.org/"' in page
    r = await user3x.client.get(user3x.service_path("logo"))
    assert r.status_code == 200 and r.content == upgraded["logo"].read_bytes()


async def test_3x_server_call_is_kept_as_an_alias(upgraded, user3x):
    names = upgraded["names"]
    body = {"imageName": names["upg-one"], "serverName": "viaold", "userName": "upgbob"}
    r = await user3x.api("POST", "api/servers", json=body)
    assert r.status_code == 202, r.text
    assert r.headers["Deprecation"] == "true" and "api/servers" in r.headers["Link"]
    assert r.json()["environment"] == "upg-one"
    await wait_server(user3x, "viaold")
    r = await user3x.api("DELETE", "api/servers/viaold", params={"remove": "true"})
    await wait_server(user3x, "viaold", "absent")
    # for someone else: refused, naming the field
    body = {"imageName": names["upg-one"], "serverName": "viaold", "userName": "someoneelse"}
    r = await user3x.api("POST", "api/servers", json=body)
    assert utils.assert_json_error(r, 403, "yourself")["field"] == "userName"
