"""DockerBuilder.push: built images go to the registry their name designates.

Against a real Docker engine, real repo2docker (the test images of
``scripts/build-test-images.sh``), a real git server and real registries:

- the registry of ``./dev kube up`` (``TLJH_R2D_REGISTRY``, else
  :func:`tests.helpers.kubecluster.kube_cluster` starts it);
- for credentials, a second instance of the same ``docker-registry`` started
  here on a free loopback port, with htpasswd (bcrypt) authentication;
- for a failing push, a loopback port where nothing listens.

Docker pushes to loopback registries over plain HTTP without extra daemon
configuration. Without Docker, the test images or a registry the tests skip,
and fail under ``CI=true``. Image names are unique to each test
(``<registry>/tljh-r2d-pushtest-<random>/env:main``); the images made here and
the manifests pushed are removed afterwards.
"""

import base64
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.helpers.dockerbuilder import (
    SINGLEUSER_IMAGE,
    collect,
    docker,
    dockerfile,
    explain,
    logs_of,
    make_builder,
    new_repo,
)
from tests.helpers.fixtures import need
from tests.helpers.gitserver import add_commit
from tests.helpers.kubecluster import kube_cluster
from tljh_repo2docker.builds.base import BUILT, FAILED, STATUS, BuildError, BuildRequest
from tljh_repo2docker.builds.docker import UID_LABEL, version_reference
from tljh_repo2docker.builds.docker.push import PushProgress, registry_of

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
DIGEST_RE = re.compile(r"^Pushed (?P<name>\S+), digest (?P<digest>sha256:[0-9a-f]{64})$")


# -- without Docker -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, registry",
    [
        ("127.0.0.1:5000/tljh-r2d/env:main", "127.0.0.1:5000"),
        ("registry.example.org/team/env:main", "registry.example.org"),
        ("localhost/env:main", "localhost"),
        ("tljh-r2d/env:main", "docker.io"),
        ("env:main", "docker.io"),
    ],
)
def test_the_name_designates_the_registry(name, registry):
    assert registry_of(name) == registry


def test_push_progress_is_condensed():
    now = [0.0]
    progress = PushProgress(interval=10, clock=lambda: now[0])
    lines = []

    def feed(*items, seconds=0.0):
        for item in items:
            now[0] += seconds
            lines.extend(progress.feed(item))

    feed({"status": "The push refers to repository [127.0.0.1:5000/x/env]"})
    feed(*({"status": "Preparing", "id": f"layer{i}"} for i in range(3)))
    feed({"status": "Waiting", "id": "layer2"}, {"status": "Layer already exists", "id": "layer0"})
    feed(
        *(
            {
                "status": "Pushing",
                "id": "layer1",
                "progress": "[=>   ]",
                "progressDetail": {"current": step * 10**6, "total": 100 * 10**6},
            }
            for step in range(1, 101)
        ),
        seconds=0.5,
    )
    feed(
        {"status": "Pushed", "id": "layer1"},
        {"status": "Mounted from other/repo", "id": "layer2"},
        {"status": "main: digest: sha256:" + "a" * 64 + " size: 1234"},
        {"progressDetail": {}, "aux": {"Tag": "main", "Digest": "sha256:" + "b" * 64}},
    )
    # 50 s of progress: a line every 10 s, then one for the layer pushed.
    assert len(lines) == 6, lines
    assert lines[0] == "pushing: 0 layers done, 1 under way (20.0 MB of 100.0 MB sent)"
    assert lines[-2] == "pushing: 0 layers done, 1 under way (100.0 MB of 100.0 MB sent)"
    assert lines[-1] == "layer layer1: pushed (100.0 MB)"
    assert progress.digest == "sha256:" + "b" * 64
    assert progress.summary() == "1 layer pushed (100.0 MB), 2 layers already in the registry"
    # Small layers go up without progress, so without a size.
    small = PushProgress()
    assert small.feed({"status": "Pushed", "id": "layer3"}) == ["layer layer3: pushed"]
    assert small.summary() == "1 layer pushed"


