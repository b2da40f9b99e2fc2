"""The Homes API on Kubernetes (issue 21): this hub's claims only, on the real cluster.

The real cluster of ``./dev kube up`` and a namespace of this module's own
(deleted afterwards, with everything in it). In it:

- two home claims of this hub, made by ``Repo2DockerKubeSpawner``'s own
  ``get_pvc_manifest()`` (KubeSpawner in its ``_mock`` mode: it only makes the
  manifest), as the hub makes them: ann's (one per user), mounted by a running
  pod, and ``bob@lab``'s (one per environment: exact names in annotations);
- a home claim of another hub (the spawner with another ``image_prefix``);
- a claim with a home's name but none of the labels.

The service runs for real (a JupyterHub with the service as a managed
service, ``running_hub``) with ``--kube_namespace`` and ``KUBECONFIG`` in the
service's environment (JupyterHub hands a managed service only the variables
of its ``environment``). ``GET api/homes`` must list exactly this hub's two,
``DELETE`` refuse the mounted one (409) and not find the other hub's or the
unlabelled one (404), and remove the free one: the claim is gone from the
cluster.

Fails (does not skip) under ``CI=true`` when the cluster cannot come up.
"""

from types import SimpleNamespace

import pytest

from tests.helpers.fixtures import running_hub
from tests.helpers.kubecluster import kube_cluster
from tests.helpers.kubehub import Cluster, wait_until
from tests.helpers.utils import SERVICE, HubUser, assert_json_error, next_image_prefix

pytestmark = [pytest.mark.kube, pytest.mark.hub, pytest.mark.docker]

#: The cluster's pod sandbox image (scripts/kube.sh's PAUSE_IMAGE), on the node
#: already: the pod that mounts a home runs it without pulling anything.
PAUSE_IMAGE = "registry.local/tljh-r2d/pause:3.2"
ENV_UID = "0123456789abcdef0123456789abcdef"
STORAGE = "16Mi"
OTHER_PREFIX = "another-hub.example.org/r2d/"


@pytest.fixture(scope="module")
def cluster():
    return kube_cluster()


@pytest.fixture(scope="module")
async def kube(cluster):
    """The cluster's API, with this module's namespace (deleted afterwards)."""
    async with Cluster.with_namespace(cluster["kubeconfig"]) as kube:
        yield kube


async def spawner_claim(kubeconfig, namespace, image_prefix, user, home_scope="user"):
    """The claim Repo2DockerKubeSpawner makes for ``user``'s home, from its own
    ``load_user_options()`` and ``get_pvc_manifest()`` (as KubeSpawner's start does)."""
    from jupyterhub.objects import Hub
    from kubernetes_asyncio.config import kube_config
    from kubespawner.clients import load_config
    from traitlets.config import Config

    from tljh_repo2docker import Repo2DockerKubeSpawner

    c = Config()
    c.KubeSpawner.namespace = namespace
    c.KubeSpawner.storage_capacity = STORAGE
    c.Repo2DockerKubeSpawner.image_prefix = image_prefix
    c.Repo2DockerKubeSpawner.home_scope = home_scope
    # no service database here: the claims come from what user_options name
    c.Repo2DockerKubeSpawner.trust_user_options = True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        patch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        load_config.cache_clear()
        try:
            spawner = Repo2DockerKubeSpawner(
                config=c,
                _mock=True,
                user=SimpleNamespace(name=user, id=7, url=f"/user/{user}/", groups=[]),
                orm_spawner=SimpleNamespace(name="", server=None, user_options=None),
                hub=Hub(),
            )
            spawner.user_options = {
                "image": f"{image_prefix}python-env:abc",
                "environment": ENV_UID,
                "metadata": {},
            }
            await spawner.load_user_options()
            return spawner.get_pvc_manifest()
        finally:
            load_config.cache_clear()


@pytest.fixture(scope="module")
async def claims(cluster, kube):
    """This module's claims and the pod that mounts ann's; ``prefix``: the hub's."""
    prefix = next_image_prefix()
    made = {}
    for key, user, image_prefix, scope in [
        ("ann", "ann", prefix, "user"),
        ("bob", "bob@lab", prefix, "environment"),
        ("other_hub", "cid", OTHER_PREFIX, "user"),
    ]:
        pvc = await spawner_claim(cluster["kubeconfig"], kube.namespace, image_prefix, user, scope)
        created = await kube.core.create_namespaced_persistent_volume_claim(kube.namespace, pvc)
        made[key] = created.metadata.name
    unlabelled = {
        "metadata": {"name": "tljh-r2d-home-dee"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": STORAGE}}},
    }
    await kube.core.create_namespaced_persistent_volume_claim(kube.namespace, unlabelled)
    made["unlabelled"] = "tljh-r2d-home-dee"
    assert made["ann"] == "tljh-r2d-home-ann"  # the names are the spawner's (pvc_name_template)

    pod = "jupyter-ann"
    await kube.core.create_namespaced_pod(
        kube.namespace,
        {
            "metadata": {"name": pod},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "server",
                        "image": PAUSE_IMAGE,
                        "imagePullPolicy": "Never",
                        "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}],
                    }
                ],
                "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": made["ann"]}}],
            },
        },
    )

    async def running():
        found = await kube.core.read_namespaced_pod(pod, kube.namespace)
        return found.status.phase == "Running"

    try:
        await wait_until(running, 90, f"pod {pod} running with ann's home mounted")
    except TimeoutError:
        print(await kube.describe())
        raise
    return {**made, "pod": pod, "prefix": prefix}


