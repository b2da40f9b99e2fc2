"""Repo2DockerSpawner against a real Docker engine, without a hub.

The environments are the single-user test image with our labels added (what
a build leaves on an image). The servers run ``sleep`` instead of
jupyterhub-singleuser, since there is no hub to talk to: what is checked is
what the spawner asks Docker for.
"""

import subprocess
import uuid
from types import SimpleNamespace

import docker
import pytest
from jupyterhub.objects import Hub

from tljh_repo2docker.spawner import EnvironmentRefused, Repo2DockerSpawner

pytestmark = pytest.mark.docker

MIB = 1024**2


def build_environment(base, tag, **labels):
    """Tag ``base`` with environment labels, the way a build labels its image."""
    args = []
    for name, value in labels.items():
        args += ["--label", f"tljh_repo2docker.{name}={value}"]
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, *args, "-"],
        input=f"FROM {base}\n",
        text=True,
        check=True,
        capture_output=True,
    )
    return tag


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

    def make(**traits):
        orm_spawner = SimpleNamespace(name="env", server=None, user_options=None)
        spawner = Repo2DockerSpawner(
            user=user,
            orm_spawner=orm_spawner,
            hub=Hub(),
            # No hub to connect to: keep the container alive without it, and
            # stop at once on `docker stop`. The spawner's arguments land in
            # sh's $0, $1, ... and are ignored.
            cmd=["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"],
            pull_policy="never",
            **traits,
        )
        made.append(spawner)
        return spawner

    yield make
    for spawner in made:
        subprocess.run(["docker", "rm", "-f", spawner.object_name], capture_output=True)
    remove_home_volumes(f"tljh_repo2docker.home.user={user.name}")


def remove_home_volumes(label):
    """Remove the home volumes carrying ``label`` (the tests' own)."""
    names = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if names:
        subprocess.run(["docker", "volume", "rm", "-f", *names], capture_output=True)


def container_of(docker_client, spawner):
    return docker_client.inspect_container(spawner.object_name)


def no_container(docker_client, spawner):
    try:
        docker_client.inspect_container(spawner.object_name)
    except docker.errors.NotFound:
        return True
    return False


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
