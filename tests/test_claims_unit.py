"""Users' homes on Kubernetes (service/claims.py), without a cluster.

A small in-memory stand-in for the CoreV1 API (``FakeCore``: claims and pods
as the client's objects hold them, and its errors' ``status``) checks the
rules: which claims are this hub's (the home label, and the prefix annotation
by ``contract.home_belongs_to_hub``), what a home's entry says, which pods use
it, and when a removal is refused (409) or not found (404). The real cluster
is in tests/test_kube_homes.py.
"""

import asyncio
import json
import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from tornado import web

from tljh_repo2docker.contract import DEFAULT_IMAGE_PREFIX
from tljh_repo2docker.errors import FieldError
from tljh_repo2docker.service.claims import (
    ClaimInUse,
    Claims,
    quantity_bytes,
    valid_claim_name,
)
from tljh_repo2docker.service.engine import EngineError, HomeInUse, HomeNotFound

NS = "hub-ns"
PREFIX = "registry.example.org/hub-a/"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
log = logging.getLogger("test-claims")


class FakeApiError(Exception):
    """What kubernetes_asyncio's ApiException carries: the status and the API's JSON Status."""

    def __init__(self, status, message=""):
        super().__init__(status)
        self.status = status
        self.reason = "Error"
        self.body = json.dumps({"kind": "Status", "message": message})


def home_claim(name, prefix=PREFIX, user="ann", server="", environment="", storage="10Gi",
               created=T0, labelled=True, annotated=True, user_label=None, deleting=False):
    """A claim as Repo2DockerKubeSpawner.get_pvc_manifest() labels it."""
    keys = {
        "tljh_repo2docker.home.user": user,
        "tljh_repo2docker.home.server": server,
        "tljh_repo2docker.home.environment": environment,
    }
    labels = {"tljh_repo2docker.home": "1", **keys} if labelled else {}
    if user_label is not None:
        labels["tljh_repo2docker.home.user"] = user_label
    annotations = {"tljh_repo2docker.home": "1", **keys, "tljh_repo2docker.home.prefix": prefix}
    return SimpleNamespace(
        metadata=SimpleNamespace(
            name=name,
            uid=f"uid-{name}",
            labels=labels,
            annotations=annotations if annotated else None,
            creation_timestamp=created,
            deletion_timestamp=T0 if deleting else None,
        ),
        spec=SimpleNamespace(resources=SimpleNamespace(requests={"storage": storage})),
    )


def pod(name, *claims):
    volumes = [
        SimpleNamespace(name=f"v{i}", persistent_volume_claim=SimpleNamespace(claim_name=c))
        for i, c in enumerate(claims)
    ]
    volumes.append(SimpleNamespace(name="token", persistent_volume_claim=None))
    return SimpleNamespace(metadata=SimpleNamespace(name=name), spec=SimpleNamespace(volumes=volumes))


class FakeCore:
    """The CoreV1Api methods Claims calls, on one namespace."""

    def __init__(self, claims=(), pods=()):
        self.claims = {c.metadata.name: c for c in claims}
        self.pods = list(pods)
        self.deleted = []
        self.fail = None  # an exception every call raises
        self.hang = False
        self.delete_conflict = False

    async def _maybe_fail(self, namespace):
        assert namespace == NS, "only the configured namespace is asked"
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail is not None:
            raise self.fail

    async def list_namespaced_persistent_volume_claim(self, namespace, label_selector=None):
        await self._maybe_fail(namespace)
        key, _, value = (label_selector or "").partition("=")
        items = [
            c for c in self.claims.values()
            if not label_selector or (c.metadata.labels or {}).get(key) == value
        ]
        return SimpleNamespace(items=items)

    async def read_namespaced_persistent_volume_claim(self, name, namespace):
        await self._maybe_fail(namespace)
        if name not in self.claims:
            raise FakeApiError(404, f'persistentvolumeclaims "{name}" not found')
        return self.claims[name]

    async def delete_namespaced_persistent_volume_claim(self, name, namespace, body=None):
        await self._maybe_fail(namespace)
        if name not in self.claims:
            raise FakeApiError(404, "not found")
        wanted = (body or {}).get("preconditions", {}).get("uid")
        if self.delete_conflict or (wanted and wanted != self.claims[name].metadata.uid):
            raise FakeApiError(409, "Precondition failed: UID in precondition")
        self.deleted.append((name, body))
        del self.claims[name]

    async def list_namespaced_pod(self, namespace):
        await self._maybe_fail(namespace)
        return SimpleNamespace(items=self.pods)


