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
from tests.helpers.fakes import NOWHERE_KUBECONFIG  # noqa: E402

GIB = 1024**3

KUBECONFIG = NOWHERE_KUBECONFIG


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
        # without db_url, the mock-mode tests read what user_options give
        c.Repo2DockerKubeSpawner.trust_user_options = config.pop("trust_user_options", True)
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
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.Repo2DockerKubeSpawner.mem_limit = "3G"
    spawner = Repo2DockerKubeSpawner(config=c, _mock=True)
    assert spawner.mem_limit == 3 * GIB


async def test_image_prefix_limits_what_users_can_start(make_spawner):
    from tljh_repo2docker import Repo2DockerKubeSpawner

    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
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


# -- homes: a PersistentVolumeClaim per user -------------------------------------------


def as_sent(obj):
    """A pod or claim as the Kubernetes API receives it (camelCase JSON)."""
    from kubernetes_asyncio.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def make_user_spawner(config=None, name="", user="ann", user_options=None):
    from jupyterhub.objects import Hub
    from types import SimpleNamespace

    from tljh_repo2docker import Repo2DockerKubeSpawner

    config = config or Config()
    if "trust_user_options" not in config.Repo2DockerKubeSpawner:
        config.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    spawner = Repo2DockerKubeSpawner(
        config=config,
        _mock=True,
        user=SimpleNamespace(name=user, id=7, url=f"/user/{user}/", groups=[]),
        orm_spawner=SimpleNamespace(name=name, server=None, user_options=None),
        hub=Hub(),
    )
    spawner.user_options = user_options or {
        "image": "registry.example.org/r2d/python-env:abc",
        "environment": "env1",
        "metadata": {},
    }
    return spawner


async def test_pod_mounts_the_users_home_claim(make_spawner):
    spawner = make_user_spawner()
    pod = await manifest_of(spawner)
    assert spawner.pvc_name == "tljh-r2d-home-ann"
    assert spawner.storage_pvc_ensure is True
    assert spawner.delete_pvc is False, "deleting a server must not delete the user's files"
    sent = as_sent(pod)["spec"]
    [volume] = [v for v in sent["volumes"] if v["name"] == "tljh-r2d-home"]
    assert volume["persistentVolumeClaim"]["claimName"] == "tljh-r2d-home-ann"
    [mount] = [m for m in sent["containers"][0]["volumeMounts"] if m["name"] == "tljh-r2d-home"]
    assert mount["mountPath"] == "/home/jovyan"
    assert sent["securityContext"]["fsGroup"] == 1000
    # a named server of the same user: the same claim
    other = make_user_spawner(name="analysis")
    await manifest_of(other)
    assert other.pvc_name == "tljh-r2d-home-ann"
    # the configured volumes are kept, and stay as configured
    assert spawner.volumes == [] and spawner.volume_mounts == []


async def test_claim_carries_the_home_labels(make_spawner):
    spawner = make_user_spawner(name="lab")
    await manifest_of(spawner)
    pvc = spawner.get_pvc_manifest()
    assert pvc.metadata.name == "tljh-r2d-home-ann"
    assert pvc.spec.resources.requests["storage"] == "10Gi"
    labels = pvc.metadata.labels
    assert labels["tljh_repo2docker.home"] == "1"
    assert labels["tljh_repo2docker.home.user"] == "ann"
    assert labels["tljh_repo2docker.home.server"] == ""  # one home per user
    assert pvc.metadata.annotations["tljh_repo2docker.home.user"] == "ann"


async def test_home_per_environment_and_none(make_spawner):
    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.Repo2DockerKubeSpawner.home_scope = "environment"
    spawner = make_user_spawner(c)
    await manifest_of(spawner)
    assert spawner.pvc_name == "tljh-r2d-home-ann--env-env1"
    assert spawner.get_pvc_manifest().metadata.labels["tljh_repo2docker.home.environment"] == "env1"
    spawner.user_options = {"image": "registry.example.org/r2d/other:1", "environment": "env2"}
    await manifest_of(spawner)
    assert spawner.pvc_name == "tljh-r2d-home-ann--env-env2"

    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.Repo2DockerKubeSpawner.home_scope = "none"
    spawner = make_user_spawner(c)
    pod = await manifest_of(spawner)
    assert not [v for v in as_sent(pod)["spec"].get("volumes", []) if v["name"] == "tljh-r2d-home"]
    assert spawner.storage_pvc_ensure is False


