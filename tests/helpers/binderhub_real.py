"""The real BinderHub next to the service, for the tests that run it
(``tests/test_binderhub_real.py``, ``tests/test_binderhub_registry.py``).

BinderHub (from its source, see ``./dev setup_vendor``, installed in
``.venv-binderhub``) runs without Kubernetes, the way its own single-machine
set-up does: a JupyterHub managed service ``binder`` next to ours,
``LocalRepo2dockerBuild`` (repo2docker as a host process on this machine's
Docker engine, with the ``docker buildx`` of its own docker CLI config),
API-only mode, authentication through the hub.

- ``need_binderhub()``: its interpreter, or the test is skipped (failed under
  ``CI=true``) when it is not installed;
- ``serve_git(root, dockerfiles)``: a ``git daemon`` serving one repository per
  Dockerfile (BinderHub's git provider takes ``git://`` URLs), a context
  manager giving its base URL;
- ``binderhub_hub(workdir, image_prefix, registry=None)``: a running test hub
  (``running_hub``) with BinderHub as its service ``binder`` and our service
  building through it (``--binderhub_url``); ``hub_info.binder_url`` is
  BinderHub's URL. With ``registry`` (``host:port``, plain HTTP, no auth)
  BinderHub pushes its images there and looks them up there; without, it has
  no registry;
- ``local_images(prefix)``: the local engine's images named with ``prefix``;
- ``hub_user(name)``: a module-scoped fixture, ``name`` logged in to the
  module's own ``hub`` (``admin = hub_user("admin")``).
"""

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import utils
from tests.helpers.fixtures import ROOT, _free_port, need, running_hub
from tests.helpers.gitserver import make_repo

VENV = ROOT / ".venv-binderhub"
PYTHON = VENV / "bin" / "python"
#: BinderHub's own docker CLI config, holding the docker-buildx plugin.
DOCKER_CONFIG = VENV / "docker"


def need_binderhub():
    """BinderHub's interpreter; skips (fails under CI) when it is not installed."""
    if not PYTHON.exists():
        need(f"the real BinderHub is not installed in {VENV} (run ./dev setup)")
    if not (DOCKER_CONFIG / "cli-plugins" / "docker-buildx").exists():
        need(f"docker-buildx is missing from {DOCKER_CONFIG}/cli-plugins (run ./dev setup)")
    return PYTHON


def _port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def serve_git(root, dockerfiles):
    """``git://127.0.0.1:<port>/``: a ``git daemon`` serving, from ``root``, a
    repository ``<name>.git`` holding only a Dockerfile for each ``name: dockerfile``."""
    for name, dockerfile in dockerfiles.items():
        make_repo(root, name, {"Dockerfile": dockerfile})
    port = _free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
         "--listen=127.0.0.1", f"--port={port}", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _port_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.1)
        yield f"git://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)


def binderhub_config(workdir, port, image_prefix, registry=None):
    """Write BinderHub's configuration (and repo2docker's) into ``workdir``; its path."""
    r2d_config = workdir / "repo2docker_config.py"
    # Offline: only the providers that need no internet.
    r2d_config.write_text(
        "from repo2docker.contentproviders import Git, Local\n"
        "c.Repo2Docker.content_providers = [Local, Git]\n"
    )
    text = f"""
import os
# The hub as the hub tells its services (BinderHub checks hub/api/health there).
c.BinderHub.hub_url = os.environ["JUPYTERHUB_API_URL"].rpartition("hub/api")[0]
c.BinderHub.build_class = "binderhub.build_local.LocalRepo2dockerBuild"
c.BinderHub.builder_required = False
c.BinderHub.launch_quota_class = "binderhub.quota.LaunchQuota"
c.BinderHub.enable_api_only_mode = True
c.BinderHub.auth_enabled = True
c.BinderHub.image_prefix = {image_prefix!r}
c.BinderHub.base_url = "/services/binder/"
c.BinderHub.port = {port}
c.LocalRepo2dockerBuild.repo2docker_extra_args = ["--config", {str(r2d_config)!r}]
"""
    if registry is None:
        text += "c.BinderHub.use_registry = False\n"
    else:
        # The registry asks for no credentials: an empty docker config, so that
        # BinderHub's registry client reads no one's ~/.docker/config.json.
        registry_auth = workdir / "registry-docker-config.json"
        registry_auth.write_text("{}\n")
        text += f"""
# Push to the cluster's registry, and look images up there.
c.BinderHub.use_registry = True
# Any value: it only makes BinderHub pass --push to repo2docker (the local
# executor has no secret to mount; the engine needs no login for this registry).
c.LocalRepo2dockerBuild.push_secret = "push"
c.DockerRegistry.url = "http://{registry}"
c.DockerRegistry.docker_config_path = {str(registry_auth)!r}
"""
    config = workdir / "binderhub_config.py"
    config.write_text(text)
    return config


def binder_service_config(workdir, port, config):
    """The lines of ``jupyterhub_config.py`` that make BinderHub its service ``binder``."""
    return f"""
import os
c.JupyterHub.services.append({{
    "name": "binder",
    "url": "http://127.0.0.1:{port}",
    "command": [{str(PYTHON)!r}, "-m", "binderhub", "-f", {str(config)!r}],
    "cwd": {str(workdir)!r},
    "oauth_no_confirm": True,
    "environment": {{
        "PATH": {str(VENV / "bin")!r} + ":" + os.environ["PATH"],
        "DOCKER_CONFIG": {str(DOCKER_CONFIG)!r},
    }},
}})
# our service reaches BinderHub with its own token (hub_config.roles(binderhub=True))
c.JupyterHub.load_roles[0]["scopes"].append("access:services!service=binder")
"""


@contextlib.contextmanager
def binderhub_hub(workdir, image_prefix, registry=None):
    """A running test hub with BinderHub as its service ``binder``, both answering."""
    port = _free_port()
    config = binderhub_config(workdir, port, image_prefix, registry)
    binder_url = f"http://127.0.0.1:{port}/services/binder/"
    args = [
        f"--binderhub_url={binder_url}",
        "--repo_providers=git",
        # BinderHub starts after our service, which looks again every second.
        "--retry_interval=1",
    ]
    extra_config = binder_service_config(workdir, port, config)
    try:
        with running_hub(workdir, args, extra_config=extra_config) as hub_info:
            hub_info.binder_url = binder_url
            utils.wait_for_http(binder_url + "health", timeout=60, ok=(200,))
            utils.wait_for_http(
                f"{hub_info.url}services/tljh_repo2docker/health", timeout=60, ok=(200,)
            )
            yield hub_info
    finally:
        stop_leftover_binderhub(config)


def stop_leftover_binderhub(config):
    """Kill a BinderHub still running ``config`` once its hub has stopped.

    A hub that does not stop within its timeout is killed, and its managed
    services then outlive it: seen after whole runs, a BinderHub per run left
    listening on the machine. Returns how many were killed."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if b"binderhub" in argv and str(config).encode() in argv:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def local_images(prefix):
    """``repository:tag`` of the local engine's images whose name starts with ``prefix``."""
    out = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {name for name in out.split() if name.startswith(prefix)}


def hub_user(name):
    """A module-scoped fixture named ``name``: that user logged in to the module's ``hub``."""

    async def user(hub):
        """The user logged in to the module's own hub (module scope)."""
        session = await utils.HubUser.login(hub, name)
        yield session
        await session.close()

    return pytest.fixture(user, scope="module", name=name)