@pytest.fixture
def core():
    return FakeCore(
        claims=[
            home_claim("tljh-r2d-home-ann", created=T0 + timedelta(hours=1)),
            home_claim("tljh-r2d-home-bo-40x--lab", user="bo@x", user_label="bo-40x",
                       server="lab", environment="abc123", storage="500Mi", created=T0),
            home_claim("tljh-r2d-home-cid", prefix="registry.example.org/hub-b/", user="cid"),
            home_claim("tljh-r2d-home-dee", labelled=False, user="dee"),
            home_claim("tljh-r2d-home-eve", annotated=False, user="eve"),
            home_claim("tljh-r2d-home-fay", user="fay", deleting=True),
            home_claim("plain", labelled=False, annotated=False),
        ],
        pods=[
            pod("jupyter-ann", "tljh-r2d-home-ann"),
            pod("jupyter-ann-2d-2dlab", "tljh-r2d-home-ann", "shared-data"),
            pod("jupyter-cid", "tljh-r2d-home-cid"),
            pod("no-volumes"),
        ],
    )


def claims_of(core, prefix=PREFIX, **kwargs):
    return Claims(NS, prefix, log=log, core=core, **kwargs)


# -- the list --------------------------------------------------------------------


async def test_lists_this_hubs_home_claims_only(core):
    homes, note = await claims_of(core).list()
    assert [h["name"] for h in homes] == ["tljh-r2d-home-bo-40x--lab", "tljh-r2d-home-ann"]
    assert note is None
    lab, ann = homes
    # the exact names from the annotations, not the label-safe ones
    assert lab == {
        "name": "tljh-r2d-home-bo-40x--lab",
        "user": "bo@x",
        "server": "lab",
        "environment": "abc123",
        "size": 500 * 2**20,
        "created": "2026-01-02T03:04:05+00:00",
        "in_use_by": [],
    }
    assert ann["size"] == 10 * 2**30
    assert ann["in_use_by"] == ["jupyter-ann", "jupyter-ann-2d-2dlab"]
    # another hub's claim is neither listed nor counted
    assert "tljh-r2d-home-cid" not in {h["name"] for h in homes}


async def test_another_hubs_list_is_its_own(core):
    homes, _ = await claims_of(core, prefix="registry.example.org/hub-b/").list()
    assert [(h["name"], h["in_use_by"]) for h in homes] == [("tljh-r2d-home-cid", ["jupyter-cid"])]


async def test_claims_labelled_with_the_old_empty_prefix_are_the_default_hubs():
    # Repo2DockerKubeSpawner's image_prefix defaults to "": the claims of a
    # hub left at both defaults are the default-prefixed service's (contract.py).
    core = FakeCore(claims=[home_claim("tljh-r2d-home-ann", prefix="")])
    assert [h["name"] for h in (await claims_of(core, prefix=DEFAULT_IMAGE_PREFIX).list())[0]] == [
        "tljh-r2d-home-ann"
    ]
    assert (await claims_of(core, prefix=PREFIX).list())[0] == []


async def test_empty_namespace_and_unknown_sizes():
    assert await claims_of(FakeCore()).list() == ([], None)
    core = FakeCore(claims=[home_claim("tljh-r2d-home-ann", storage=None)])
    homes, note = await claims_of(core).list()
    assert homes[0]["size"] is None
    assert "size" in note


# -- removal ----------------------------------------------------------------------


async def test_a_claim_a_pod_mounts_is_refused_naming_the_pods(core):
    with pytest.raises(ClaimInUse) as e:
        await claims_of(core).delete("tljh-r2d-home-ann")
    assert isinstance(e.value, HomeInUse)  # the handler's 409
    assert e.value.containers == ["jupyter-ann", "jupyter-ann-2d-2dlab"]
    assert "jupyter-ann-2d-2dlab" in str(e.value) and "pod" in str(e.value)
    assert "tljh-r2d-home-ann" in core.claims and core.deleted == []


async def test_a_free_home_is_deleted_by_its_uid(core):
    await claims_of(core).delete("tljh-r2d-home-bo-40x--lab")
    assert core.deleted == [
        ("tljh-r2d-home-bo-40x--lab", {"preconditions": {"uid": "uid-tljh-r2d-home-bo-40x--lab"}})
    ]
    with pytest.raises(HomeNotFound):  # again: gone
        await claims_of(core).delete("tljh-r2d-home-bo-40x--lab")


@pytest.mark.parametrize(
    "name",
    [
        "tljh-r2d-home-cid",  # another hub's (even while free of its pod)
        "tljh-r2d-home-dee",  # no home label
        "tljh-r2d-home-eve",  # no prefix annotation
        "tljh-r2d-home-fay",  # being deleted
        "plain",
        "never-made",
    ],
)
async def test_claims_that_are_not_this_hubs_homes_are_not_found(core, name):
    core.pods = []  # nothing in use: only ownership decides
    with pytest.raises(HomeNotFound):
        await claims_of(core).delete(name)
    assert core.deleted == []


async def test_a_claim_made_again_meanwhile_is_not_deleted(core):
    core.delete_conflict = True  # the uid precondition failed: another claim by that name
    with pytest.raises(HomeNotFound):
        await claims_of(core).delete("tljh-r2d-home-bo-40x--lab")
    assert "tljh-r2d-home-bo-40x--lab" in core.claims