def test_push_settings_are_documented_traits():
    from tljh_repo2docker.builds.docker import DockerBuilder

    traits = DockerBuilder.class_traits(config=True)
    for name in ("push", "registry_username", "registry_password", "push_timeout"):
        assert traits[name].help.strip(), name
    assert DockerBuilder().push is False
    with pytest.raises(ValueError, match="push_timeout must be a positive number"):
        DockerBuilder(push_timeout=0)


# -- registries -----------------------------------------------------------------------


def _answers(url, **kwargs):
    try:
        return httpx.get(url, timeout=5, **kwargs).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of the registry of ``./dev kube up``."""
    address = os.environ.get("TLJH_R2D_REGISTRY") or kube_cluster()["registry"]
    if _answers(f"http://{address}/v2/") != 200:
        need(f"the registry at {address} does not answer")
    return address


def _registry_binary():
    """Debian's docker-registry: installed, or unpacked by ``./dev kube up`` (of this
    checkout, or of the one whose cluster TLJH_R2D_KUBECONFIG names)."""
    found = shutil.which("docker-registry")
    builds = [ROOT / ".build/kube"]
    if os.environ.get("TLJH_R2D_KUBECONFIG"):
        # <checkout>/.build/kube/state/kubeconfig
        builds.append(Path(os.environ["TLJH_R2D_KUBECONFIG"]).resolve().parents[1])
    for build in builds:
        unpacked = build / "bin/debian/usr/bin/docker-registry"
        if found is None and unpacked.is_file():
            found = str(unpacked)
    return found


def _bcrypt(password):
    """A bcrypt hash of ``password`` (what the registry's htpasswd file holds)."""
    name = ctypes.util.find_library("crypt")
    if name:
        lib = ctypes.CDLL(name)
        if hasattr(lib, "crypt_gensalt"):  # libxcrypt
            lib.crypt_gensalt.restype = ctypes.c_char_p
            lib.crypt_gensalt.argtypes = [
                ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int
            ]
            lib.crypt.restype = ctypes.c_char_p
            lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            setting = lib.crypt_gensalt(b"$2y$", 5, None, 0)
            hashed = lib.crypt(password.encode(), setting) if setting else None
            if hashed and hashed.startswith(b"$2"):
                return hashed.decode()
    if shutil.which("htpasswd"):
        out = subprocess.run(
            ["htpasswd", "-nbB", "-C", "5", "x", password],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().split(":", 1)[1]
    try:
        import bcrypt
    except ImportError:
        need("no bcrypt: neither libxcrypt, htpasswd (apache2-utils) nor Python's bcrypt")
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving_registry(root, extra_config="", auth=None):
    """Debian's docker-registry on a free loopback port with ``root`` for its data
    and ``extra_config`` (YAML lines); ``host:port`` once it answers."""
    binary = _registry_binary()
    if binary is None:
        need("no docker-registry binary (./dev kube up unpacks Debian's)")
    port = _free_port()
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n" + extra_config
    )
    with open(root / "registry.log", "w") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT
        )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while _answers(f"http://{address}/v2/") != (401 if auth else 200):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the registry did not start: {(root / 'registry.log').read_text()}")
            time.sleep(0.2)
        if auth:
            assert _answers(f"http://{address}/v2/", auth=auth) == 200
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def auth_registry(registry, tmp_path_factory):
    """A registry that needs a user name and password: ``(host:port, user, password)``."""
    user, password = "pushbot", f"pw-{uuid.uuid4().hex}"
    root = tmp_path_factory.mktemp("auth-registry")
    (root / "htpasswd").write_text(f"{user}:{_bcrypt(password)}\n")
    config = (
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"auth: {{htpasswd: {{realm: tljh-r2d-test, path: {root / 'htpasswd'}}}}}\n"
    )
    with serving_registry(root, config, auth=(user, password)) as address:
        yield address, user, password