async def test_a_configured_home_mount_is_respected(make_spawner):
    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.KubeSpawner.volumes = [{"name": "nfs-home", "nfs": {"server": "nfs", "path": "/homes"}}]
    c.KubeSpawner.volume_mounts = [{"name": "nfs-home", "mountPath": "/home/jovyan"}]
    pod = await manifest_of(make_user_spawner(c))
    mounts = as_sent(pod)["spec"]["containers"][0]["volumeMounts"]
    home_mounts = [m for m in mounts if m["mountPath"] == "/home/jovyan"]
    assert [m["name"] for m in home_mounts] == ["nfs-home"]


async def test_with_db_url_the_form_lists_built_environments(make_spawner, service_db):
    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.Repo2DockerKubeSpawner.db_url = service_db
    spawner = make_user_spawner(c, user_options={})
    form = await spawner.get_options_form()
    assert 'value="registry.example.org/binder-built:1"' in form
    assert "binder-queued" not in form
    options = await spawner.options_from_form({"image": ["registry.example.org/binder-built:1"]})
    assert options == {"image": "registry.example.org/binder-built:1", "environment": "built1"}
    with pytest.raises(EnvironmentRefused):
        await spawner.options_from_form({"image": ["registry.example.org/binder-queued:1"]})
    # without the database there is nothing to list: no form
    assert await make_user_spawner(user_options={}).get_options_form() == ""


async def test_the_default_prefix_keeps_every_image(make_spawner):
    """On Kubernetes images are named by their registry: no prefix unless one is set
    (the Docker spawner's default is the service's, tests/test_image_prefix_defaults.py)."""
    spawner = make_spawner({"image": "registry.example.org/r2d/python-env:abc"})
    assert spawner.image_prefix == ""


# -- configured through hub_config.configure() only (issue 25) ---------------------------


async def test_configure_gives_the_kube_spawner_the_services_database(make_spawner, service_db):
    """``hub_config.configure(c, args=["--db_url=…"])`` is all an admin writes: the Kubernetes
    spawner reads the service's database too, so forged user_options (a foreign image, more
    memory and CPU, another node pool, an environment not built) change nothing."""
    from tljh_repo2docker import hub_config

    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.KubeSpawner.node_selector = {"pool": "users"}
    hub_config.configure(c, args=[f"--db_url={service_db}", "--image_prefix=registry.example.org/binder-"])
    forged = {
        "image": "docker.io/evil/miner:latest",
        "environment": "built1",
        "metadata": {"memory": "64G", "cpu": 32, "node_selector": {"gpu": "no", "pool": "big"}},
    }
    spawner = make_user_spawner(c, user_options=forged)
    assert (spawner.db_url, spawner.image_prefix) == (service_db, "registry.example.org/binder-")
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    assert container(pod).image == "registry.example.org/binder-built:1"
    assert container(pod).resources.limits == {"memory": 2 * GIB, "cpu": 1.5}
    assert pod.spec.node_selector == {"pool": "users", "gpu": "yes"}

    not_built = make_user_spawner(c, user_options={"image": "x", "environment": "queued1"})
    with pytest.raises(EnvironmentRefused) as info:
        await not_built.load_user_options()
    assert "is not built" in info.value.jupyterhub_message


async def test_configure_keeps_a_value_set_for_one_spawner_class(make_spawner, service_db):
    from tljh_repo2docker import hub_config

    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.Repo2DockerKubeSpawner.db_url = "sqlite:////elsewhere.sqlite"
    hub_config.configure(c, args=[f"--db_url={service_db}"])
    assert make_user_spawner(c).db_url == "sqlite:////elsewhere.sqlite"


async def test_pods_start_the_current_versions_own_reference(make_spawner, service_db):
    """user_options name the current version's own image (a rebuild never moves it), so a
    node that pulls IfNotPresent never starts a stale build; a rollback is followed."""
    from tljh_repo2docker.db import store
    from tljh_repo2docker.db.session import make_engine, make_sessionmaker

    engine = make_engine(service_db)
    sessions = make_sessionmaker(engine)
    for number in (1, 2):
        await store.add_version(
            sessions, "built1", number=number, image_name=f"registry.example.org/binder-built:1--v{number}",
            image_id=f"sha256:v{number}", commit=f"c{number}", size=1,
        )
    await store.update_environment(sessions, "built1", image_id="sha256:v2")
    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.Repo2DockerKubeSpawner.db_url = service_db
    spawner = make_user_spawner(c, user_options={"environment": "built1", "image": "whatever"})
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    assert container(pod).image == "registry.example.org/binder-built:1--v2"
    form = await make_user_spawner(c, user_options={}).get_options_form()
    assert 'value="registry.example.org/binder-built:1--v2"' in form

    # a rollback to version 1: new pods start its own reference
    env = await store.get_environment(sessions, "built1")
    [v1] = [v for v in await store.list_versions(sessions, "built1") if v.number == 1]
    assert await store.make_version_current(sessions, "built1", v1, env.image_name)
    spawner = make_user_spawner(c, user_options={"environment": "built1"})
    await spawner.load_user_options()
    assert container(await spawner.get_pod_manifest()).image == "registry.example.org/binder-built:1--v1"
    await engine.dispose()


