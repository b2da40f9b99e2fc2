"""Repo2DockerSpawner's own steps, over a small in-memory Docker engine.

The fake stands for the docker-py ``APIClient`` that DockerSpawner calls (one
class-level client), so DockerSpawner's own code runs unchanged. These tests
cover the edge cases; ``test_spawner_docker.py`` runs against a real engine.
"""

import html
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.helpers.fakes import FakeDocker, env_labels, spawner_maker
from tljh_repo2docker import spawner as spawner_module
from tljh_repo2docker.spawner import EnvironmentRefused, Repo2DockerSpawner, SpawnFailed

GIB = 1024**3


@pytest.fixture
def fake_docker():
    return FakeDocker()


@pytest.fixture
def make_spawner(fake_docker):
    return spawner_maker(fake_docker, Repo2DockerSpawner)


async def test_options_from_form_reads_the_labels(fake_docker, make_spawner):
    fake_docker.add_image("python-env:main", env_labels())
    spawner = make_spawner()
    options = await spawner.options_from_form({"image": ["python-env:main"]})
    assert options["image"] == "python-env:main"
    assert options["environment"] == "abc123"
    assert options["metadata"]["node_selector"] == {"gpu": "yes"}


@pytest.mark.parametrize(
    "formdata, message",
    [
        ({}, "No environment was chosen"),
        ({"image": [""]}, "No environment was chosen"),
        ({"image": ["missing:latest"]}, "There is no environment 'missing:latest'"),
        ({"image": ["plain:latest"]}, "'plain:latest' is not an environment built by"),
    ],
)
async def test_options_from_form_refuses(fake_docker, make_spawner, formdata, message):
    fake_docker.add_image("plain:latest", {"maintainer": "someone"})
    with pytest.raises(EnvironmentRefused) as info:
        await make_spawner().options_from_form(formdata)
    assert info.value.status_code == 400
    assert message in info.value.jupyterhub_message


@pytest.mark.parametrize(
    "user_options",
    [{}, {"image": "plain:latest"}, {"image": "missing:latest"}, {"image": ["a", "list"]}],
)
async def test_start_refuses_without_a_container(fake_docker, make_spawner, user_options):
    fake_docker.add_image("plain:latest", None)
    spawner = make_spawner(user_options=user_options)
    with pytest.raises(EnvironmentRefused):
        await spawner.start()
    assert fake_docker.created == []


async def test_start_refuses_unusable_limit_labels(fake_docker, make_spawner):
    fake_docker.add_image("bad:latest", env_labels(mem_limit="lots"))
    spawner = make_spawner(user_options={"image": "bad:latest"})
    with pytest.raises(EnvironmentRefused, match="memory limit"):
        await spawner.start()
    assert fake_docker.created == []


@pytest.mark.parametrize("node_selector", ["not json", "[1, 2]"])
async def test_start_refuses_unusable_node_selector_label(
    fake_docker, make_spawner, node_selector
):
    fake_docker.add_image("bad:latest", env_labels(node_selector=node_selector))
    spawner = make_spawner(user_options={"image": "bad:latest"})
    with pytest.raises(EnvironmentRefused, match="node selector is not a JSON object"):
        await spawner.start()
    assert fake_docker.created == []


async def test_limits_from_labels_else_configured(fake_docker, make_spawner):
    fake_docker.add_image("big:latest", env_labels(uid="big", mem_limit="2G", cpu_limit="1.5"))
    fake_docker.add_image("plain-env:latest", env_labels(uid="p", mem_limit="", cpu_limit=""))
    spawner = make_spawner(mem_limit="1G", cpu_limit=0.5, user_options={"image": "big:latest"})

    assert await spawner.start() == ("127.0.0.1", 32768)
    host_config = fake_docker.created[-1]["HostConfig"]
    assert host_config["Memory"] == 2 * GIB
    assert host_config["CpuQuota"] == 150_000 and host_config["CpuPeriod"] == 100_000
    # The configured limits are still the fallback for the next environment.
    assert (spawner.mem_limit, spawner.cpu_limit) == (GIB, 0.5)

    await spawner.stop()
    spawner.user_options = {"image": "plain-env:latest"}
    await spawner.start()
    host_config = fake_docker.created[-1]["HostConfig"]
    assert host_config["Memory"] == GIB
    assert host_config["CpuQuota"] == 50_000