def remote_digest(address, repository, tag, auth=None):
    """The digest the registry has for ``repository:tag`` (None: no such tag)."""
    r = httpx.head(
        f"http://{address}/v2/{repository}/manifests/{tag}",
        headers={"Accept": MANIFEST_TYPES},
        auth=auth,
        timeout=10,
    )
    if r.status_code == 404:
        return None
    assert r.status_code == 200, (r.status_code, r.text)
    return r.headers["Docker-Content-Digest"]


def remote_tags(address, repository, auth=None):
    r = httpx.get(f"http://{address}/v2/{repository}/tags/list", auth=auth, timeout=10)
    if r.status_code == 404:
        return []
    assert r.status_code == 200, (r.status_code, r.text)
    return sorted(r.json().get("tags") or [])


# -- Docker ---------------------------------------------------------------------------


@pytest.fixture
async def builders():
    """``builders(**settings)``: DockerBuilders on the test images, closed afterwards."""
    made = []

    def make(**kwargs):
        builder = make_builder(**kwargs)
        made.append(builder)
        return builder

    probe = make_builder()
    try:
        await probe.check()
        missing = [
            image
            for image in (probe.repo2docker_image, SINGLEUSER_IMAGE)
            if not await probe.image_exists(image)
        ]
    except BuildError as e:
        missing = None
        reason = f"no Docker engine: {e.message}"
    finally:
        await probe.close()
    if missing is None:
        need(reason)
    if missing:
        need(f"test images missing: {', '.join(missing)} (run scripts/build-test-images.sh)")
    yield make
    for builder in made:
        await builder.close()


@pytest.fixture
def cleanup():
    """What a test made: ``images`` (names or ids, removed locally) and
    ``manifests`` (``(address, repository, digest, auth)``, deleted from registries)."""
    things = {"images": [], "manifests": [], "uids": []}
    yield things
    for uid in things["uids"]:
        docker("rm", "-f", f"tljh-repo2docker-build-{uid}", check=False)
        listed = docker("images", "-q", "--filter", f"label={UID_LABEL}={uid}", check=False)
        things["images"] += listed.stdout.split()
    for image in things["images"]:
        docker("rmi", "-f", image, check=False)
    for address, repository, digest, auth in things["manifests"]:
        httpx.delete(f"http://{address}/v2/{repository}/manifests/{digest}", auth=auth, timeout=10)


def image_name(address):
    repository = f"tljh-r2d-pushtest-{uuid.uuid4().hex[:10]}/env"
    return f"{address}/{repository}:main", repository


def new_request(cleanup, repo, name, uid=None):
    """A build of ``repo`` into ``name``; a rebuild of the environment ``uid`` if given."""
    if uid is None:
        uid = f"t{uuid.uuid4().hex[:12]}"
        cleanup["uids"].append(uid)
    cleanup["images"].append(name)
    return BuildRequest(uid=uid, repo=repo, image_name=name, ref="main")


async def built_then_changed(builders, cleanup, git_root, git_server, name):
    """A repository built into ``name`` without pushing, then given a new commit:
    ``(first request, the image id it built, the rebuild's request)``."""
    repo = new_repo(git_root, {"Dockerfile": dockerfile("RUN echo first > /tmp/which")})
    first = new_request(cleanup, git_server.url(repo), name)
    events = await collect(builders().build(first))
    assert events[-1].phase == BUILT, explain(events)
    add_commit(git_root, repo, {"Dockerfile": dockerfile("RUN echo second > /tmp/which")})
    return first, events[-1].image_id, new_request(cleanup, git_server.url(repo), name, uid=first.uid)


def pushed_digest(events, name):
    """The digest the build's log says ``name`` was pushed with."""
    for line in logs_of(events):
        match = DIGEST_RE.match(line)
        if match and match["name"] == name:
            return match["digest"]
    raise AssertionError(f"no 'Pushed {name}, digest ...' line:\n{explain(events)}")