def _waiting_pod(reason, message="", image="127.0.0.1:5000/envs/x:v1"):
    return {
        "spec": {"nodeName": "node"},
        "status": {
            "containerStatuses": [
                {"image": image, "state": {"waiting": {"reason": reason, "message": message}}}
            ]
        },
    }


@pytest.mark.parametrize(
    "reason, final",
    [("ErrImagePull", False), ("ImagePullBackOff", False), ("InvalidImageName", True)],
)
def test_a_pod_that_cannot_pull_its_image_is_told_from_one_starting(reason, final):
    from tljh_repo2docker.spawners.kube import image_pull_failure, image_pull_message

    pod = _waiting_pod(reason, "manifest unknown")
    assert image_pull_failure(pod) == ("127.0.0.1:5000/envs/x:v1", reason, "manifest unknown", final)
    text = image_pull_message(*image_pull_failure(pod)[:3], waited=20)
    assert text.startswith("The cluster's node could not pull the image 127.0.0.1:5000/envs/x:v1: manifest unknown")
    assert "rebuild the environment" in text
    # still creating, running, no status yet: not a pull failure
    assert image_pull_failure(_waiting_pod("ContainerCreating")) is None
    assert image_pull_failure({"status": {"containerStatuses": [{"state": {"running": {}}}]}}) is None
    # an init container of the same image waits for it first
    init = {"status": {"initContainerStatuses": _waiting_pod(reason)["status"]["containerStatuses"],
                       "containerStatuses": [{"state": {"waiting": {"reason": "PodInitializing"}}}]}}
    assert image_pull_failure(init)[1] == reason
    assert image_pull_failure(None) is None
    assert image_pull_failure({"status": {}}) is None


async def test_without_db_url_nothing_starts_and_the_user_is_told_why(make_spawner):
    spawner = make_spawner(
        {"image": "tljh-r2d/lab:main", "environment": "lab"}, trust_user_options=False
    )
    assert spawner.db_url == ""
    with pytest.raises(HTTPError) as refused:
        await manifest_of(spawner)
    assert refused.value.status_code == 503
    assert "has no db_url" in refused.value.jupyterhub_message
    assert "\n" not in refused.value.jupyterhub_message


# -- content pulled at launch: the init container's place and volume ---------------------------

CONTENT_REPO = "https://git.example.org/course/intro-python.git"


def content_spawner(config):
    from tljh_repo2docker import contract
    from tljh_repo2docker.service.content import parse_content

    options = contract.with_content(
        {"image": "registry.example.org/r2d/python-env:abc", "environment": "env1", "metadata": {}},
        parse_content({"content": CONTENT_REPO}),
    )
    return make_user_spawner(config, user_options=options)


