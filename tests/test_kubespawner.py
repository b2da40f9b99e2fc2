"""Repo2DockerKubeSpawner: the pod manifest KubeSpawner itself makes from user_options.

No cluster is needed: KubeSpawner is built with ``_mock=True`` (its own test
mode) and a kubeconfig that points nowhere; it only makes the manifest.
"""

import pytest

pytest.importorskip("kubespawner")

from kubernetes_asyncio.config import kube_config  # noqa: E402
from kubespawner.clients import load_config  # noqa: E402
from tornado.web import HTTPError  # noqa: E402
from traitlets.config import Config  # noqa: E402

from tljh_repo2docker.spawner import EnvironmentRefused  # noqa: E402

GIB = 1024**3

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:9"}
users:
- name: nobody
  user: {token: unused}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody, namespace: default}
current-context: nowhere
"""


@pytest.fixture
def make_spawner(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    # kubernetes_asyncio reads $KUBECONFIG once, at import.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    load_config.cache_clear()

    from tljh_repo2docker.spawner import Repo2DockerKubeSpawner

    def make(user_options, **config):
        c = Config()
        for name, value in config.items():
            setattr(c.KubeSpawner, name, value)
        spawner = Repo2DockerKubeSpawner(config=c, _mock=True)
        spawner.user_options = user_options
        return spawner

    yield make
    load_config.cache_clear()


async def manifest_of(spawner):
    # What KubeSpawner._start() does before it creates the pod.
    await spawner.load_user_options()
    return await spawner.get_pod_manifest()


def container(pod):
    return pod.spec.containers[0]


async def test_manifest_carries_image_limits_and_node_selector(make_spawner):
    spawner = make_spawner(
        {
            "image": "registry.example.org/r2d/python-env:abc",
            "environment": "abc123",
            "metadata": {"node_selector": {"gpu": "yes"}, "memory": "2G", "cpu": 1.5},
        },
        node_selector={"pool": "users"},
        mem_limit="1G",
        cpu_limit=0.5,
    )
    pod = await manifest_of(spawner)

    assert container(pod).image == "registry.example.org/r2d/python-env:abc"
    assert container(pod).resources.limits == {"memory": 2 * GIB, "cpu": 1.5}
    assert pod.spec.node_selector == {"pool": "users", "gpu": "yes"}
    env = {e.name: e.value for e in container(pod).env}
    assert env["JUPYTER_IMAGE"] == "registry.example.org/r2d/python-env:abc"
    assert env["MEM_LIMIT"] == str(2 * GIB)
    # The configured values stay the fallback for the next start.
    assert (spawner.mem_limit, spawner.cpu_limit) == (GIB, 0.5)
    assert spawner.node_selector == {"pool": "users"}


async def test_configured_limits_when_the_environment_has_none(make_spawner):
    spawner = make_spawner(
        {"image": "python-env:abc", "metadata": {"memory": None, "cpu": None}},
        mem_limit="1G",
        cpu_limit=0.5,
    )
    pod = await manifest_of(spawner)
    assert container(pod).resources.limits == {"memory": GIB, "cpu": 0.5}
    assert not pod.spec.node_selector


async def test_environment_node_selector_wins_over_configured(make_spawner):
    spawner = make_spawner(
        {"image": "python-env:abc", "metadata": {"node_selector": {"pool": "gpu"}}},
        node_selector={"pool": "users", "zone": "a"},
    )
    pod = await manifest_of(spawner)
    assert pod.spec.node_selector == {"pool": "gpu", "zone": "a"}


@pytest.mark.parametrize(
    "user_options, message",
    [
        ({}, "No environment was chosen"),
        ({"image": ""}, "No environment was chosen"),
        ({"image": "x:1", "metadata": {"memory": "lots"}}, "memory limit"),
        ({"image": "x:1", "metadata": {"cpu": -1}}, "CPU limit"),
        ({"image": "x:1", "metadata": {"node_selector": ["gpu"]}}, "node selector"),
    ],
)
async def test_refuses_unusable_options(make_spawner, user_options, message):
    with pytest.raises(EnvironmentRefused) as info:
        await manifest_of(make_spawner(user_options))
    assert info.value.status_code == 400
    assert message in info.value.jupyterhub_message


async def test_config_section_is_the_class_name(make_spawner):
    from tljh_repo2docker import Repo2DockerKubeSpawner

    c = Config()
    c.Repo2DockerKubeSpawner.mem_limit = "3G"
    spawner = Repo2DockerKubeSpawner(config=c, _mock=True)
    assert spawner.mem_limit == 3 * GIB


async def test_image_prefix_limits_what_users_can_start(make_spawner):
    from tljh_repo2docker import Repo2DockerKubeSpawner

    c = Config()
    c.Repo2DockerKubeSpawner.image_prefix = "registry.example.org/binder-"
    spawner = Repo2DockerKubeSpawner(config=c, _mock=True)
    spawner.user_options = {"image": "docker.io/evil/miner:latest"}
    with pytest.raises(EnvironmentRefused) as info:
        await manifest_of(spawner)
    assert "not one of this hub's environments" in info.value.jupyterhub_message
    spawner.user_options = {"image": "registry.example.org/binder-abc:123"}
    pod = await manifest_of(spawner)
    assert container(pod).image == "registry.example.org/binder-abc:123"


@pytest.fixture
async def service_db(tmp_path):
    """The service's own database (made by its migrations) with one built and
    one queued environment."""
    from tljh_repo2docker.db import store
    from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db

    db_url = f"sqlite:///{tmp_path / 'service.sqlite'}"
    engine = make_engine(db_url)
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    common = dict(repo="https://example.org/r.git", ref="HEAD", build_args={})
    await store.create_environment(
        sessions, uid="built1", name="Built", image_name="registry.example.org/binder-built:1",
        node_selector={"gpu": "yes"}, memory="2G", cpu="1.5", **common,
    )
    await store.update_environment(sessions, "built1", status="built", image_id="sha256:abc")
    await store.create_environment(
        sessions, uid="queued1", name="Queued", image_name="registry.example.org/binder-queued:1",
        node_selector={}, **common,
    )
    yield db_url
    await engine.dispose()


async def test_with_db_url_the_stored_environment_wins_over_user_options(make_spawner, service_db):
    # What a user could send through the hub's REST API: another image, more
    # memory and CPU, another node pool, for a real environment's uid.
    spawner = make_spawner(
        {
            "image": "registry.example.org/binder-miner:1",
            "environment": "built1",
            "metadata": {"memory": "64G", "cpu": 32, "node_selector": {"gpu": "no", "pool": "big"}},
        },
        node_selector={"pool": "users"},
    )
    spawner.db_url = service_db
    spawner.image_prefix = "registry.example.org/binder-"
    pod = await manifest_of(spawner)
    assert container(pod).image == "registry.example.org/binder-built:1"
    assert container(pod).resources.limits == {"memory": 2 * GIB, "cpu": 1.5}
    assert pod.spec.node_selector == {"pool": "users", "gpu": "yes"}
    assert spawner.user_options["metadata"]["display_name"] == "Built"


@pytest.mark.parametrize(
    "user_options, message",
    [
        ({"image": "registry.example.org/binder-built:1"}, "No environment was chosen"),
        ({"environment": "nope"}, "no longer exists"),
        ({"environment": "queued1"}, "is not built (status: queued)"),
        ({"environment": ["built1"]}, "No environment was chosen"),
    ],
)
async def test_with_db_url_only_built_environments_start(make_spawner, service_db, user_options, message):
    spawner = make_spawner(user_options)
    spawner.db_url = service_db
    with pytest.raises(EnvironmentRefused) as info:
        await manifest_of(spawner)
    assert message in info.value.jupyterhub_message


async def test_with_db_url_an_unreadable_database_is_a_503(make_spawner, tmp_path):
    spawner = make_spawner({"environment": "built1"})
    spawner.db_url = f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite'}"
    with pytest.raises(HTTPError) as info:
        await manifest_of(spawner)
    assert info.value.status_code == 503
    assert "database cannot be read" in info.value.jupyterhub_message