async def local_id(builder, name):
    return (await builder.docker.images.inspect(name))["Id"]


@pytest.mark.docker
@pytest.mark.kube
async def test_a_build_is_pushed_then_its_versions_and_rollbacks(
    registry, builders, cleanup, git_root, git_server
):
    builder = builders(push=True)
    name, repository = image_name(registry)
    repo = new_repo(git_root, {"Dockerfile": dockerfile("RUN echo first > /tmp/which")})
    first = new_request(cleanup, git_server.url(repo), name)

    events = await collect(builder.build(first))
    assert events[-1].phase == BUILT, explain(events)
    digest = pushed_digest(events, name)
    cleanup["manifests"].append((registry, repository, digest, None))

    # The push phase in the log: a status, then a few condensed lines.
    statuses = [e.message for e in events if e.phase == STATUS]
    assert f"pushing to {registry}" in statuses, explain(events)
    lines = logs_of(events)
    push_lines = lines[lines.index(f"Pushing {name}") :]
    assert push_lines[-1] == f"Pushed {name}, digest {digest}"
    assert not any(word in line for line in push_lines for word in ("Preparing", "Waiting", "[="))
    layers = len((await builder.docker.images.inspect(name))["RootFS"]["Layers"])
    # "Pushing", a line per layer at most, the summary, "Pushed" (and, for a
    # slow push, a line about the bytes sent every 10 s).
    assert len([line for line in push_lines if not line.startswith("pushing: ")]) <= layers + 3
    assert re.match(r"^\d+ layers? pushed\b", push_lines[-2]), push_lines
    assert events[-1].message == f"Built {name}, pushed as {registry}/{repository}@{digest}"
    assert events[-1].image_id == await local_id(builder, name)
    assert remote_tags(registry, repository) == ["main"]
    assert remote_digest(registry, repository, "main") == digest
    # Pushed, then the staging name went: only the environment's name is left.
    image = await builder.docker.images.inspect(name)
    assert image["RepoTags"] == [name]

    # Versions: each one kept is pushed too (only its tag: the layers are there).
    assert await builder.keep_version(name, events[-1].image_id, 1) == version_reference(name, 1)
    assert remote_digest(registry, repository, "main--v1") == digest

    add_commit(git_root, repo, {"Dockerfile": dockerfile("RUN echo second > /tmp/which")})
    second = new_request(cleanup, git_server.url(repo), name, uid=first.uid)
    events2 = await collect(builder.build(second))
    assert events2[-1].phase == BUILT, explain(events2)
    digest2 = pushed_digest(events2, name)
    cleanup["manifests"].append((registry, repository, digest2, None))
    assert digest2 != digest
    assert remote_digest(registry, repository, "main") == digest2
    await builder.keep_version(name, events2[-1].image_id, 2)
    cleanup["images"] += [version_reference(name, 1), version_reference(name, 2)]
    assert remote_tags(registry, repository) == ["main", "main--v1", "main--v2"]

    # A rollback moves the name in the registry too.
    assert await builder.make_current(version_reference(name, 1), events[-1].image_id, name) == name
    assert await local_id(builder, name) == events[-1].image_id
    assert remote_digest(registry, repository, "main") == digest


@pytest.mark.docker
@pytest.mark.kube
async def test_the_versions_own_tag_is_in_the_registry_before_the_build_counts(
    registry, builders, cleanup, git_root, git_server
):
    """The request names the version the build makes: its own reference (what pods on
    Kubernetes start) is pushed before the final event, not after the result is stored."""
    builder = builders(push=True)
    name, repository = image_name(registry)
    repo = new_repo(git_root, {"Dockerfile": dockerfile("RUN echo v7 > /tmp/which")})
    request = new_request(cleanup, git_server.url(repo), name)
    request.number = 7
    cleanup["images"].append(version_reference(name, 7))
    events = await collect(builder.build(request))
    assert events[-1].phase == BUILT, explain(events)
    digest = pushed_digest(events, name)
    cleanup["manifests"].append((registry, repository, digest, None))
    # at the final event already, without keep_version()
    assert remote_tags(registry, repository) == ["main", "main--v7"]
    assert remote_digest(registry, repository, "main--v7") == digest
    assert f"Pushed {version_reference(name, 7)}, digest {digest}" in logs_of(events)


