"""Users' files outlive their containers: the persistent homes, end to end.

A real hub with the service, environments built by repo2docker, servers
started through the service's API; the user's files are written and read
back through the Jupyter server's contents API (through the hub's proxy),
as a user's browser would.
"""

import asyncio
import json
import os
import subprocess

import pytest
from dockerspawner import DockerSpawner

from tests.helpers.buildutils import dockerfile
from tests.helpers.fixtures import running_hub
from tests.helpers.gitserver import add_commit, make_repo
from tests.helpers.servers import Files, wait_server
from tests.helpers.utils import HubUser, admin_api

pytestmark = [pytest.mark.hub, pytest.mark.docker]

#: Names of this session's users and repositories (other sessions share the engine).
RUN = f"hm{os.getpid() % 100000}"
NOTES = "work/notes.txt"


def docker_json(*args):
    out = subprocess.run(["docker", *args], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def container(user, server):
    info = docker_json("inspect", f"tljh-r2d-test-{user}-{DockerSpawner._escape(server.lower())}")
    return info[0] if info else None


def home_volumes(hub, user):
    """``{name: labels}`` of the home volumes of ``user`` on ``hub``."""
    names = subprocess.run(
        [
            "docker", "volume", "ls", "-q",
            "--filter", f"label=tljh_repo2docker.home.user={user}",
            "--filter", f"label=tljh_repo2docker.home.prefix={hub.image_prefix}",
        ],
        capture_output=True, text=True,
    ).stdout.split()
    return {name: docker_json("volume", "inspect", name)[0]["Labels"] for name in names}


async def start(user, name, environment=None):
    """Start (or restart, without ``environment``) the server ``name`` through the service."""
    if environment is None:
        r = await user.api("GET", f"servers?name={name}")  # the direct link restarts it
        assert r.status_code == 200, r.text
    else:
        r = await user.api("POST", "api/servers", json={"name": name, "environment": environment})
        assert r.status_code == 202, r.text
    return await wait_server(user, name)


async def stop(user, name, remove=False):
    params = {"remove": "true"} if remove else {}
    r = await user.api("DELETE", f"api/servers/{name}", params=params)
    assert r.status_code in (202, 204), r.text
    await wait_server(user, name, "absent" if remove else "stopped")


def server_state(hub, user, name):
    with admin_api(hub) as api:
        model = api.get(f"users/{user}", params={"include_stopped_servers": "1"}).json()
    return model["servers"][name].get("state") or {}


async def build(admin, repo, name):
    env = await admin.create_env({"repo": repo, "name": name})
    return env["uid"]


@pytest.fixture(scope="module")
async def homes_envs(admin, git_server, git_root):
    """Two environments: ``a`` (rebuilt by a test) and ``b``, whose image has a dotfile in the home."""
    make_repo(git_root, f"{RUN}-a", {"Dockerfile": dockerfile("RUN echo a-1")})
    make_repo(
        git_root,
        f"{RUN}-b",
        {"Dockerfile": dockerfile("RUN echo from-b > /home/jovyan/.b-dotfile")},
    )
    uids = [
        await build(admin, git_server.url(f"{RUN}-a"), f"{RUN}-a"),
        await build(admin, git_server.url(f"{RUN}-b"), f"{RUN}-b"),
    ]
    envs = [await admin.wait_env(uid, {"built", "failed"}) for uid in uids]
    assert [e["status"] for e in envs] == ["built", "built"], envs
    yield {"a": envs[0], "b": envs[1]}
    for env in envs:
        await admin.delete_env(env["uid"])


async def test_files_survive_restarts_rebuilds_switches_and_removal(
    hub, admin, homes_envs, git_root
):
    a, b = homes_envs["a"], homes_envs["b"]
    ann_name, ben_name = f"{RUN}ann", f"{RUN}ben"
    ann, ben = await HubUser.login(hub, ann_name), await HubUser.login(hub, ben_name)
    ann_files, ben_files = Files(hub, ann_name), Files(hub, ben_name)
    try:
        await asyncio.gather(start(ann, "notes", a["name"]), start(ben, "notes", a["name"]))
        await ann_files.write("notes", NOTES, "ann's notes\n")
        await ben_files.write("notes", NOTES, "ben's notes\n")

        # One home each, labelled for the service's homes page; never each other's.
        [(ann_volume, labels)] = home_volumes(hub, ann_name).items()
        assert labels == {
            "tljh_repo2docker.home": "1",
            "tljh_repo2docker.home.user": ann_name,
            "tljh_repo2docker.home.server": "",
            "tljh_repo2docker.home.environment": "",
            "tljh_repo2docker.home.prefix": hub.image_prefix,
        }
        [ben_volume] = home_volumes(hub, ben_name)
        assert ann_volume != ben_volume
        mounts = {m["Destination"]: m for m in container(ann_name, "notes")["Mounts"]}
        assert mounts["/home/jovyan"]["Name"] == ann_volume
        assert await ann_files.read("notes", NOTES) == "ann's notes\n"
        assert await ben_files.read("notes", NOTES) == "ben's notes\n"
        await stop(ben, "notes", remove=True)

        # 1. stop and start (remove = True: the container goes at each stop)
        await stop(ann, "notes")
        assert container(ann_name, "notes") is None
        await start(ann, "notes")
        assert await ann_files.read("notes", NOTES) == "ann's notes\n"

        # 2. a rebuild: the running server keeps its image; its restart takes the new one
        first_image = container(ann_name, "notes")["Image"]
        assert server_state(hub, ann_name, "notes")["image_id"] == first_image
        add_commit(git_root, f"{RUN}-a", {"Dockerfile": dockerfile("RUN echo a-2")})
        r = await admin.api("POST", f"api/environments/{a['uid']}/rebuild")
        assert r.status_code == 202, r.text
        rebuilt = await admin.wait_env(a["uid"], {"built", "failed"})
        assert rebuilt["status"] == "built" and rebuilt["commit"] != a["commit"], rebuilt
        running = container(ann_name, "notes")
        assert running["State"]["Running"] and running["Image"] == first_image
        assert await ann_files.read("notes", NOTES) == "ann's notes\n"
        await stop(ann, "notes")
        await start(ann, "notes")
        new_image = container(ann_name, "notes")["Image"]
        assert new_image != first_image
        assert server_state(hub, ann_name, "notes")["image_id"] == new_image
        assert await ann_files.read("notes", NOTES) == "ann's notes\n"

        # 3. another environment for the server (the service removes and recreates it)
        await stop(ann, "notes")
        await start(ann, "notes", b["name"])
        assert container(ann_name, "notes")["Config"]["Image"] == b["image_name"]
        assert await ann_files.read("notes", NOTES) == "ann's notes\n"
        await ann_files.write("notes", NOTES, "ann's notes, edited in b\n")

        # 4. the server removed, then made again with the same name
        await stop(ann, "notes", remove=True)
        assert container(ann_name, "notes") is None
        assert list(home_volumes(hub, ann_name)) == [ann_volume], "removing a server keeps the home"
        await start(ann, "notes", a["name"])
        assert await ann_files.read("notes", NOTES) == "ann's notes, edited in b\n"

        # ... and another server of the same user shares the home
        await start(ann, "other", a["name"])
        assert await ann_files.read("other", NOTES) == "ann's notes, edited in b\n"
        await asyncio.gather(stop(ann, "notes", remove=True), stop(ann, "other", remove=True))
        # ben's files, untouched, in his own home
        assert volume_text(ben_volume, NOTES) == "ben's notes\n"
    finally:
        for files in (ann_files, ben_files):
            await files.close()
        for user in (ann, ben):
            await user.close()


def volume_text(volume, path):
    """The text of ``path`` in the home volume ``volume``, read by a throw-away container."""
    from tests.helpers.fixtures import SINGLEUSER_IMAGE

    out = subprocess.run(
        ["docker", "run", "--rm", "-v", f"{volume}:/home/jovyan", SINGLEUSER_IMAGE,
         "cat", f"/home/jovyan/{path}"],
        capture_output=True, text=True,
    )
    return out.stdout if out.returncode == 0 else None


@pytest.fixture(scope="module")
def tljh_hub(tmp_path_factory, test_images):
    """A hub configured by the TLJH plugin (``remove = False``), back on the test network."""
    from tests.helpers.utils import next_image_prefix

    prefix = next_image_prefix()
    config = f"""
from tljh_repo2docker import tljh_plugin
hub_ip = c.JupyterHub.hub_ip
tljh_plugin.configure_docker(c)
# the test hub's own network, and its own environments
c.JupyterHub.hub_ip = hub_ip
c.Repo2DockerSpawner.image_prefix = {prefix!r}
"""
    with running_hub(tmp_path_factory.mktemp("tljh-hub"), extra_config=config, image_prefix=prefix) as hub:
        yield hub


async def test_tljh_plugin_homes_survive_restarts_rebuilds_and_hub_restarts(
    tljh_hub, git_server, git_root
):
    from tests.helpers.fixtures import start_hub, stop_hub

    hub = tljh_hub
    name = f"{RUN}tl"
    make_repo(git_root, f"{RUN}-tljh", {"Dockerfile": dockerfile("RUN echo t-1")})
    admin = await HubUser.login(hub, "admin")
    user = await HubUser.login(hub, name)
    files = Files(hub, name)
    try:
        env = await admin.wait_env(
            await build(admin, git_server.url(f"{RUN}-tljh"), f"{RUN}-tljh"), {"built", "failed"}
        )
        assert env["status"] == "built", env
        await start(user, "lab", env["name"])
        await files.write("lab", NOTES, "kept by the plugin's hub\n")
        [volume] = home_volumes(hub, name)

        # stop and start: remove = False keeps the container, and the home is in the volume
        await stop(user, "lab")
        kept = container(name, "lab")
        assert kept is not None and not kept["State"]["Running"]
        await start(user, "lab")
        assert container(name, "lab")["Id"] == kept["Id"]
        assert await files.read("lab", NOTES) == "kept by the plugin's hub\n"

        # a rebuild: the next start makes a new container, on the same home
        add_commit(git_root, f"{RUN}-tljh", {"Dockerfile": dockerfile("RUN echo t-2")})
        r = await admin.api("POST", f"api/environments/{env['uid']}/rebuild")
        assert r.status_code == 202, r.text
        assert (await admin.wait_env(env["uid"], {"built", "failed"}))["status"] == "built"
        await stop(user, "lab")
        await start(user, "lab")
        assert container(name, "lab")["Id"] != kept["Id"]
        assert await files.read("lab", NOTES) == "kept by the plugin's hub\n"

        # the hub restarts (its servers are stopped with it)
        stop_hub(hub)
        start_hub(hub)
        await user.refresh_xsrf()
        await start(user, "lab")
        assert await files.read("lab", NOTES) == "kept by the plugin's hub\n"
        assert list(home_volumes(hub, name)) == [volume]
        await stop(user, "lab", remove=True)
        assert volume_text(volume, NOTES) == "kept by the plugin's hub\n"
    finally:
        await files.close()
        await user.close()
        await admin.close()


@pytest.fixture
def upstream_server(hub, test_images):
    """What 3.x left for one user: an image under its old name (relabelled by the
    upgrade: ``tljh_repo2docker.image_prefix`` is this hub's) and the server's
    container, without a home volume, the user's files in its own layer."""
    from tests.helpers.environments import UPSTREAM, build_environment

    user = f"{RUN}old"
    old, image = f"{RUN}-upg-one:main-3x", f"{RUN}-upg-one:main"
    labels = {**UPSTREAM["image_labels"], "tljh_repo2docker.image_name": image}
    args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    subprocess.run(
        ["docker", "build", "-q", "-t", old, *args, "-"],
        input=f"FROM {test_images['singleuser']}\n", text=True, check=True, capture_output=True,
    )
    build_environment(old, image, uid=f"upg{RUN}", image_prefix=hub.image_prefix)
    name = f"tljh-r2d-test-{user}-s1"
    subprocess.run(
        ["docker", "create", "--name", name, old, "jupyterhub-singleuser"], check=True, capture_output=True
    )
    subprocess.run(  # a file written by the user under 3.x, in the container's own layer
        ["docker", "cp", "-", f"{name}:/home/jovyan"],
        input=_tar({"work/notes.txt": b"written under 3.x\n"}), check=True, capture_output=True,
    )
    yield user, {**UPSTREAM["user_options"], "image": image}
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(["docker", "rmi", "-f", image, old], capture_output=True)


def _tar(files):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in files.items():
            directory = tarfile.TarInfo(path.rsplit("/", 1)[0])
            directory.type, directory.mode, directory.uid, directory.gid = tarfile.DIRTYPE, 0o755, 1000, 1000
            tar.addfile(directory)
            info = tarfile.TarInfo(path)
            info.size, info.uid, info.gid = len(data), 1000, 1000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_a_3x_server_restarts_from_its_options_with_its_files(hub, upstream_server):
    user, options = upstream_server
    assert "environment" not in options  # 3.x's user_options
    old = await HubUser.login(hub, user)
    files = Files(hub, user)
    try:
        with admin_api(hub) as api:
            r = api.post(f"users/{user}/servers/s1", json=options)
            assert r.status_code in (201, 202), r.text
        await wait_server(old, "s1")
        assert await files.read("s1", NOTES) == "written under 3.x\n"
        mounts = {m["Destination"]: m for m in container(user, "s1")["Mounts"]}
        [volume] = home_volumes(hub, user)
        assert mounts["/home/jovyan"]["Name"] == volume
        state = server_state(hub, user, "s1")
        assert state["environment_uid"] == f"upg{RUN}"
        await stop(old, "s1", remove=True)
        assert volume_text(volume, NOTES) == "written under 3.x\n"
    finally:
        await files.close()
        await old.close()