async def test_a_server_with_no_home_gets_its_content_in_a_volume_of_its_own(make_spawner, caplog):
    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.Repo2DockerKubeSpawner.home_scope = "none"
    spawner = content_spawner(c)
    sent = as_sent(await manifest_of(spawner))["spec"]
    # no home claim, but an emptyDir that the init container fills and the server mounts
    assert not [v for v in sent["volumes"] if v["name"] == "tljh-r2d-home"]
    [volume] = [v for v in sent["volumes"] if v["name"] == "tljh-r2d-content-dir"]
    assert volume["emptyDir"] == {}
    [init] = [i for i in sent["initContainers"] if i["name"] == "tljh-r2d-content"]
    assert init["volumeMounts"] == [{"name": "tljh-r2d-content-dir", "mountPath": "/home/jovyan/intro-python"}]
    mounts = [m for m in sent["containers"][0]["volumeMounts"] if m["name"] == "tljh-r2d-content-dir"]
    assert [m["mountPath"] for m in mounts] == ["/home/jovyan/intro-python"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert (env["CONTENT_HOME"], env["CONTENT_DIR"]) == ("/home/jovyan", "intro-python")
    assert "was not pulled" not in caplog.text
    # the configured volumes stay as configured for the next start
    assert spawner.volumes == [] and spawner.volume_mounts == [] and spawner.init_containers == []


async def test_configured_init_containers_run_before_the_content_pull(make_spawner):
    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    c.Repo2DockerKubeSpawner.content_pull_timeout = 45
    # e.g. one that gives the home to the image's user (storage without fsGroup)
    c.KubeSpawner.init_containers = [{
        "name": "home-owner", "image": "busybox", "command": ["chown", "1000:1000", "/home/jovyan"],
        "volumeMounts": [{"name": "tljh-r2d-home", "mountPath": "/home/jovyan"}],
    }]
    sent = as_sent(await manifest_of(content_spawner(c)))["spec"]
    assert [i["name"] for i in sent["initContainers"]] == ["home-owner", "tljh-r2d-content"]
    [init] = [i for i in sent["initContainers"] if i["name"] == "tljh-r2d-content"]
    assert init["volumeMounts"] == [{"name": "tljh-r2d-home", "mountPath": "/home/jovyan"}]
    # bounded by content_pull_timeout, the repository in the environment only
    assert "timeout -k 5 45 " in init["command"][2]
    assert "the pull took longer than 45 seconds: stopped" in init["command"][2]
    assert CONTENT_REPO not in " ".join(init["command"])
    assert {"name": "CONTENT_REPO", "value": CONTENT_REPO} in init["env"]


# -- a refused first start leaves no server (issue 24) -------------------------------------


class HubRecord:
    """The hub's side of one server, as its removal reads it: its row, its
    user's spawners and a database session that records what it deletes."""

    def __init__(self, name, **row):
        from types import SimpleNamespace

        fields = {"server": None, "user_options": None, "started": None, "last_activity": None, "state": None}
        self.orm_spawner = SimpleNamespace(name=name, **{**fields, **row})
        self.deleted = []
        self.user = SimpleNamespace(
            name="ann", id=7, url="/user/ann/", groups=[], db=self, spawners={},
            orm_spawners={name: self.orm_spawner},
        )

    def delete(self, row):
        self.deleted.append(row)

    def commit(self):
        pass

    def rollback(self):
        pass


def recorded_spawner(record, user_options):
    from jupyterhub.objects import Hub

    from tljh_repo2docker import Repo2DockerKubeSpawner

    c = Config()
    c.Repo2DockerKubeSpawner.trust_user_options = True  # no db_url: read user_options
    spawner = Repo2DockerKubeSpawner(
        config=c, _mock=True, user=record.user, orm_spawner=record.orm_spawner, hub=Hub()
    )
    spawner.user_options = user_options
    record.user.spawners[record.orm_spawner.name] = spawner
    return spawner


async def refused_as_in_jupyterhub(spawner):
    """Start ``spawner`` as JupyterHub does (pending while start() runs, the
    failed start kept in ``_spawn_future``); the refusal it raised. JupyterHub
    is left stopping the server (``_stop_pending``): the caller ends that."""
    import asyncio

    async def spawn():
        spawner._start_pending = True
        try:
            return await spawner.start()
        finally:
            spawner._stop_pending = True
            spawner._start_pending = False

    spawner._spawn_future = asyncio.ensure_future(spawn())
    with pytest.raises(EnvironmentRefused) as refused:
        await spawner._spawn_future
    return refused.value


async def test_a_refused_first_start_removes_the_server_once_jupyterhub_is_done(make_spawner):
    import asyncio

    record = HubRecord("lab")
    spawner = recorded_spawner(record, {"environment": "env1"})  # no image: refused in start
    refusal = await refused_as_in_jupyterhub(spawner)
    assert "No environment was chosen" in refusal.jupyterhub_message
    # not while JupyterHub still stops it
    await asyncio.sleep(0.5)
    assert record.deleted == [] and record.user.spawners["lab"] is spawner
    # removed once JupyterHub is done with the failed start
    spawner._stop_pending = False
    for _ in range(100):
        if record.deleted:
            break
        await asyncio.sleep(0.1)
    assert record.deleted == [record.orm_spawner]
    assert "lab" not in record.user.spawners


async def test_a_refused_start_keeps_a_server_that_ran_and_the_default_server(make_spawner):
    ran = HubRecord("lab", state={"pod_name": "jupyter-ann--lab"})
    spawner = recorded_spawner(ran, {"image": "elsewhere.example.org/other:1", "environment": "x"})
    spawner.image_prefix = "registry.example.org/r2d/"
    refusal = await refused_as_in_jupyterhub(spawner)
    assert "not one of this hub's environments" in refusal.jupyterhub_message
    assert spawner.forget_refused_first_start() is None
    assert ran.deleted == [] and ran.user.spawners["lab"] is spawner

    default = HubRecord("")
    spawner = recorded_spawner(default, {"environment": "env1"})
    await refused_as_in_jupyterhub(spawner)
    assert spawner.forget_refused_first_start() is None
    assert default.deleted == []
