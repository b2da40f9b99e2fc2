"""A version's packages and the change between two versions, through the API
of a real hub (``versions/{id}/packages`` and ``versions/{id}/diff``).

The lists are written into the service's database through db/store (what
the builder records at the end of a build), so these tests do not depend on
the builder; the last test builds a Dockerfile environment and reads what
the builder recorded.
"""

import pytest

from tests.helpers.buildutils import dockerfile
from tests.helpers.fixtures import add
from tests.helpers.utils import assert_json_error
from tljh_repo2docker.db import store
from tljh_repo2docker.db.session import make_engine, make_sessionmaker

pytestmark = [pytest.mark.hub, pytest.mark.docker]


@pytest.fixture
async def hub_sessions(hub):
    """Sessions of the hub's service database (SQLite)."""
    engine = make_engine(f"sqlite:///{hub.db_path}")
    yield make_sessionmaker(engine)
    await engine.dispose()


def pkg(name, version, manager="pip"):
    return {"name": name, "version": version, "manager": manager}


async def made_built(sessions, user, uid):
    """The environment, once its build ended, marked built at a fake image if
    the build failed (these tests are about the versions' API, not builds)."""
    env = await user.wait_env(uid, {"built", "failed"})
    if env["status"] != "built":
        await store.update_environment(
            sessions, uid, status="built", image_id=f"sha256:{'f' * 64}", commit="e" * 40
        )
    return await user.get_env(uid)


async def recorded(sessions, uid, number, packages, inside=None):
    version = await store.add_version(
        sessions, uid, number=number, image_name=f"fake:v{number}", image_id=f"sha256:{number:064x}",
        commit=f"{number:040x}", packages=packages, inside=inside,
    )
    return version.id


async def test_packages_and_diff(admin, alice, envs, repo, hub_sessions):
    _, url = repo({"Dockerfile": dockerfile()})
    env = await add(admin, envs, {"repo": url, "sharing": {"everyone": False}})
    uid = env["uid"]
    await made_built(hub_sessions, admin, uid)
    old = await recorded(hub_sessions, uid, 90, [pkg("numpy", "1.26.0"), pkg("pandas", "2.1.0")])
    new = await recorded(
        hub_sessions, uid, 91, [pkg("NumPy", "2.0.0"), pkg("scipy", "1.13.0")],
        inside={"build_pack": "CondaBuildPack", "python": "3.12.1"},
    )
    unknown = await recorded(hub_sessions, uid, 92, None)
    base = f"api/environments/{uid}/versions"

    r = await admin.api("GET", f"{base}/{new}/packages")
    assert r.status_code == 200, r.text
    assert r.json() == {"packages": [pkg("NumPy", "2.0.0"), pkg("scipy", "1.13.0")], "known": True}
    r = await admin.api("GET", f"{base}/{unknown}/packages")
    assert r.status_code == 200 and r.json()["known"] is False and r.json()["packages"] == []
    assert r.json()["message"]

    r = await admin.api("GET", f"{base}/{new}/diff", params={"from": old})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "added": [pkg("scipy", "1.13.0")],
        "removed": [pkg("pandas", "2.1.0")],
        "changed": [{"name": "NumPy", "manager": "pip", "from": "1.26.0", "to": "2.0.0"}],
        "known": True,
    }

    # Bad or missing ids: 400 naming the field, unknown ones 404.
    assert assert_json_error(await admin.api("GET", f"{base}/{new}/diff"), 400)["field"] == "from"
    for bad in ("x", "-1", "0", "1.5", "²", "9" * 30):
        r = await admin.api("GET", f"{base}/{new}/diff", params={"from": bad})
        assert assert_json_error(r, 400)["field"] == "from", bad
    r = await admin.api("GET", f"{base}/{new}/diff", params={"from": 10**12})
    assert assert_json_error(r, 404)["field"] == "from"
    r = await admin.api("GET", f"{base}/{10**12}/packages")
    assert "version" in assert_json_error(r, 404)["message"]
    assert_json_error(await admin.api("GET", f"{base}/abc/packages"), 400)

    # Visibility is the history's: a user who cannot see the environment gets 404.
    assert_json_error(await alice.api("GET", f"{base}/{new}/packages"), 404)
    assert_json_error(await alice.api("GET", f"{base}/{new}/diff", params={"from": old}), 404)
    r = await admin.api("PATCH", f"api/environments/{uid}", json={"sharing": {"everyone": True}})
    assert r.status_code == 200, r.text
    r = await alice.api("GET", f"{base}/{new}/packages")
    assert r.status_code == 200 and r.json()["known"] is True

    # Another environment's version is not this one's.
    other = await add(admin, envs, {"repo": url})
    r = await admin.api("GET", f"api/environments/{other['uid']}/versions/{new}/packages")
    assert_json_error(r, 404)