@pytest.mark.docker
async def test_a_failed_push_fails_the_build_and_keeps_the_previous_image(
    builders, cleanup, git_root, git_server
):
    # Nothing listens on this loopback port: the registry the name designates is down.
    address = f"127.0.0.1:{_free_port()}"
    name, _ = image_name(address)
    # The current image, built while pushing was off; then a new commit.
    builder = builders(push=True)
    first, previous, second = await built_then_changed(builders, cleanup, git_root, git_server, name)
    events = await collect(builder.build(second))
    final = events[-1]
    assert final.phase == FAILED, explain(events)
    assert final.message.startswith(f"pushing to {address} failed: "), final.message
    assert "Traceback" not in "\n".join(e.message for e in events)
    assert f"Pushing {name}" in logs_of(events)

    # The name is the previous image's again, and the new image is gone.
    assert await local_id(builder, name) == previous
    left = await builder.docker.images.list(filters={"label": [f"{UID_LABEL}={first.uid}"]})
    assert [image["Id"] for image in left] == [previous], left
    staging = await builder.docker.images.list(
        filters={"reference": [f"{builder.container_prefix}{second.uid}"]}
    )
    assert staging == []

    # A rollback that cannot push fails, and leaves the name where it was.
    with pytest.raises(BuildError) as failed:
        await builder.make_current(name, previous, name)
    assert failed.value.message.startswith(f"pushing to {address} failed: ")
    assert await local_id(builder, name) == previous


@pytest.mark.docker
@pytest.mark.kube
async def test_registry_credentials_stay_secret(
    auth_registry, builders, cleanup, git_root, git_server, caplog
):
    address, user, password = auth_registry
    wrong = f"wrong-{uuid.uuid4().hex}"
    secrets = []
    for secret in (password, wrong):
        secrets += [
            secret,
            quote(secret, safe=""),
            f"{user}:{secret}",
            base64.b64encode(f"{user}:{secret}".encode()).decode(),
        ]
    logger = logging.getLogger("tljh-r2d-push-test")
    caplog.set_level(logging.DEBUG, logger=logger.name)
    name, repository = image_name(address)
    repo = new_repo(git_root, {"Dockerfile": dockerfile("RUN echo secret-test > /tmp/which")})

    builder = builders(push=True, registry_username=user, registry_password=password, log=logger)
    request = new_request(cleanup, git_server.url(repo), name)
    events = await collect(builder.build(request))
    assert events[-1].phase == BUILT, explain(events)
    digest = pushed_digest(events, name)
    cleanup["manifests"].append((address, repository, digest, (user, password)))
    assert remote_digest(address, repository, "main", auth=(user, password)) == digest
    await builder.keep_version(name, events[-1].image_id, 1)
    cleanup["images"].append(version_reference(name, 1))
    assert "main--v1" in remote_tags(address, repository, auth=(user, password))
    inspected = docker("image", "inspect", name).stdout
    history = docker("history", "--no-trunc", name).stdout

    # Anonymous, and with a wrong password: refused, saying where.
    failures = []
    for settings in ({}, {"registry_username": user, "registry_password": wrong}):
        add_commit(git_root, repo, {"Dockerfile": dockerfile("RUN echo again > /tmp/which")})
        refused = builders(push=True, log=logger, **settings)
        again = new_request(cleanup, git_server.url(repo), name, uid=request.uid)
        failed = await collect(refused.build(again))
        assert failed[-1].phase == FAILED, explain(failed)
        assert failed[-1].message.startswith(f"pushing to {address} failed: "), failed[-1].message
        assert await local_id(refused, name) == events[-1].image_id
        failures += failed
    # Out of a build: a rollback fails with a message, a version stays local.
    with pytest.raises(BuildError) as rollback:
        await refused.make_current(name, events[-1].image_id, name)
    assert rollback.value.message.startswith(f"pushing to {address} failed: ")
    assert await refused.keep_version(name, events[-1].image_id, 2) == version_reference(name, 2)
    cleanup["images"].append(version_reference(name, 2))
    assert "main--v2" not in remote_tags(address, repository, auth=(user, password))
    assert "is kept here but not in its registry" in caplog.text

    shown = [e.message for e in events + failures] + [str(rollback.value), caplog.text]
    assert "pushing" in caplog.text.lower()
    for secret in secrets:
        for text in shown + [inspected, history]:
            assert secret not in text, f"a secret in: {text[:300]}"