@pytest.fixture(scope="module")
def kube_homes_hub(tmp_path_factory, cluster, kube, claims):
    """A real hub whose service lists the claims of the namespace."""
    extra_config = f"""
# The service reaches the cluster with this kubeconfig (tests/test_kube_homes.py).
for _service in c.JupyterHub.services:
    if _service["name"] == "{SERVICE}":
        _service.setdefault("environment", {{}})["KUBECONFIG"] = {cluster["kubeconfig"]!r}
"""
    with running_hub(
        tmp_path_factory.mktemp("kube-homes"),
        extra_service_args=[f"--kube_namespace={kube.namespace}"],
        extra_config=extra_config,
        image_prefix=claims["prefix"],
    ) as info:
        yield info


@pytest.fixture(scope="module")
async def kube_admin(kube_homes_hub):
    user = await HubUser.login(kube_homes_hub, "admin")
    yield user
    await user.close()


@pytest.fixture(autouse=True)
async def _dump_on_failure(request, kube):
    """The hub's log and everything in the namespace, when a test fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        if "kube_homes_hub" in request.fixturenames:
            info = request.getfixturevalue("kube_homes_hub")
            print("---- jupyterhub.log (tail) ----")
            print((info.workdir / "jupyterhub.log").read_text()[-8000:])
        print(await kube.describe())


async def list_homes(user):
    r = await user.api("GET", "api/homes")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    return body, {h["name"]: h for h in body["homes"]}


async def test_lists_exactly_this_hubs_claims(kube_admin, claims):
    body, homes = await list_homes(kube_admin)
    assert set(homes) == {claims["ann"], claims["bob"]}, body
    assert body["sizes_note"] is None
    ann, bob = homes[claims["ann"]], homes[claims["bob"]]
    assert ann["in_use_by"] == [claims["pod"]]
    assert (ann["user"], ann["server"], ann["environment"]) == ("ann", "", "")
    # the exact user name (the claim's label holds a label-safe one)
    assert (bob["user"], bob["server"], bob["environment"]) == ("bob@lab", "", ENV_UID)
    assert bob["environment_name"] is None  # no such environment in the service's database
    assert bob["in_use_by"] == []
    for home in (ann, bob):
        assert home["size"] == 16 * 2**20  # the storage the claim requests
        assert home["created"].endswith("+00:00")


async def test_plain_users_may_not_see_the_claims(kube_homes_hub, claims):
    alice = await HubUser.login(kube_homes_hub, "alice")
    try:
        assert_json_error(await alice.api("GET", "api/homes"), 403, "admin")
        assert_json_error(await alice.api("DELETE", f"api/homes/{claims['bob']}"), 403, "admin")
    finally:
        await alice.close()


async def test_a_mounted_claim_is_not_deleted(kube_admin, kube, claims):
    r = await kube_admin.api("DELETE", f"api/homes/{claims['ann']}")
    body = assert_json_error(r, 409, claims["pod"])
    assert body["field"] == "name"
    claim = await kube.claim(claims["ann"])
    assert claim is not None and claim.metadata.deletion_timestamp is None


@pytest.mark.parametrize("which", ["other_hub", "unlabelled"])
async def test_claims_that_are_not_this_hubs_homes_are_404(kube_admin, kube, claims, which):
    r = await kube_admin.api("DELETE", f"api/homes/{claims[which]}")
    body = assert_json_error(r, 404, "no home named")
    assert body["field"] == "name"
    claim = await kube.claim(claims[which])
    assert claim is not None and claim.metadata.deletion_timestamp is None


async def test_impossible_claim_names_are_400(kube_admin):
    body = assert_json_error(await kube_admin.api("DELETE", "api/homes/Not_A_Claim"), 400, "claim's name")
    assert body["field"] == "name"


async def test_a_free_claim_is_deleted(kube_admin, kube, claims):
    r = await kube_admin.api("DELETE", f"api/homes/{claims['bob']}")
    assert r.status_code == 204, r.text

    async def gone():
        return await kube.claim(claims["bob"]) is None

    await wait_until(gone, 60, f"claim {claims['bob']} deleted")
    _, homes = await list_homes(kube_admin)
    assert set(homes) == {claims["ann"]}
    assert_json_error(await kube_admin.api("DELETE", f"api/homes/{claims['bob']}"), 404, "no home named")
    # the others are untouched
    for key in ("ann", "other_hub", "unlabelled"):
        assert await kube.claim(claims[key]) is not None, key