async def test_state_round_trip_restarts_the_same_environment(fake_docker, make_spawner):
    fake_docker.add_image("python-env:main", env_labels())
    first = make_spawner(user_options={"image": "python-env:main"})
    await first.start()
    await first.stop()
    state = first.get_state()
    assert state["environment_image"] == "python-env:main"

    # After a hub restart: a new spawner object, the saved state, no user_options.
    again = make_spawner(user_options={})
    again.load_state(state)
    assert again.environment_image == "python-env:main"
    await again.start()
    assert again.image == "python-env:main"
    assert len(fake_docker.created) == 1, "the stopped container is started again"
    assert again.get_state()["environment_image"] == "python-env:main"


async def test_another_image_gets_a_new_container(fake_docker, make_spawner):
    fake_docker.add_image("one:latest", env_labels(uid="one"))
    fake_docker.add_image("two:latest", env_labels(uid="two"))
    spawner = make_spawner(user_options={"image": "one:latest"})
    await spawner.start()
    await spawner.stop()
    old = fake_docker.created[-1]

    spawner.user_options = {"image": "two:latest"}
    await spawner.start()
    assert fake_docker.removed == [old]
    assert len(fake_docker.containers) == 1
    new = fake_docker.created[-1]
    assert new["Name"] == old["Name"]
    assert new["Image"] == fake_docker.images_by_name["two:latest"]["Id"]


async def test_rebuilt_image_gets_a_new_container(fake_docker, make_spawner):
    fake_docker.add_image("one:latest", env_labels(uid="one", mem_limit="1G"))
    spawner = make_spawner(user_options={"image": "one:latest"})
    await spawner.start()
    await spawner.stop()
    # Rebuilt under the same name, with another limit.
    fake_docker.add_image("one:latest", env_labels(uid="one", mem_limit="3G"))
    await spawner.start()
    assert len(fake_docker.removed) == 1
    assert fake_docker.created[-1]["HostConfig"]["Memory"] == 3 * GIB


async def test_delete_forever_removes_the_container(fake_docker, make_spawner):
    fake_docker.add_image("one:latest", env_labels(uid="one"))
    spawner = make_spawner(user_options={"image": "one:latest"})
    await spawner.start()
    await spawner.stop()
    await spawner.delete_forever()
    assert fake_docker.containers == {}


async def test_form_lists_environments_escaped(fake_docker, make_spawner):
    fake_docker.add_image(
        "evil:latest",
        env_labels(uid="e", image="evil:latest", display_name='<script>alert("x")</script>'),
    )
    fake_docker.add_image(
        "a-env:latest",
        env_labels(uid="a", image="a-env:latest", display_name="(A) env", cpu_limit=""),
    )
    fake_docker.add_image("plain:latest", {"maintainer": "x"})
    fake_docker.images_by_name["old"] = {  # a superseded build: labelled, untagged
        "Id": "sha256:old",
        "RepoTags": ["<none>:<none>"],
        "Labels": env_labels(uid="old"),
    }
    spawner = make_spawner(cpu_limit=2.0)
    form = await spawner.get_options_form()

    assert "<script>" not in form
    assert html.escape('<script>alert("x")</script>') in form
    assert form.count('type="radio" name="image"') == 2
    assert 'value="a-env:latest" required checked' in form  # sorted by name, first checked
    assert "CPUs: 2" in form  # the configured CPU limit for an environment without one
    assert "Memory: 2G" in form and "CPUs: 1.5" in form


async def test_form_without_environments_says_so(make_spawner):
    form = await make_spawner().get_options_form()
    assert "No environment has been built yet" in form
    assert "radio" not in form


