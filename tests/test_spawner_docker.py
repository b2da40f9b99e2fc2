"""Repo2DockerSpawner against a real Docker engine, without a hub.

The environments are the single-user test image with our labels added (what
a build leaves on an image). The servers run ``sleep`` instead of
jupyterhub-singleuser, since there is no hub to talk to: what is checked is
what the spawner asks Docker for.
"""

import json
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
from jupyterhub.objects import Hub

from tests.helpers.environments import UPSTREAM, build_environment
from tests.helpers.utils import remove_volumes
from tljh_repo2docker.spawner import EnvironmentRefused, Repo2DockerSpawner, SpawnFailed

pytestmark = pytest.mark.docker

MIB = 1024**2


@pytest.fixture(scope="module")
def environments(test_images):
    run = uuid.uuid4().hex[:8]
    small = f"tljh-repo2docker-test/spawner-small:{run}"
    other = f"tljh-repo2docker-test/spawner-other:{run}"
    build_environment(
        test_images["singleuser"],
        small,
        uid=f"small{run}",
        display_name="Small",
        image_name=small,
        mem_limit="512M",
        cpu_limit="0.5",
        node_selector="{}",
    )
    build_environment(
        test_images["singleuser"],
        other,
        uid=f"other{run}",
        display_name="Other",
        image_name=other,
        mem_limit="",
        cpu_limit="",
        node_selector="{}",
    )
    yield {"small": small, "other": other, "plain": test_images["singleuser"]}
    subprocess.run(["docker", "rmi", "-f", small, other], capture_output=True)


@pytest.fixture
def docker_client(docker_engine):
    client = docker.APIClient(version="auto")
    yield client
    client.close()


@pytest.fixture
def make_spawner(docker_client):
    user = SimpleNamespace(
        name=f"r2d-test-{uuid.uuid4().hex[:8]}",
        id=1,
        url="/user/test/",
        base_url="/user/test/",
        groups=[],
    )
    made = []

    def make(server_name="env", **traits):
        orm_spawner = SimpleNamespace(name=server_name, server=None, user_options=None)
        spawner = Repo2DockerSpawner(
            user=user,
            orm_spawner=orm_spawner,
            hub=Hub(),
            # No hub to connect to: keep the container alive without it, and
            # stop at once on `docker stop`. The spawner's arguments land in
            # sh's $0, $1, ... and are ignored.
            **{
                "cmd": ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"],
                "pull_policy": "never",
                # the test images carry no hub prefix (the default is the service's)
                "image_prefix": "",
                **traits,
            },
        )
        made.append(spawner)
        return spawner

    yield make
    for spawner in made:
        subprocess.run(["docker", "rm", "-f", spawner.object_name], capture_output=True)
    remove_volumes(f"tljh_repo2docker.home.user={user.name}")  # the homes it made


def container_of(docker_client, spawner):
    return docker_client.inspect_container(spawner.object_name)