@pytest.mark.parametrize("name", ["Upper", "under_score", "-dash", "dot.", "x" * 254, "a b", "été"])
async def test_impossible_claim_names_are_400_before_any_request(name):
    core = FakeCore()
    core.fail = AssertionError("no request for an impossible name")
    with pytest.raises(FieldError) as e:
        await claims_of(core).delete(name)
    assert e.value.status_code == 400 and e.value.field == "name"
    assert "claim's name" in e.value.reason


@pytest.mark.parametrize(
    "name, ok",
    [("tljh-r2d-home-ann", True), ("a", True), ("a.b-c", True), ("a" * 253, True),
     ("a" * 254, False), ("A", False), ("a_b", False), ("a-", False), ("", False), (None, False)],
)
def test_claim_names_follow_kubernetes_rule(name, ok):
    assert valid_claim_name(name) is ok


# -- the API's trouble -------------------------------------------------------------


@pytest.mark.parametrize(
    "error, words",
    [
        (FakeApiError(403, 'persistentvolumeclaims is forbidden: User "x" cannot list'),
         ["refused (403)", "account", "forbidden"]),
        (FakeApiError(500, "etcdserver: request timed out"), ["failed (500)", "etcdserver"]),
        (ConnectionRefusedError(111, "refused"), ["cannot be reached", "ConnectionRefusedError"]),
    ],
)
async def test_api_trouble_is_an_engine_error_naming_the_namespace(core, error, words):
    core.fail = error
    for attempt in (lambda: claims_of(core).list(), lambda: claims_of(core).delete("tljh-r2d-home-ann")):
        with pytest.raises(EngineError) as e:
            await attempt()
        assert f"namespace {NS}" in str(e.value)
        for word in words:
            assert word in str(e.value)


async def test_an_api_that_does_not_answer_is_given_up(core):
    core.hang = True
    with pytest.raises(EngineError, match="did not answer in 0.2 s"):
        await claims_of(core, timeout=0.2).list()


async def test_a_missing_kubeconfig_says_so(monkeypatch, tmp_path):
    pytest.importorskip("kubernetes_asyncio")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(EngineError) as e:
        await Claims(NS, PREFIX, log=log).list()
    assert "TljhRepo2Docker.kube_namespace" in str(e.value) and "KUBECONFIG" in str(e.value)


# -- the setting, the optional package and the routes -------------------------------


def test_kube_namespace_picks_the_claims(tmp_path):
    from tljh_repo2docker.app import TljhRepo2Docker
    from tljh_repo2docker.service.engine import Homes

    app = TljhRepo2Docker(kube_namespace="hub-ns", image_prefix=PREFIX)
    app.init_homes()
    assert isinstance(app.homes, Homes)  # servers' containers stay the engine's
    assert isinstance(app.user_homes, Claims)
    assert (app.user_homes.namespace, app.user_homes.prefix) == ("hub-ns", PREFIX)
    plain = TljhRepo2Docker()
    plain.init_homes()
    assert plain.user_homes is plain.homes
    with pytest.raises(Exception, match="kube_namespace"):
        TljhRepo2Docker(kube_namespace="Not_A_Namespace")


def test_the_service_imports_without_the_kubernetes_client():
    code = (
        "import sys; sys.modules['kubernetes_asyncio'] = None\n"
        "import tljh_repo2docker.app, tljh_repo2docker.service.claims\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


class _Page:
    """What HomesMixin reads from a handler."""

    def __init__(self, user_homes, homes=None):
        self.tljh_app = SimpleNamespace(user_homes=user_homes, builder=object())
        self.homes = homes


def test_without_the_package_the_routes_answer_501_naming_the_setting(monkeypatch):
    from tljh_repo2docker.handlers.homes import HomesMixin

    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)  # import fails
    claims = Claims(NS, PREFIX, log=log)
    assert claims.available is False
    page = type("Page", (HomesMixin, _Page), {})(claims)
    with pytest.raises(web.HTTPError) as e:
        page.require_engine()
    assert e.value.status_code == 501
    message = e.value.log_message
    assert "\n" not in message
    assert "TljhRepo2Docker.kube_namespace" in message and "'kubernetes' extra" in message
    assert page.unavailable() == message  # what the page shows


def test_the_routes_check_claim_names_by_the_claims_rule():
    from tljh_repo2docker.handlers.homes import HomesMixin

    page = type("Page", (HomesMixin, _Page), {})(claims_of(FakeCore()))
    with pytest.raises(FieldError, match="claim's name"):
        page.check_name(page.user_homes, "Under_Score")  # a fine Docker volume name
    page.check_name(page.user_homes, "tljh-r2d-home-ann")


@pytest.mark.parametrize(
    "value, expected",
    [("10Gi", 10 * 2**30), ("500Mi", 500 * 2**20), ("1G", 10**9), ("100", 100),
     ("1.5Gi", int(1.5 * 2**30)), ("1e3", 1000), ("", None), (None, None), ("10Xi", None),
     ("-1Gi", None), ("lots", None)],
)
def test_storage_quantities_in_bytes(value, expected):
    assert quantity_bytes(value) == expected
