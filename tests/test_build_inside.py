"""What is inside a built image (issue 22): build pack, Python, builder, packages.

Real Docker, repo2docker and git server. A Dockerfile on the single-user
image with one more pip package: the version says which build pack
repo2docker chose, the Python and repo2docker versions, the builder image,
and lists the image's packages with their manager. The listing runs
without network, like the check.
"""

import re

import pytest

from tests.helpers.buildutils import FINAL
from tests.helpers.dockerbuilder import (
    collect,
    docker,
    dockerfile,
    explain,
    make_builder,
    new_repo,
    new_request,
)
from tests.helpers.fixtures import add
from tests.helpers.gitserver import GitServer
from tljh_repo2docker.builds.base import BUILT
from tljh_repo2docker.builds.docker.inside import build_pack_of, parse_inside

# A distribution installed by pip in the image, from a wheel made there (no
# network needed): listed as a "pip" package with its version.
MAKE_WHEEL = """
import zipfile

info = "tljh_inside_probe-1.2.3.dist-info"
with zipfile.ZipFile("/tmp/tljh_inside_probe-1.2.3-py3-none-any.whl", "w") as wheel:
    wheel.writestr("tljh_inside_probe/__init__.py", "")
    wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\\nName: tljh-inside-probe\\nVersion: 1.2.3\\n")
    wheel.writestr(
        f"{info}/WHEEL",
        "Wheel-Version: 1.0\\nGenerator: tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    )
    wheel.writestr(f"{info}/RECORD", "")
"""
LOCAL_PACKAGE = [
    "USER root",
    "COPY make_wheel.py /tmp/make_wheel.py",
    "RUN python /tmp/make_wheel.py && pip install --no-index /tmp/tljh_inside_probe-1.2.3-py3-none-any.whl",
    "USER jovyan",
]


@pytest.fixture(scope="module")
def git_root(tmp_path_factory):
    return tmp_path_factory.mktemp("inside-repos")


@pytest.fixture(scope="module")
def git_server(git_root):
    with GitServer(git_root) as server:
        yield server


def test_build_pack_line_and_output_parsing():
    assert build_pack_of("Using PythonBuildPack builder") == "PythonBuildPack"
    assert build_pack_of("Using DockerBuildPack builder\n") == "DockerBuildPack"
    assert build_pack_of("#5 Using cache") is None
    assert parse_inside('noise\nTLJH-R2D-INSIDE {"python": "3.12.1"}\n') == {"python": "3.12.1"}
    assert parse_inside("TLJH-R2D-INSIDE {broken") is None
    assert parse_inside("nothing") is None


@pytest.mark.docker
async def test_a_pip_environment_lists_its_packages(git_root, git_server):
    builder = make_builder()
    made = {"uids": [], "images": []}
    try:
        repo = new_repo(
            git_root, {"Dockerfile": dockerfile(*LOCAL_PACKAGE), "make_wheel.py": MAKE_WHEEL}
        )
        request = new_request(made, git_server.url(repo), number=1)
        events = await collect(builder.build(request))
        final = events[-1]
        assert final.phase == BUILT, explain(events)
        inside = final.inside
        assert inside["build_pack"] == "DockerBuildPack"
        assert re.fullmatch(r"3\.\d+\.\d+", inside["python"]), inside
        assert inside["r"] is None
        assert re.fullmatch(r"\d{4}\.\d+\.\d+.*", inside["repo2docker"]), inside
        packages = {(p["name"].lower(), p["manager"]): p["version"] for p in final.packages}
        assert packages[("tljh-inside-probe", "pip")] == "1.2.3"
        assert ("jupyterhub", "pip") in packages and ("jupyterlab", "pip") in packages
        assert all(set(p) == {"name", "version", "manager"} for p in final.packages)
        assert {p["manager"] for p in final.packages} <= {"pip", "conda", "r"}
        assert final.builder_image == builder.repo2docker_image
        assert final.builder_image_id.startswith("sha256:")
    finally:
        await builder.close()
        for image in made["images"]:
            docker("rmi", "-f", image, check=False)


@pytest.mark.hub
@pytest.mark.docker
async def test_the_versions_api_says_what_is_inside(hub, admin, envs, repo):
    _, url = repo({"Dockerfile": dockerfile()})
    env = await add(admin, envs, {"repo": url, "ref": "main"})
    env = await admin.wait_env(env["uid"], FINAL)
    assert env["status"] == "built", env
    r = await admin.api("GET", f"api/environments/{env['uid']}/versions")
    assert r.status_code == 200, r.text
    [v1] = r.json()["versions"]
    assert v1["inside"]["build_pack"] == "DockerBuildPack"
    assert v1["inside"]["python"] and v1["inside"]["repo2docker"]
    assert v1["builder"]["image"] and v1["builder"]["image_id"].startswith("sha256:")
    assert v1["check"]["status"] == "passed"