def no_container(docker_client, spawner, wait=10):
    """True when the server's container is gone (within ``wait`` seconds: with
    ``remove=True`` Docker removes a stopped container by itself, a moment later)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            docker_client.inspect_container(spawner.object_name)
        except docker.errors.NotFound:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


async def test_refuses_an_image_that_is_not_an_environment(
    environments, make_spawner, docker_client
):
    spawner = make_spawner(user_options={"image": environments["plain"]})
    with pytest.raises(EnvironmentRefused, match="not an environment built by"):
        await spawner.start()
    assert no_container(docker_client, spawner)


async def test_refuses_a_missing_image(environments, make_spawner, docker_client):
    spawner = make_spawner(user_options={"image": "tljh-repo2docker-test/no-such-image:1"})
    with pytest.raises(EnvironmentRefused, match="There is no environment"):
        await spawner.start()
    assert no_container(docker_client, spawner)


async def test_container_gets_the_label_limits(environments, make_spawner, docker_client):
    spawner = make_spawner(user_options={"image": environments["small"]}, mem_limit="1G")
    ip, port = await spawner.start()
    assert ip == "127.0.0.1" and port > 0

    host_config = container_of(docker_client, spawner)["HostConfig"]
    assert host_config["Memory"] == 512 * MIB
    assert host_config["CpuQuota"] == 50_000
    assert host_config["CpuPeriod"] == 100_000
    assert spawner.get_state()["environment_image"] == environments["small"]
    await spawner.stop()


async def test_configured_limits_without_labels(environments, make_spawner, docker_client):
    spawner = make_spawner(user_options={"image": environments["other"]}, mem_limit="1G")
    await spawner.start()
    host_config = container_of(docker_client, spawner)["HostConfig"]
    assert host_config["Memory"] == 1024 * MIB
    assert not host_config["CpuQuota"]
    await spawner.stop()


async def test_another_environment_gets_a_new_container(environments, make_spawner, docker_client):
    spawner = make_spawner(user_options={"image": environments["small"]})
    await spawner.start()
    await spawner.stop()
    first = container_of(docker_client, spawner)["Id"]

    # A later start of the same server without options: the same container.
    spawner.user_options = {}
    await spawner.start()
    assert container_of(docker_client, spawner)["Id"] == first
    await spawner.stop()

    spawner.user_options = {"image": environments["other"]}
    await spawner.start()
    container = container_of(docker_client, spawner)
    assert container["Id"] != first
    assert container["Image"] == docker_client.inspect_image(environments["other"])["Id"]
    assert container["HostConfig"]["Memory"] == 0  # no label, nothing configured
    await spawner.stop()

    await spawner.delete_forever()
    assert no_container(docker_client, spawner)


async def test_form_offers_built_environments_only(environments, make_spawner):
    form = await make_spawner().get_options_form()
    assert f'value="{environments["small"]}"' in form
    assert f'value="{environments["other"]}"' in form
    assert f'value="{environments["plain"]}"' not in form


# -- homes, upgrades from 3.x, start-up failures ---------------------------------------


def docker_out(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def in_volume(volume, script, image=None):
    """Run ``sh -c script`` as root in a throw-away container with ``volume`` as the home (``~``)."""
    from tests.helpers.fixtures import SINGLEUSER_IMAGE

    return docker_out(
        "run", "--rm", "-u", "0", "-e", "HOME=/home/jovyan", "-v", f"{volume}:/home/jovyan",
        image or SINGLEUSER_IMAGE, "sh", "-c", script,
    )


def home_volume(spawner):
    return spawner.home_for(spawner.environment_uid).source


def old_container(name, image, script):
    """A container like 3.x's: no home mounted, files in its own writable layer."""
    docker_out("run", "--name", name, image, "sh", "-c", script)


async def test_a_3x_container_is_replaced_and_its_home_copied(
    environments, make_spawner, docker_client
):
    spawner = make_spawner(user_options={"image": environments["small"]})
    old_container(
        spawner.object_name,
        environments["plain"],
        "mkdir -p ~/work && echo 'written under 3.x' > ~/work/notes.txt",
    )
    old_id = container_of(docker_client, spawner)["Id"]
    await spawner.start()
    new = container_of(docker_client, spawner)
    assert new["Id"] != old_id
    volume = home_volume(spawner)
    assert {m["Destination"]: m.get("Name") for m in new["Mounts"]}["/home/jovyan"] == volume
    listing = in_volume(volume, "cat ~/work/notes.txt; stat -c %u ~/work/notes.txt; ls -A ~")
    assert listing.splitlines()[:2] == ["written under 3.x", "1000"]
    assert ".bashrc" in listing  # the old home came whole
    await spawner.stop()

    # A second old server of the same user: its files go beside, nothing is overwritten.
    second = make_spawner(server_name="second", user_options={"image": environments["small"]})
    old_container(second.object_name, environments["plain"], "mkdir -p ~/work && echo other > ~/work/notes.txt")
    second_old = container_of(docker_client, second)["Id"]
    await second.start()
    assert home_volume(second) == volume
    assert in_volume(volume, "cat ~/work/notes.txt") == "written under 3.x\n"
    recovered = f"recovered-second-{second_old[:12]}"
    assert in_volume(volume, f"cat ~/{recovered}/work/notes.txt") == "other\n"
    await second.stop()


