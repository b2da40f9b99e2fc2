"""The built wheel carries templates, static files and migrations, and runs from anywhere."""

import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("tljh_repo2docker-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in [
        "tljh_repo2docker/templates/page.html",
        "tljh_repo2docker/templates/environments.html",
        "tljh_repo2docker/templates/servers.html",
        "tljh_repo2docker/static/css/tljh_repo2docker.css",
        "tljh_repo2docker/alembic/env.py",
        "tljh_repo2docker/alembic/versions/0001_environments.py",
        "tljh_repo2docker/openapi.yaml",
    ]:
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[tljh]" in text and "tljh_repo2docker.tljh_plugin" in text
    assert "tljh-repo2docker = tljh_repo2docker.app:main" in text


def test_installed_wheel_serves_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = str(venv / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import tljh_repo2docker.paths as p; print(p.TEMPLATES); print(p.ALEMBIC)"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(str(venv) in w for w in where), where

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(venv / "bin" / "tljh-repo2docker"), f"--port={port}"],
        cwd=elsewhere,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                # static files and the JSON 404 need no hub login
                r = httpx.get(
                    f"http://127.0.0.1:{port}/services/tljh_repo2docker/static/css/tljh_repo2docker.css"
                )
                break
            except httpx.ConnectError:
                time.sleep(0.3)
        assert r.status_code == 200
        # 503 while it opens its database (a loaded machine: a second or more)
        while True:
            r = httpx.get(f"http://127.0.0.1:{port}/services/tljh_repo2docker/servers")
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        # no hub to log in with: a redirect to the hub's login, not an error
        assert r.status_code == 302
        assert (elsewhere / "tljh_repo2docker.sqlite").exists()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