async def test_summary_of_the_current_version(admin, envs, repo, hub_sessions):
    _, url = repo({"Dockerfile": dockerfile()})
    env = await add(admin, envs, {"repo": url})
    env = await made_built(hub_sessions, admin, env["uid"])
    # Point the environment at a version whose contents are known.
    await store.add_version(
        hub_sessions, env["uid"], number=50, image_name="fake:v50", image_id=env["image_id"],
        commit=env["commit"], packages=[pkg("a", "1"), pkg("b", "2")],
        inside={"build_pack": "PythonBuildPack", "python": "3.12.4"},
    )
    env = await admin.get_env(env["uid"])
    assert env["summary"] == "Python 3.12 · 2 packages"


async def test_a_built_version_has_its_packages(admin, envs, repo):
    """Needs the builder's side of issue 22 (it records each version's packages)."""
    _, url = repo({"Dockerfile": dockerfile()})
    env = await add(admin, envs, {"repo": url})
    env = await admin.wait_env(env["uid"], {"built", "failed"})
    assert env["status"] == "built", env
    r = await admin.api("GET", f"api/environments/{env['uid']}/versions")
    [version] = r.json()["versions"]
    r = await admin.api("GET", f"api/environments/{env['uid']}/versions/{version['id']}/packages")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["known"] is True, answer
    assert all(set(p) == {"name", "version", "manager"} for p in answer["packages"])


def _recorded_packages_dockerfile(conda_version, pip_packages):
    """A Dockerfile on the single-user image that records, as the package
    managers themselves do, one conda package (a ``conda-meta`` record in the
    image's Python prefix, what ``conda list`` reads) and ``pip_packages``
    (``.dist-info`` folders in its site-packages, what ``pip list`` reads):
    offline, nothing can be downloaded."""
    lines = [
        "USER root",
        'RUN P="$(python3 -c "import sys; print(sys.prefix)")" && mkdir -p "$P/conda-meta" && '
        f"printf '%s' '{{\"name\": \"libtest-conda\", \"version\": \"{conda_version}\"}}' "
        f'> "$P/conda-meta/libtest-conda-{conda_version}-0.json"'
    ]
    for name, version in pip_packages:
        lines.append(
            'RUN D="$(python3 -c "import sysconfig; print(sysconfig.get_paths()[\'purelib\'])")'
            f'/{name.replace("-", "_")}-{version}.dist-info" && mkdir -p "$D" && '
            f"printf 'Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n' > \"$D/METADATA\""
        )
    return dockerfile(*lines, "USER jovyan")


async def test_conda_and_pip_packages_and_the_change_after_a_requirement_is_added(
    admin, envs, repo, git_root
):
    """Real builds: what version 1 holds (conda and pip), then version 2 with a
    requirement added and the conda package upgraded, and the diff between them."""
    from tests.helpers.gitserver import add_commit

    name, url = repo({"Dockerfile": _recorded_packages_dockerfile("1.0", [("tljh-test-one", "1.0")])})
    env = await add(admin, envs, {"repo": url})
    env = await admin.wait_env(env["uid"], {"built", "failed"})
    assert env["status"] == "built", env
    add_commit(
        git_root, name,
        {"Dockerfile": _recorded_packages_dockerfile("1.1", [("tljh-test-one", "1.0"), ("tljh-test-two", "2.0")])},
    )
    r = await admin.api("POST", f"api/environments/{env['uid']}/rebuild")
    assert r.status_code == 202, r.text
    env = await admin.wait_env(env["uid"], {"built", "failed"})
    assert env["status"] == "built", env
    base = f"api/environments/{env['uid']}/versions"
    new, old = [v["id"] for v in (await admin.api("GET", base)).json()["versions"]]

    packages = (await admin.api("GET", f"{base}/{old}/packages")).json()["packages"]
    assert {"name": "libtest-conda", "version": "1.0", "manager": "conda"} in packages
    assert {"name": "tljh-test-one", "version": "1.0", "manager": "pip"} in packages
    assert not any(p["name"] == "tljh-test-two" for p in packages)
    # the single-user image's own packages are there too (jupyterhub, by pip)
    assert any(p["name"].lower() == "jupyterhub" and p["manager"] == "pip" for p in packages)

    diff = (await admin.api("GET", f"{base}/{new}/diff", params={"from": old})).json()
    assert diff["added"] == [{"name": "tljh-test-two", "version": "2.0", "manager": "pip"}], diff
    assert diff["removed"] == [], diff
    assert diff["changed"] == [
        {"name": "libtest-conda", "manager": "conda", "from": "1.0", "to": "1.1"}
    ], diff
    summary = (await admin.get_env(env["uid"]))["summary"]
    assert summary and "packages" in summary, summary