async def test_stop_with_remove_keeps_the_home_of_a_running_old_container(
    environments, make_spawner, docker_client
):
    spawner = make_spawner(user_options={"image": environments["small"]}, remove=True)
    docker_out(
        "run", "-d", "--name", spawner.object_name, environments["plain"],
        "sh", "-c", "echo 'not saved yet' > ~/draft.txt; trap 'exit 0' TERM; sleep 300 & wait",
    )
    spawner.environment_image = environments["small"]
    await spawner.stop()
    assert no_container(docker_client, spawner)
    assert in_volume(home_volume(spawner), "cat ~/draft.txt") == "not saved yet\n"


async def test_home_outlives_remove_and_delete_forever(environments, make_spawner, docker_client):
    spawner = make_spawner(user_options={"image": environments["small"]}, remove=True)
    await spawner.start()
    volume = home_volume(spawner)
    docker_out("exec", spawner.object_name, "sh", "-c", "echo kept > ~/kept.txt")
    await spawner.stop()
    assert no_container(docker_client, spawner)
    await spawner.delete_forever()
    assert in_volume(volume, "cat ~/kept.txt") == "kept\n"
    labels = docker_client.inspect_volume(volume)["Labels"]
    assert labels["tljh_repo2docker.home.user"] == spawner.user.name
    # the home outlives them; the next server finds it
    again = make_spawner(user_options={"image": environments["other"]})
    await again.start()
    assert docker_out("exec", again.object_name, "cat", "/home/jovyan/kept.txt") == "kept\n"
    await again.stop()


async def test_home_is_given_to_a_changed_user_id(environments, make_spawner):
    first = make_spawner(user_options={"image": environments["small"]})
    await first.start()
    docker_out("exec", first.object_name, "sh", "-c", "mkdir -p ~/work && echo x > ~/work/f")
    await first.stop()
    second = make_spawner(user_options={"image": environments["small"]}, image_user_id=1234)
    await second.start()
    owners = in_volume(home_volume(second), "stat -c %u ~ ~/work ~/work/f ~/.bashrc")
    assert owners.split() == ["1234"] * 4
    await second.stop()


async def test_per_environment_and_per_server_homes(environments, make_spawner):
    per_env = make_spawner(user_options={"image": environments["small"]}, home_scope="environment")
    await per_env.start()
    small_home = home_volume(per_env)
    await per_env.stop()
    per_env.user_options = {"image": environments["other"]}
    await per_env.start()
    assert home_volume(per_env) != small_home
    labels = docker_out("volume", "inspect", home_volume(per_env), "-f", "{{json .Labels}}")
    assert json.loads(labels)["tljh_repo2docker.home.environment"] == per_env.environment_uid
    await per_env.stop()

    per_server = make_spawner(
        server_name="srv", user_options={"image": environments["small"]}, home_scope="server"
    )
    await per_server.start()
    labels = json.loads(docker_out("volume", "inspect", home_volume(per_server), "-f", "{{json .Labels}}"))
    assert labels["tljh_repo2docker.home.server"] == "srv"
    assert home_volume(per_server).endswith("--srv")
    await per_server.stop()


