"""Fixtures for the test suite.

Real components, started once per session:

- ``docker_engine``: checks that a Docker engine answers; fails under CI=true,
  skips elsewhere.
- ``test_images``: the local images built by ``scripts/build-test-images.sh``
  (repo2docker builder and single-user image); fails under CI if missing.
- ``git_server``: a git HTTP server on 127.0.0.1 serving bare repositories
  (``tests/helpers/gitserver.py``); ``private_git_server`` requires basic auth.
- ``hub``: a real JupyterHub with configurable-http-proxy, DummyAuthenticator,
  Repo2DockerSpawner on the project's own Docker network, and this service as
  a managed service. Gives URLs, the admin API token and helpers.
- ``admin``, ``alice``, ``bob``: logged-in browser-like sessions
  (:class:`tests.helpers.utils.HubUser`) for a hub admin, a plain user, and a user whose
  role carries the ``custom:tljh_repo2docker:admin`` scope.
- ``running_hub(workdir, extra_service_args, extra_config, image_prefix)``: a
  context manager starting another such hub, for modules that need the
  service or the hub configured differently (e.g. with ``--binderhub_url``, or
  another spawner class); it removes its users' home volumes when it stops. ``stop_hub(info)`` and ``start_hub(info)``
  stop its JupyterHub and start it again on the same configuration.
- ``sqlite_sessions``: sessions of a fresh SQLite database made by the
  migrations, for tests of the service's parts without a hub.
- ``content_server``: ``(root, server)``, a git server on the hub's Docker
  gateway, which the servers' containers reach (content pulled at launch);
  repositories are made with ``make_repo(root, ...)``.
- ``built_env``: one environment built through the service's API, shared by
  the tests that only need "some built environment".
- ``repo``: ``repo(files) -> (name, url)`` makes a repository on the git
  server; ``envs`` with ``add(user, envs, body)``: environments a test adds,
  deleted after it.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import utils
from tests.helpers.gitserver import GitServer, make_repo

HERE = Path(__file__).resolve().parent.parent  # tests/
ROOT = HERE.parent
IN_CI = os.environ.get("CI", "").lower() == "true"

BUILDER_IMAGE = os.environ.get(
    "TLJH_R2D_TEST_REPO2DOCKER_IMAGE", "tljh-repo2docker-test/repo2docker:latest"
)
SINGLEUSER_IMAGE = os.environ.get(
    "TLJH_R2D_TEST_SINGLEUSER_IMAGE", "tljh-repo2docker-test/singleuser:latest"
)
TEST_NETWORK = "tljh-r2d-test"


def need(reason):
    """Fail under CI, skip elsewhere: real infrastructure is missing."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: tests that need it must run)")
    pytest.skip(reason)


def docker_ok():
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=20
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_exists(name):
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_engine():
    if not docker_ok():
        need("no Docker engine answers")
    return True


@pytest.fixture(scope="session")
def test_images(docker_engine):
    missing = [i for i in (BUILDER_IMAGE, SINGLEUSER_IMAGE) if not image_exists(i)]
    if missing:
        need(f"test images missing: {', '.join(missing)} (run ./dev images)")
    return {"builder": BUILDER_IMAGE, "singleuser": SINGLEUSER_IMAGE}


@pytest.fixture(scope="session")
def git_root(tmp_path_factory):
    return tmp_path_factory.mktemp("git")


@pytest.fixture(scope="session")
def git_server(git_root):
    server = GitServer(git_root).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def private_git_root(tmp_path_factory):
    return tmp_path_factory.mktemp("private-git")