@pytest.mark.docker
@pytest.mark.kube
async def test_a_push_stopped_midway_is_done_again_on_attach(
    registry, builders, cleanup, git_root, git_server
):
    name, repository = image_name(registry)
    builder = builders(push=True)
    first, previous, second = await built_then_changed(builders, cleanup, git_root, git_server, name)
    # The service stops following (it shuts down) as the push starts.
    lines, cursor = 0, None
    following = builder.build(second)
    async for event in following:
        assert not event.final, explain([event])
        if event.phase == "log":
            lines += 1
            cursor = event.cursor or cursor
            if event.message == f"Pushing {name}":
                break
    await following.aclose()
    # Not pushed: the name is the previous image's until it is.
    assert await local_id(builder, name) == previous
    assert remote_digest(registry, repository, "main") is None

    # After the restart, the build is followed again: named and pushed.
    events = await collect(builder.attach(second.uid, lines, cursor))
    assert events[-1].phase == BUILT, explain(events)
    digest = pushed_digest(events, name)
    cleanup["manifests"].append((registry, repository, digest, None))
    assert events[-1].image_id != previous
    assert await local_id(builder, name) == events[-1].image_id
    assert remote_digest(registry, repository, "main") == digest


@pytest.fixture(scope="module")
def no_delete_registry(registry, tmp_path_factory):
    """A registry that allows no deletes (the default of Docker's registry): ``host:port``."""
    root = tmp_path_factory.mktemp("no-delete-registry")
    with serving_registry(root, f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n") as address:
        yield address


@pytest.mark.docker
@pytest.mark.kube
async def test_pushed_images_are_deleted_from_registries_that_allow_it(
    registry, auth_registry, no_delete_registry, builders, cleanup, git_root, git_server
):
    repo = new_repo(git_root, {"Dockerfile": dockerfile("RUN echo deleted > /tmp/which")})

    # A registry with deletes: the version's tag and the name go (one manifest, two tags).
    builder = builders(push=True)
    name, repository = image_name(registry)
    request = new_request(cleanup, git_server.url(repo), name)
    request.number = 1
    cleanup["images"].append(version_reference(name, 1))
    events = await collect(builder.build(request))
    assert events[-1].phase == BUILT, explain(events)
    assert remote_tags(registry, repository) == ["main", "main--v1"]
    deleted, left = await builder.delete_pushed([version_reference(name, 1), name])
    assert (sorted(deleted), left) == (sorted([name, version_reference(name, 1)]), [])
    assert remote_tags(registry, repository) == []
    # gone already: nothing left, nothing to say
    assert await builder.delete_pushed([name]) == ([name], [])

    # With credentials (basic auth), never in what it says.
    address, user, password = auth_registry
    secret_builder = builders(push=True, registry_username=user, registry_password=password)
    name, repository = image_name(address)
    events = await collect(secret_builder.build(new_request(cleanup, git_server.url(repo), name)))
    assert events[-1].phase == BUILT, explain(events)
    assert await secret_builder.delete_pushed([name]) == ([name], [])
    assert remote_tags(address, repository, auth=(user, password)) == []

    # A registry that allows no deletes: the tag stays, and the answer says why.
    name, repository = image_name(no_delete_registry)
    events = await collect(builder.build(new_request(cleanup, git_server.url(repo), name)))
    assert events[-1].phase == BUILT, explain(events)
    deleted, left = await builder.delete_pushed([name])
    assert deleted == []
    assert left == [(name, f"{no_delete_registry} does not allow deleting images")]
    assert remote_tags(no_delete_registry, repository) == ["main"]


def test_registry_urls():
    from tljh_repo2docker.builds.docker.registry import registry_url

    assert registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_url("localhost:5000") == "http://localhost:5000"
    assert registry_url("[::1]:5000") == "http://[::1]:5000"
    assert registry_url("registry.example.org") == "https://registry.example.org"
    assert registry_url("docker.io") == "https://registry-1.docker.io"


def test_credentials_from_a_docker_config_file(tmp_path):
    """registry_config_file: the auth of the registry an image goes to (base64 user:password,
    or username/password fields); unreadable files are named, never shown."""
    import base64
    import json as jsonlib

    from tljh_repo2docker.builds.docker.push import config_file_credentials

    path = tmp_path / "config.json"
    path.write_text(jsonlib.dumps({"auths": {
        "127.0.0.1:5000": {"auth": base64.b64encode(b"bot:s3cret:with-colon").decode()},
        "https://registry.example.org": {"username": "u", "password": "p"},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:tok").decode()},
    }}))
    assert config_file_credentials(path, "127.0.0.1:5000") == ("bot", "s3cret:with-colon")
    assert config_file_credentials(path, "registry.example.org") == ("u", "p")
    assert config_file_credentials(path, "docker.io") == ("hub", "tok")
    assert config_file_credentials(path, "elsewhere.org") == ("", "")

    builder = make_builder(registry_config_file=str(path))
    assert builder._registry_auth("127.0.0.1:5000") == {"username": "bot", "password": "s3cret:with-colon"}
    assert "s3cret:with-colon" in builder._registry_secrets("127.0.0.1:5000")
    # the settings win over the file
    assert make_builder(registry_config_file=str(path), registry_username="x", registry_password="y")._registry_auth(
        "127.0.0.1:5000"
    ) == {"username": "x", "password": "y"}

    path.write_text('{"auths": {"127.0.0.1:5000": {"auth": "s3cret-not-base64!"}}}')
    with pytest.raises(ValueError) as info:
        config_file_credentials(path, "127.0.0.1:5000")
    assert str(path) in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ValueError, match="cannot be read"):
        config_file_credentials(tmp_path / "missing.json", "127.0.0.1:5000")


@pytest.mark.docker
@pytest.mark.kube
async def test_push_with_credentials_from_a_config_file(
    auth_registry, builders, cleanup, git_root, git_server, tmp_path
):
    import base64
    import json as jsonlib

    address, user, password = auth_registry
    config = tmp_path / "config.json"
    config.write_text(jsonlib.dumps(
        {"auths": {address: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}
    ))
    builder = builders(push=True, registry_config_file=str(config))
    name, repository = image_name(address)
    repo = new_repo(git_root, {"Dockerfile": dockerfile("RUN echo config-file > /tmp/which")})
    events = await collect(builder.build(new_request(cleanup, git_server.url(repo), name)))
    assert events[-1].phase == BUILT, explain(events)
    assert remote_tags(address, repository, auth=(user, password)) == ["main"]
    assert not any(password in e.message for e in events)
    assert await builder.delete_pushed([name]) == ([name], [])

    # an unreadable file fails the build's push naming the file, not a traceback
    config.write_text("{not json")
    again = new_request(cleanup, git_server.url(repo), name)
    events = await collect(builder.build(again))
    assert events[-1].phase == FAILED
    assert events[-1].message.startswith(f"pushing to {address} failed: DockerBuilder.registry_config_file")
