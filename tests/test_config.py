"""Start-up configuration: every bad value stops the service with one clear line."""

import json
import subprocess
import sys

import pytest

from tljh_repo2docker.app import TljhRepo2Docker


def run_service(args, cwd, timeout=20):
    return subprocess.run(
        [sys.executable, "-m", "tljh_repo2docker", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "arg, option",
    [
        ("--machine_profiles={bad json", "machine_profiles"),
        ('--machine_profiles={"cpu": 2, "memory": 2}', "machine_profiles"),
        ('--machine_profiles={"label": "S", "memory": "2X"}', "machine_profiles"),
        ('--machine_profiles=[{"label": "S"}, {"label": "S"}]', "machine_profiles"),
        ("--default_memory_limit=2X", "default_memory_limit"),
        ("--default_cpu_limit=-1", "default_cpu_limit"),
        ("--default_cpu_limit=many", "default_cpu_limit"),
        ('--node_selector={"gpu": {"values": []}}', "node_selector"),
        ("--node_selector=[1, 2]", "node_selector"),
        ("--db_url=oracle://scott:tiger@db/x", "db_url"),
        ("--db_url=not a url", "db_url"),
        ("--port=abc", "port"),
        ("--config=/nonexistent/tljh_repo2docker_config.py", "config"),
    ],
)
def test_bad_configuration_stops_with_one_clear_line(arg, option, tmp_path):
    # db_url: an unknown scheme or no URL at all is one line naming db_url (and
    # never the password). A server that does not answer is not a
    # configuration error: see tests/test_startup.py.
    result = run_service([arg], tmp_path)
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert option in lines[0], output
    # the password of a DB URL never shows
    assert "tiger" not in output and ":pw@" not in output


def test_missing_db_driver_names_the_extra(monkeypatch):
    """Without the driver installed, the message says which extra installs it."""
    import importlib.util

    from tljh_repo2docker.db import session

    real = importlib.util.find_spec
    monkeypatch.setattr(
        session.importlib.util,
        "find_spec",
        lambda name, *a: None if name in {"asyncpg", "aiomysql"} else real(name, *a),
    )
    for url, extra in [("mysql://u:p@127.0.0.1/x", "mysql"), ("postgresql://u:p@h/db", "postgres")]:
        with pytest.raises(session.DatabaseURLError) as e:
            session.async_url(url)
        assert f"tljh-repo2docker[{extra}]" in str(e.value)
        assert ":p@" not in str(e.value)


def test_help_all_documents_every_option(tmp_path):
    result = run_service(["--help-all"], tmp_path)
    assert result.returncode == 0
    for option in [
        "--ip", "--port", "--default_memory_limit", "--default_cpu_limit", "--machine_profiles",
        "--node_selector", "--binderhub_url", "--db_url", "--repo2docker_image",
        "--max_concurrent_builds", "--cookie_secret_file", "--log_level",
    ]:
        assert option in result.stdout, option


def test_every_setting_has_help():
    from tljh_repo2docker.builds.manager import BuildManager
    from tljh_repo2docker.service.engine import Homes
    from tljh_repo2docker.hub_client import HubClient

    from tljh_repo2docker.service.ref_watcher import RefWatcher

    for cls in (TljhRepo2Docker, BuildManager, HubClient, Homes, RefWatcher):
        for name, trait in cls.class_traits(config=True).items():
            if cls is TljhRepo2Docker and name in TljhRepo2Docker.__base__.class_traits(config=True):
                continue
            assert trait.help and len(trait.help.strip()) > 15, f"{cls.__name__}.{name} has no help"


def test_machine_profiles_accept_repeat_and_list():
    app = TljhRepo2Docker()
    app.parse_command_line(
        [
            '--machine_profiles={"label": "Small", "cpu": 2, "memory": 2}',
            '--machine_profiles=[{"label": "Large", "cpu": 4, "memory": "8G"}]',
        ]
    )
    assert app.machine_profiles == [
        {"label": "Small", "cpu": 2.0, "memory": "2G"},
        {"label": "Large", "cpu": 4.0, "memory": "8G"},
    ]


def test_node_selector_from_json_string():
    app = TljhRepo2Docker()
    value = {"gpu": {"description": "GPU availability", "values": ["yes", "no"]}}
    app.parse_command_line([f"--node_selector={json.dumps(value)}"])
    assert app.node_selector == value


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    monkeypatch.chdir(tmp_path)
    app = TljhRepo2Docker()
    app.parse_command_line([])
    assert app.ip == "127.0.0.1"
    assert app.port == 6789
    assert app.default_memory_limit is None and app.default_cpu_limit is None
    assert app.db_url == f"sqlite:///{tmp_path / 'tljh_repo2docker.sqlite'}"
    assert app.base_url == "/services/tljh_repo2docker/"


def test_service_prefix_from_hub_environment(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/jhub/services/envs")
    app = TljhRepo2Docker()
    assert app.base_url == "/jhub/services/envs/"


def test_every_setting_is_in_the_readme():
    """The README's settings table names every configurable trait."""
    from pathlib import Path

    from tljh_repo2docker.builds.binderhub import BinderHubBuilder
    from tljh_repo2docker.builds.docker import DockerBuilder
    from tljh_repo2docker.builds.manager import BuildManager
    from tljh_repo2docker.service.engine import Homes
    from tljh_repo2docker.hub_client import HubClient
    from tljh_repo2docker.service.quotas import Quotas

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = []
    from tljh_repo2docker.service.ref_watcher import RefWatcher

    for cls in (
        TljhRepo2Docker, BuildManager, DockerBuilder, BinderHubBuilder, HubClient, Homes, Quotas,
        RefWatcher,
    ):
        for name in cls.class_own_traits(config=True):
            label = f"`{name}`" if cls is TljhRepo2Docker else f"{cls.__name__}.{name}"
            if label not in readme:
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, f"undocumented settings: {missing}"