def test_module_imports_without_kubespawner():
    code = (
        "import sys, tljh_repo2docker.spawner; "
        "assert 'kubespawner' not in sys.modules, 'kubespawner imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kube_spawner_names_the_extra_when_kubespawner_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "kubespawner", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"tljh-repo2docker\[kubernetes\]"):
        spawner_module._make_kube_spawner()


async def test_image_prefix_limits_the_environments(fake_docker, make_spawner):
    """With image_prefix set, another hub's environment on the same engine is neither
    offered nor started."""
    fake_docker.add_image("mine/python-env:main", env_labels())
    fake_docker.add_image("theirs/python-env:main", env_labels())
    spawner = make_spawner(image_prefix="mine/")
    offered = [env.image for env in await spawner.built_environments()]
    assert offered == ["mine/python-env:main"]
    with pytest.raises(EnvironmentRefused, match="not one of this hub's environments"):
        await spawner.inspect_environment("theirs/python-env:main")
    assert (await spawner.inspect_environment("mine/python-env:main")).uid == "abc123"


# -- the 3.x surface: list_images, set_limits, SpawnerMixin ----------------------------


def test_the_3x_names_import_from_the_package_root():
    code = (
        "from tljh_repo2docker import TLJH_R2D_ADMIN_SCOPE, SpawnerMixin, "
        "Repo2DockerSpawner, tljh_custom_jupyterhub_config\n"
        "from tljh_repo2docker.spawner import Repo2DockerSpawner as old\n"
        "from tljh_repo2docker.docker import list_images\n"
        "from dockerspawner import DockerSpawner\n"
        "assert old is Repo2DockerSpawner and issubclass(old, (SpawnerMixin, DockerSpawner))\n"
        "assert callable(tljh_custom_jupyterhub_config)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_list_images_has_the_3x_keys(fake_docker, make_spawner):
    image_id = fake_docker.add_image("python-env:main", env_labels())
    [image] = await make_spawner().list_images()
    assert image == {
        "image_name": "python-env:main",
        "display_name": "Python env",
        "mem_limit": "2G",
        "cpu_limit": "1.5",
        "repo": "https://example.org/repo.git",
        "ref": "main",
        "status": "built",
        "uid": "abc123",
        "node_selector": {"gpu": "yes"},
        "image_id": image_id,
    }


@pytest.fixture
def filtered(fake_docker):
    """A third-party spawner that offers only the environments whose name has "ok"."""

    async def list_images(self):
        return [i for i in await Repo2DockerSpawner.list_images(self) if "ok" in i["display_name"]]

    fake_docker.add_image("ok-env:1", env_labels(uid="ok", image="ok-env:1", display_name="ok env"))
    fake_docker.add_image("no-env:1", env_labels(uid="no", image="no-env:1", display_name="other"))
    return spawner_maker(fake_docker, Repo2DockerSpawner, list_images=list_images)


async def test_a_filtered_list_decides_the_form_and_the_start(fake_docker, filtered):
    spawner = filtered()
    form = await spawner.get_options_form()
    assert 'value="ok-env:1"' in form and "no-env" not in form
    with pytest.raises(EnvironmentRefused, match="not one of the environments offered to you"):
        await spawner.options_from_form({"image": ["no-env:1"]})
    spawner.user_options = {"image": "no-env:1"}
    with pytest.raises(EnvironmentRefused, match="not one of the environments offered to you"):
        await spawner.start()
    assert fake_docker.created == []
    spawner.user_options = await spawner.options_from_form({"image": ["ok-env:1"]})
    await spawner.start()
    assert fake_docker.created[-1]["Image"] == fake_docker.images_by_name["ok-env:1"]["Id"]


async def test_set_limits_twice_then_start_restores_the_configured(fake_docker, make_spawner):
    fake_docker.add_image("big:1", env_labels(uid="big", mem_limit="2G", cpu_limit="1.5"))
    spawner = make_spawner(mem_limit="1G", cpu_limit=0.5, user_options={"image": "big:1"})
    await spawner.set_limits()
    await spawner.set_limits()
    assert (spawner.mem_limit, spawner.cpu_limit) == (2 * GIB, 1.5)
    await spawner.start()
    assert fake_docker.created[-1]["HostConfig"]["Memory"] == 2 * GIB
    assert (spawner.mem_limit, spawner.cpu_limit) == (GIB, 0.5)


async def test_state_records_the_image_id_started_from(fake_docker, make_spawner):
    image_id = fake_docker.add_image("one:1", env_labels(uid="one"))
    spawner = make_spawner(user_options={"image": "one:1"})
    await spawner.start()
    state = spawner.get_state()
    assert state["image_id"] == image_id and state["environment_uid"] == "one"


async def test_without_cmd_and_without_image_cmd_jupyterhub_singleuser_runs(fake_docker, make_spawner):
    fake_docker.add_image("nocmd:1", env_labels(uid="n"), cmd=None)
    spawner = make_spawner(user_options={"image": "nocmd:1"})
    await spawner.start()
    assert fake_docker.created[-1]["Config"]["Cmd"][0] == "jupyterhub-singleuser"


def test_system_user_spawners_keep_their_host_homes(fake_docker):
    from dockerspawner import SystemUserSpawner

    from tljh_repo2docker import SpawnerMixin

    class PlasmaLike(SpawnerMixin, SystemUserSpawner):
        pass

    spawner = spawner_maker(fake_docker, PlasmaLike)(user_id=1000, group_id=1000)
    assert spawner.home_scope == "none"
    assert spawner.home_for("abc") is None


@pytest.mark.parametrize(
    "scope, user, server, environment, name",
    [
        ("user", "alice", "lab", "e1", "tljh-r2d-home-alice"),
        ("server", "alice", "lab", "e1", "tljh-r2d-home-alice--lab"),
        ("server", "alice", "", "e1", "tljh-r2d-home-alice"),
        ("environment", "alice", "lab", "e1", "tljh-r2d-home-alice--env-e1"),
        ("user", "ann@example.org", "", "", "tljh-r2d-home-ann-40example.org"),
        ("user", "a-b", "", "", "tljh-r2d-home-a-2db"),
        ("user", "Ünï", "", "", "tljh-r2d-home--c3-9cn-c3-af"),
    ],
)
def test_home_volume_names(fake_docker, scope, user, server, environment, name):
    make = spawner_maker(fake_docker, Repo2DockerSpawner)
    spawner = make(server_name=server, home_scope=scope)
    spawner.user.name = user
    home = spawner.home_for(environment)
    assert home.source == name
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", home.source)  # Docker's rule for volume names
    assert home.labels["tljh_repo2docker.home.user"] == user
    assert home.labels["tljh_repo2docker.home.server"] == (server if scope == "server" else "")
    assert home.labels["tljh_repo2docker.home.environment"] == (
        environment if scope == "environment" else ""
    )


async def test_a_home_volume_of_another_hub_is_refused(fake_docker, make_spawner):
    fake_docker.add_image("mine/env:1", env_labels(uid="m", image="mine/env:1"))
    fake_docker.create_volume("tljh-r2d-home-alice", labels={"tljh_repo2docker.home.prefix": "theirs/"})
    spawner = make_spawner(image_prefix="mine/", user_options={"image": "mine/env:1"})
    with pytest.raises(SpawnFailed, match="belongs to another hub"):
        await spawner.start()
    assert fake_docker.created == []


def test_image_labels_name_the_prefix():
    from tljh_repo2docker.contract import image_labels

    env = SimpleNamespace(
        uid="u", name="n", image_name="p/n:1", repo="r", ref="main", memory=None, cpu=None,
        machine_profile=None, node_selector={}, owner=None,
    )
    assert image_labels(env, image_prefix="p/")["tljh_repo2docker.image_prefix"] == "p/"


async def test_image_home_files_are_added_once_per_image(fake_docker, make_spawner):
    fake_docker.add_image("one:1", env_labels(uid="one"))
    fake_docker.add_image("two:1", env_labels(uid="two"))
    spawner = make_spawner(user_options={"image": "one:1"})
    copies = lambda: [e for e in fake_docker.helpers if e and e[0] == "cp"]  # noqa: E731
    await spawner.start()
    await spawner.stop()
    await spawner.start()  # the same image: nothing to add
    assert copies() == [["cp", "-an", "/home/jovyan/.", "/tljh-r2d-home/"]]
    await spawner.stop()
    spawner.user_options = {"image": "two:1"}
    await spawner.start()
    assert len(copies()) == 2
    assert spawner.get_state()["home_image_id"] == fake_docker.images_by_name["two:1"]["Id"]


def test_every_spawner_setting_is_in_the_readme():
    """The README's spawner settings table names every setting the spawners add."""
    from pathlib import Path

    from tljh_repo2docker.spawners.docker import SpawnerMixin
    from tljh_repo2docker.spawners.kube import KubeEnvironment
    from tljh_repo2docker.spawners.mixin import EnvironmentMixin

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### The spawner") : readme.index("## Kubernetes and BinderHub")]
    names = set(EnvironmentMixin.class_own_traits(config=True))
    names |= set(SpawnerMixin.class_own_traits(config=True))
    names |= set(KubeEnvironment.class_own_traits(config=True))
    names |= {"db_url"}  # Repo2DockerKubeSpawner's own
    missing = sorted(name for name in names if f"`{name}`" not in section)
    assert not missing, f"spawner settings missing from the README: {missing}"
    for cls in (EnvironmentMixin, SpawnerMixin):
        for name, trait in cls.class_own_traits(config=True).items():
            assert trait.help and len(trait.help.strip().splitlines()) > 1, name


async def test_a_configured_home_volume_is_respected(fake_docker, make_spawner):
    """The classic DockerSpawner recipe, volumes = {"jupyterhub-user-{username}": "/home/jovyan"}:
    no second mount at the same place (Docker would refuse the container)."""
    fake_docker.add_image("one:1", env_labels(uid="one"))
    spawner = make_spawner(
        user_options={"image": "one:1"}, volumes={"jupyterhub-user-{username}": "/home/jovyan"}
    )
    await spawner.start()
    binds = fake_docker.created[-1]["HostConfig"]["Binds"]
    assert binds == ["jupyterhub-user-alice:/home/jovyan:rw"]
    assert fake_docker.volumes == {}
    await spawner.stop()
    await spawner.start()  # the same container: its home is the configured one
    assert len(fake_docker.created) == 1