async def test_no_home_and_a_shared_read_only_mount(environments, make_spawner, docker_client, tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    tmp_path.chmod(0o755)  # readable by the image's user
    spawner = make_spawner(
        user_options={"image": environments["small"]},
        home_scope="none",
        shared_data_source=str(tmp_path),
    )
    await spawner.start()
    mounts = {m["Destination"]: m for m in container_of(docker_client, spawner)["Mounts"]}
    assert "/home/jovyan" not in mounts
    assert mounts["/srv/shared"]["RW"] is False
    assert docker_out("exec", spawner.object_name, "cat", "/srv/shared/data.csv") == "a,b\n"
    await spawner.stop()


async def test_host_directory_homes(environments, make_spawner, docker_client, tmp_path):
    spawner = make_spawner(
        user_options={"image": environments["small"]},
        home_host_template=str(tmp_path / "homes" / "{username}"),
    )
    await spawner.start()
    home = Path(home_volume(spawner))
    assert home.parent == tmp_path / "homes"
    assert home.is_dir() and home.stat().st_uid == 1000
    docker_out("exec", spawner.object_name, "sh", "-c", "echo on-host > ~/h.txt")
    assert (home / "h.txt").read_text() == "on-host\n"
    await spawner.stop()


@pytest.fixture
def upstream_image(test_images):
    """An image of 3.x, relabelled the way the service's upgrade does: same name, our labels added."""
    name = f"hm-upg-{uuid.uuid4().hex[:8]}:main"
    labels = {**UPSTREAM["image_labels"], "tljh_repo2docker.image_name": name}
    args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    old = f"{name}-3x"
    subprocess.run(["docker", "build", "-q", "-t", old, *args, "-"], input=f"FROM {test_images['singleuser']}\n",
                   text=True, check=True, capture_output=True)
    build_environment(old, name, uid=uuid.uuid4().hex, image_prefix="tljh-r2d-upgraded/")
    yield name
    subprocess.run(["docker", "rmi", "-f", name, old], capture_output=True)


async def test_a_3x_server_restarts_from_its_relabelled_image(upstream_image, make_spawner, docker_client):
    options = {**UPSTREAM["user_options"], "image": upstream_image}  # no "environment" key
    spawner = make_spawner(user_options=options, image_prefix="tljh-r2d-upgraded/")
    assert upstream_image in [i["image_name"] for i in await spawner.list_images()]
    await spawner.start()
    host_config = container_of(docker_client, spawner)["HostConfig"]
    assert host_config["Memory"] == 1024 * MIB  # 3.x's mem_limit label
    assert host_config["CpuQuota"] == 50_000
    await spawner.stop()

    other_hub = make_spawner(user_options=options, image_prefix="tljh-r2d-elsewhere/")
    with pytest.raises(EnvironmentRefused, match="not one of this hub's environments"):
        await other_hub.start()


async def test_an_image_without_cmd_runs_jupyterhub_singleuser(environments, make_spawner, docker_client):
    tag = f"tljh-repo2docker-test/spawner-nocmd:{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "--label", f"tljh_repo2docker.uid=nocmd{tag[-8:]}", "-"],
        input=f"FROM {environments['plain']}\nCMD []\n", text=True, check=True, capture_output=True,
    )
    try:
        spawner = make_spawner(user_options={"image": tag}, cmd=None)
        await spawner.start()
        assert container_of(docker_client, spawner)["Config"]["Cmd"][0] == "jupyterhub-singleuser"
        await spawner.stop()
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


async def test_a_failed_start_says_why(environments, make_spawner, docker_client):
    spawner = make_spawner(
        user_options={"image": environments["small"]}, network_name="tljh-r2d-no-such-network"
    )
    with pytest.raises(SpawnFailed) as info:
        await spawner.start()
    message = info.value.jupyterhub_message
    assert "could not be started from 'Small'" in message
    assert "tljh-r2d-no-such-network" in message


async def test_module_level_list_images_of_3x(environments, upstream_image):
    from tljh_repo2docker.docker import list_images

    images = {i["image_name"]: i for i in await list_images()}
    assert environments["small"] in images and environments["plain"] not in images
    assert images[environments["small"]]["mem_limit"] == "512M"
    assert images[environments["small"]]["cpu_limit"] == "0.5"
    # with a prefix: only that hub's, relabelled 3.x images included
    assert [i["image_name"] for i in await list_images("tljh-r2d-upgraded/")] == [upstream_image]


async def test_a_new_image_adds_its_home_files_without_overwriting(environments, make_spawner, test_images):
    tag = f"tljh-repo2docker-test/spawner-files:{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "--label", f"tljh_repo2docker.uid=files{tag[-8:]}", "-"],
        input=(
            f"FROM {test_images['singleuser']}\n"
            "RUN echo 'from the repository' > /home/jovyan/new.ipynb"
            " && echo 'the image version' > /home/jovyan/edited.txt\n"
        ),
        text=True, check=True, capture_output=True,
    )
    try:
        spawner = make_spawner(user_options={"image": environments["small"]})
        await spawner.start()
        docker_out("exec", spawner.object_name, "sh", "-c", "echo 'my version' > ~/edited.txt")
        await spawner.stop()
        spawner.user_options = {"image": tag}
        await spawner.start()
        home = home_volume(spawner)
        assert in_volume(home, "cat ~/new.ipynb ~/edited.txt; stat -c %u ~/new.ipynb") == (
            "from the repository\nmy version\n1000\n"
        )
        await spawner.stop()
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
