"""The TLJH plugin, loaded the way TLJH loads plugins, and the hub config it shares.

TLJH makes a ``pluggy.PluginManager("tljh")`` with the specs of its
``tljh/hooks.py``, loads the ``tljh`` entry points and calls
``tljh_custom_jupyterhub_config(c=c)`` after applying its own config to ``c``.
"""

import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pluggy
import pytest
from traitlets.config import Config

from tljh_repo2docker import TLJH_R2D_ADMIN_SCOPE, TLJH_R2D_BUILD_SCOPE, hub_config, tljh_plugin
from tljh_repo2docker import tljh_config as tljh_module
from tljh_repo2docker.spawner import Repo2DockerSpawner

ROOT = Path(__file__).resolve().parent.parent
ACCESS = "access:services!service=tljh_repo2docker"

hookspec = pluggy.HookspecMarker("tljh")


class TljhHookSpecs:
    """The hook specifications of TLJH (tljh/hooks.py), with the same signatures."""

    @hookspec
    def tljh_extra_user_conda_packages(self):
        pass

    @hookspec
    def tljh_extra_user_pip_packages(self):
        pass

    @hookspec
    def tljh_extra_hub_pip_packages(self):
        pass

    @hookspec
    def tljh_extra_apt_packages(self):
        pass

    @hookspec
    def tljh_custom_jupyterhub_config(self, c):
        pass

    @hookspec
    def tljh_config_post_install(self, config):
        pass

    @hookspec
    def tljh_post_install(self):
        pass

    @hookspec
    def tljh_new_user_create(self, username):
        pass


@pytest.fixture
def pm(monkeypatch):
    # The hub binds to Docker's bridge; don't ask the engine of the test machine.
    monkeypatch.setattr(tljh_plugin, "docker_bridge_ip", lambda network="bridge": "172.30.0.1")
    manager = pluggy.PluginManager("tljh")
    manager.add_hookspecs(TljhHookSpecs)
    manager.register(tljh_plugin)
    manager.check_pending()  # every hook the plugin implements is one TLJH knows
    return manager


def tljh_config():
    """What TLJH's own configurer leaves in ``c`` before calling the plugins."""
    c = Config()
    c.JupyterHub.spawner_class = "tljh.user_creating_spawner.UserCreatingSpawner"
    c.JupyterHub.hub_port = 15001
    c.JupyterHub.services = [
        {"name": "cull-idle", "admin": True, "command": [sys.executable, "-m", "culler"]}
    ]
    c.Spawner.mem_limit = None
    return c


def by_name(entries):
    return {entry["name"]: entry for entry in entries}


def test_entry_point_is_declared():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["tljh"]["tljh_repo2docker"]
    assert target == "tljh_repo2docker.tljh_plugin"
    assert import_module(target) is tljh_plugin


def test_spawner_and_docker_settings(pm):
    c = tljh_config()
    pm.hook.tljh_custom_jupyterhub_config(c=c)

    assert c.JupyterHub.spawner_class is Repo2DockerSpawner
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.hub_ip == "172.30.0.1"
    assert c.JupyterHub.hub_port == 15001  # TLJH's own setting is kept
    assert c.DockerSpawner.pull_policy == "never"
    assert c.DockerSpawner.cmd == ["jupyterhub-singleuser"]
    assert c.DockerSpawner.remove is False


def test_service_roles_and_scope(pm):
    c = tljh_config()
    pm.hook.tljh_custom_jupyterhub_config(c=c)

    services = by_name(c.JupyterHub.services)
    assert services["cull-idle"]["admin"] is True  # TLJH's culler is kept
    service = services["tljh_repo2docker"]
    assert service["command"] == [
        sys.executable,
        "-m",
        "tljh_repo2docker",
        "--ip=127.0.0.1",
        "--port=6789",
    ]
    assert service["url"] == "http://127.0.0.1:6789"
    assert service["oauth_no_confirm"] is True
    assert TLJH_R2D_ADMIN_SCOPE in service["oauth_client_allowed_scopes"]

    roles = by_name(c.JupyterHub.load_roles)
    service_role = roles[hub_config.SERVICE_ROLE]
    assert service_role["services"] == ["tljh_repo2docker"]
    assert set(service_role["scopes"]) == {
        "list:users", "read:users", "read:roles:users", "admin:servers",
        "list:groups", "read:groups", "read:users:groups",  # who belongs to the groups environments are shared with
    }
    assert TLJH_R2D_BUILD_SCOPE in service["oauth_client_allowed_scopes"]
    assert TLJH_R2D_BUILD_SCOPE in c.JupyterHub.custom_scopes
    assert roles["user"]["scopes"] == ["self", ACCESS]
    assert c.JupyterHub.custom_scopes[TLJH_R2D_ADMIN_SCOPE]["description"]