@pytest.fixture(scope="session")
def private_git_server(private_git_root):
    server = GitServer(
        private_git_root, username="builder", password=utils.SECRET_PASSWORD
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def content_server(hub, tmp_path_factory):
    """A git server the servers' network reaches (on its gateway): ``(root, server)``.

    The git server above listens on 127.0.0.1, which builds reach through the
    host network but a server's container cannot; content pulled at launch
    runs on the servers' network, so it needs this one. Module scope keeps
    each module's repositories apart.
    """
    root = tmp_path_factory.mktemp("content-git")
    server = GitServer(root, host=hub.gateway).start()
    yield root, server
    server.stop()


@pytest.fixture(scope="session")
def dockerfile_repo(git_server, git_root, test_images):
    """A repository whose Dockerfile builds quickly from the single-user image."""
    make_repo(git_root, "simple", {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"})
    return git_server.url("simple")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_network():
    """The project's own Docker network for spawned servers; returns its gateway."""
    inspect = subprocess.run(
        ["docker", "network", "inspect", TEST_NETWORK, "-f", "{{(index .IPAM.Config 0).Gateway}}"],
        capture_output=True,
        text=True,
    )
    if inspect.returncode != 0:
        subprocess.run(["docker", "network", "create", TEST_NETWORK], check=True, capture_output=True)
        inspect = subprocess.run(
            ["docker", "network", "inspect", TEST_NETWORK, "-f", "{{(index .IPAM.Config 0).Gateway}}"],
            capture_output=True,
            text=True,
            check=True,
        )
    return inspect.stdout.strip()


def start_hub(hub_info):
    """Start JupyterHub on ``hub_info``'s ``jupyterhub_config.py``, in its directory.

    Appends to ``jupyterhub.log``; waits until the hub and the service answer
    through the proxy. Used to start a hub and to start it again (same
    configuration, same directory, same database) after :func:`stop_hub`.
    """
    workdir = hub_info.workdir
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    with open(workdir / "jupyterhub.log", "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", "jupyterhub_config.py"],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    hub_info.proc = proc
    try:
        utils.wait_for_http(f"{hub_info.url}hub/api/", timeout=60, proc=proc)
        utils.wait_for_http(f"{hub_info.url}services/tljh_repo2docker/", timeout=60, proc=proc)
    except Exception:
        proc.terminate()
        print((workdir / "jupyterhub.log").read_text()[-5000:])
        raise
    return proc


def stop_hub(hub_info, sig=signal.SIGTERM, timeout=30):
    """Stop the hub's process with ``sig`` (SIGTERM: what an init system sends); kill it after ``timeout``."""
    proc = hub_info.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def running_hub(workdir, extra_service_args=(), extra_config="", image_prefix=None):
    """Start a real JupyterHub + proxy with the service (extra command-line options
    for the service in ``extra_service_args``, extra lines for its
    ``jupyterhub_config.py`` in ``extra_config``, the service's image prefix in
    ``image_prefix``: a fresh one by default); stop it and clean up afterwards."""
    if shutil.which("configurable-http-proxy") is None:
        need("configurable-http-proxy is not installed (npm install -g configurable-http-proxy)")
    hub_info = utils.HubInfo(
        workdir=workdir,
        proxy_port=_free_port(),
        proxy_api_port=_free_port(),
        hub_port=_free_port(),
        service_port=_free_port(),
        gateway=_test_network(),
        network=TEST_NETWORK,
        **({"image_prefix": image_prefix} if image_prefix else {}),
    )
    config = utils.hub_config(
        hub_info,
        builder_image=BUILDER_IMAGE,
        extra_service_args=extra_service_args,
        extra_config=extra_config,
    )
    (workdir / "jupyterhub_config.py").write_text(config)
    start_hub(hub_info)
    try:
        yield hub_info
    finally:
        # hub_info.proc: the hub may have been restarted (start_hub) meanwhile.
        if hub_info.proc is not None and hub_info.proc.poll() is None:
            utils.stop_all_servers(hub_info)
        stop_hub(hub_info, signal.SIGTERM, timeout=20)
        utils.remove_home_volumes(hub_info)


@pytest.fixture(scope="session")
def hub(tmp_path_factory, test_images):
    """A real JupyterHub + proxy with the service as a managed service."""
    with running_hub(tmp_path_factory.mktemp("hub")) as hub_info:
        yield hub_info
    utils.remove_test_images()


@pytest.fixture(autouse=True)
def _hub_log_on_failure(request):
    """Print the end of the hub's log (which includes the service's) when a hub test fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "hub" in request.fixturenames:
        hub_info = request.getfixturevalue("hub")
        print("---- jupyterhub.log (tail) ----")
        print((hub_info.workdir / "jupyterhub.log").read_text()[-8000:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
async def sqlite_sessions(tmp_path):
    """Sessions of a fresh SQLite database made by the service's migrations."""
    from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db

    engine = make_engine(f"sqlite:///{tmp_path / 'service.sqlite'}")
    await upgrade_db(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
async def admin(hub):
    user = await utils.HubUser.login(hub, "admin")
    yield user
    await user.close()


@pytest.fixture(scope="session")
async def alice(hub):
    user = await utils.HubUser.login(hub, "alice")
    yield user
    await user.close()


@pytest.fixture(scope="session")
async def bob(hub):
    user = await utils.HubUser.login(hub, "bob")
    yield user
    await user.close()


@pytest.fixture
def repo(git_root, git_server):
    """``repo(files) -> (name, url)``: a new repository on the git server."""

    def make(files):
        name = f"r-{uuid.uuid4().hex[:10]}"
        make_repo(git_root, name, files)
        return name, git_server.url(name)

    return make


@pytest.fixture
async def envs(admin):
    """Environments a test adds (see ``add``); cancelled and deleted afterwards."""
    made = []
    yield made
    for uid in made:
        await admin.api("POST", f"api/environments/{uid}/cancel")
        r = await admin.delete_env(uid)
        assert r.status_code in (204, 404), (r.status_code, r.text)


async def add(user, envs, body):
    """Add an environment as ``user`` (a unique name unless ``body`` has one),
    deleted after the test by the ``envs`` fixture."""
    body = dict(body)
    body.setdefault("name", f"env-{uuid.uuid4().hex[:10]}")
    env = await user.create_env(body)
    envs.append(env["uid"])
    return env


@pytest.fixture(scope="session")
async def built_env(admin, dockerfile_repo):
    """One environment built through the API and shared by the tests that only read it."""
    env = await admin.create_env(
        {"repo": dockerfile_repo, "name": "shared-env", "memory": "512M", "cpu": "0.5"}
    )
    env = await admin.wait_env(env["uid"], {"built"})
    return env


def pytest_terminal_summary(terminalreporter):
    if utils.FIGURES:
        terminalreporter.section("figures measured by the tests")
        for text in utils.FIGURES:
            terminalreporter.write_line(text)