def test_existing_entries_are_kept(pm):
    c = tljh_config()
    own_service = {"name": "tljh_repo2docker", "url": "http://127.0.0.1:7000", "command": ["x"]}
    c.JupyterHub.services.append(own_service)
    c.JupyterHub.load_roles = [
        {"name": "user", "scopes": ["self", "read:groups"]},
        {"name": "teachers", "scopes": [TLJH_R2D_ADMIN_SCOPE], "groups": ["teachers"]},
    ]
    c.JupyterHub.custom_scopes = {
        "custom:grades:read": {"description": "Read grades"},
        TLJH_R2D_ADMIN_SCOPE: {"description": "Our own words"},
    }
    pm.hook.tljh_custom_jupyterhub_config(c=c)

    assert [s["name"] for s in c.JupyterHub.services] == ["cull-idle", "tljh_repo2docker"]
    assert by_name(c.JupyterHub.services)["tljh_repo2docker"] == own_service
    roles = by_name(c.JupyterHub.load_roles)
    assert roles["user"]["scopes"] == ["self", "read:groups", ACCESS]
    assert roles["teachers"] == {
        "name": "teachers",
        "scopes": [TLJH_R2D_ADMIN_SCOPE],
        "groups": ["teachers"],
    }
    assert hub_config.SERVICE_ROLE in roles
    assert c.JupyterHub.custom_scopes["custom:grades:read"] == {"description": "Read grades"}
    assert c.JupyterHub.custom_scopes[TLJH_R2D_ADMIN_SCOPE] == {"description": "Our own words"}


def test_appends_to_unset_lists_are_kept():
    # `c.JupyterHub.services.append(...)` before any assignment leaves a LazyConfigValue.
    c = Config()
    c.JupyterHub.services.append({"name": "other", "url": "http://127.0.0.1:7001"})
    c.JupyterHub.load_roles.append({"name": "other-role", "scopes": ["read:users"]})
    hub_config.configure(c)
    assert [s["name"] for s in c.JupyterHub.services] == ["other", "tljh_repo2docker"]
    assert [r["name"] for r in c.JupyterHub.load_roles] == [
        "other-role",
        hub_config.SERVICE_ROLE,
        "user",
    ]


def test_configure_twice_adds_nothing_twice():
    c = Config()
    hub_config.configure(c)
    hub_config.configure(c)
    assert [s["name"] for s in c.JupyterHub.services] == ["tljh_repo2docker"]
    assert by_name(c.JupyterHub.load_roles)["user"]["scopes"] == ["self", ACCESS]
    assert len(c.JupyterHub.load_roles) == 2


def test_hub_pip_packages(pm):
    packages = [p for batch in pm.hook.tljh_extra_hub_pip_packages() for p in batch]
    assert any(p.startswith("dockerspawner") for p in packages)
    # TLJH installs these with --upgrade: naming this package would swap the
    # installed plugin for whatever the index holds under that name.
    assert not any(p.startswith("tljh-repo2docker") for p in packages)


def test_docker_bridge_ip_falls_back_without_an_engine(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    assert tljh_plugin.docker_bridge_ip() == tljh_plugin.DEFAULT_BRIDGE_IP


def test_service_config_is_parametrised():
    service = hub_config.service_config(6790, args=["--log-level=DEBUG"])
    assert service["url"] == "http://127.0.0.1:6790"
    assert service["command"][-2:] == ["--port=6790", "--log-level=DEBUG"]


def test_binderhub_roles_and_admin_role():
    service_role = by_name(hub_config.roles(binderhub=True))[hub_config.SERVICE_ROLE]
    assert "access:services!service=binder" in service_role["scopes"]
    c = Config()
    hub_config.configure(c, binderhub=True, admins={"users": ["bob"]})
    admin = by_name(c.JupyterHub.load_roles)[hub_config.ADMIN_ROLE]
    assert admin["scopes"] == [TLJH_R2D_ADMIN_SCOPE]
    assert admin["users"] == ["bob"]


# -- the service's settings from TLJH's config.yaml (tljh_repo2docker/tljh_config.py) --


def tljh_yaml(**section):
    """TLJH's config as its configurer loads it, with ``services.tljh_repo2docker``."""
    return {"services": {"cull": {"enabled": True}, "tljh_repo2docker": section}}


def service_environment(c):
    service = by_name(c.JupyterHub.services)["tljh_repo2docker"]
    return service.get("environment") or {}


def test_tljh_settings_reach_the_hub_and_the_service(monkeypatch, tmp_path):
    c = tljh_config()
    secret_url = "postgresql://r2d:hunter2-db@db/r2d"
    tljh_module.configure(
        c,
        tljh_yaml(
            port=6790,
            image_prefix="school-envs/",
            default_memory_limit=2,  # tljh-config gives numbers as numbers
            machine_profiles=['{"label": "Small", "cpu": 1, "memory": 2}'],
            max_concurrent_builds="3",
            db_url=secret_url,
            DockerBuilder={"docker_url": "tcp://127.0.0.1:2375"},
            admin_users=["bob"],
            admin_groups="teachers",
        ),
    )
    service = by_name(c.JupyterHub.services)["tljh_repo2docker"]
    assert service["url"] == "http://127.0.0.1:6790"
    assert "--port=6790" in service["command"]
    # settings (a DB password among them) never on the command line
    assert not any("hunter2" in arg or "school-envs" in arg for arg in service["command"])
    assert by_name(c.JupyterHub.services)["cull-idle"]["admin"] is True
    # every spawner class gets the service's prefix and database (issue 25)
    from tljh_repo2docker import Repo2DockerSpawner

    spawner = Repo2DockerSpawner(config=c, _mock=True)
    assert (spawner.image_prefix, spawner.db_url) == ("school-envs/", secret_url)
    admin = by_name(c.JupyterHub.load_roles)[hub_config.ADMIN_ROLE]
    assert admin["users"] == ["bob"] and admin["groups"] == ["teachers"]

    # The service reads them back from its environment; the command line wins.
    from tljh_repo2docker.app import TljhRepo2Docker

    monkeypatch.chdir(tmp_path)
    for key, value in service_environment(c).items():
        monkeypatch.setenv(key, value)
    app = TljhRepo2Docker()
    app.initialize(["--max_concurrent_builds=5"])
    assert app.image_prefix == "school-envs/"
    assert app.default_memory_limit == "2G"
    assert app.machine_profiles == [{"label": "Small", "cpu": 1.0, "memory": "2G"}]
    assert app.db_url == secret_url
    assert app.config.DockerBuilder.docker_url == "tcp://127.0.0.1:2375"
    assert app.config.BuildManager.max_concurrent_builds == 5


def test_the_service_file_wins_over_tljh_config(monkeypatch, tmp_path):
    from tljh_repo2docker.app import TljhRepo2Docker

    c = Config()
    tljh_module.configure(c, tljh_yaml(image_prefix="from-tljh/", default_cpu_limit=1))
    for key, value in service_environment(c).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "tljh_repo2docker_config.py").write_text('c.TljhRepo2Docker.image_prefix = "from-file/"\n')
    monkeypatch.chdir(tmp_path)
    app = TljhRepo2Docker()
    app.initialize([])
    assert app.image_prefix == "from-file/"
    assert app.default_cpu_limit == 1.0


def test_no_tljh_settings_change_nothing():
    c = tljh_config()
    tljh_module.configure(c, {"services": {"cull": {}}})
    assert service_environment(c) == {}
    assert "image_prefix" not in c.Repo2DockerSpawner
    assert by_name(c.JupyterHub.services)["tljh_repo2docker"]["url"] == "http://127.0.0.1:6789"


def test_binderhub_url_from_tljh_config_adds_the_binder_scope():
    c = Config()
    tljh_module.configure(c, tljh_yaml(binderhub_url="http://127.0.0.1:8585/services/binder/"))
    service_role = by_name(c.JupyterHub.load_roles)[hub_config.SERVICE_ROLE]
    assert hub_config.BINDER_ACCESS_SCOPE in service_role["scopes"]


@pytest.mark.parametrize(
    "section, message",
    [
        ({"prot": 6790}, "services.tljh_repo2docker.prot: not a setting of the service"),
        ({"DockerBuilder": {"url": "x"}}, "services.tljh_repo2docker.DockerBuilder.url:"),
        ({"port": "high"}, "services.tljh_repo2docker.port:"),
        ({"admin_users": [1]}, "services.tljh_repo2docker.admin_users:"),
    ],
)
def test_bad_tljh_settings_name_the_key(section, message):
    with pytest.raises(ValueError) as info:
        tljh_module.configure(Config(), tljh_yaml(**section))
    assert message in str(info.value)


def test_section_that_is_no_mapping_is_refused():
    with pytest.raises(ValueError, match="services.tljh_repo2docker must hold settings"):
        tljh_module.configure(Config(), {"services": {"tljh_repo2docker": "yes"}})


def test_bad_value_from_tljh_config_stops_the_service_with_one_line(tmp_path):
    import json as json_module
    import os
    import subprocess

    env = dict(os.environ)
    env[tljh_module.ENV_VAR] = json_module.dumps({"TljhRepo2Docker": {"default_memory_limit": "2X"}})
    result = subprocess.run(
        [sys.executable, "-m", "tljh_repo2docker"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "default_memory_limit" in lines[0], lines


def test_bad_value_is_named_by_the_hub():
    with pytest.raises(ValueError) as info:
        tljh_module.configure(Config(), tljh_yaml(default_memory_limit="2X"))
    assert str(info.value).startswith("services.tljh_repo2docker: ")
    assert "default_memory_limit" in str(info.value)
