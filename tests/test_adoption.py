"""Which images on a shared Docker engine a service takes as its own.

Real Docker: images are made here with the labels this service, another
service, or tljh-repo2docker 3.x put on them; a fresh database (a service
whose database was lost, or a new one) then adopts what is its own, and
nothing else. Ownership is the image prefix: the image's name, and the
``tljh_repo2docker.image_prefix`` label every image of ours carries.
"""

import json

import pytest

from tests.buildutils import docker, token
from tests.fixtures import SINGLEUSER_IMAGE
from tljh_repo2docker.builds.adoption import adopt_images
from tljh_repo2docker.builds.docker import DockerBuilder
from tljh_repo2docker.db import store

pytestmark = [pytest.mark.docker]


@pytest.fixture
async def builder(test_images):
    builder = DockerBuilder()
    yield builder
    await builder.close()


@pytest.fixture
def images(tmp_path):
    """``make(name, labels)``: an image of the single-user image with ``labels``."""
    made = []

    def make(name, labels):
        context = tmp_path / f"ctx-{token()}"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {SINGLEUSER_IMAGE}\nRUN echo {token()} > /tmp/x\n")
        args = ["build", "-q", "-t", name]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        docker(*args, str(context))
        made.append(name)
        return json.loads(docker("image", "inspect", name).stdout)[0]

    yield make
    for name in made:
        docker("rmi", "-f", name, check=False)


def ours(uid, name, prefix, **more):
    return {
        "tljh_repo2docker.uid": uid,
        "tljh_repo2docker.display_name": name,
        "tljh_repo2docker.image_prefix": prefix,
        "tljh_repo2docker.mem_limit": "1G",
        "tljh_repo2docker.cpu_limit": "0.5",
        "tljh_repo2docker.repo": "https://example.org/r",
        "tljh_repo2docker.ref": "HEAD",
        **more,
    }


def of_3x(name, display):
    return {
        "repo2docker.repo": "https://example.org/legacy",
        "repo2docker.ref": "main",
        "tljh_repo2docker.image_name": name,
        "tljh_repo2docker.display_name": display,
        "tljh_repo2docker.mem_limit": "2G",
        "tljh_repo2docker.cpu_limit": "1",
        "tljh_repo2docker.node_selector": "{}",
        "tljh_repo2docker.owner": "alice",
        "tljh_repo2docker.creation_date": "01/12/2026",
    }


async def test_a_lost_database_gets_its_own_images_back_and_no_one_elses(
    sqlite_sessions, builder, images
):
    tag = token()
    mine, theirs = f"adopt-{tag}/", f"adopt-{tag}/team-b/"
    own = images(f"{mine}env:HEAD", ours(f"u-own-{tag}", f"own-{tag}", mine))
    # another hub's image: its name starts with our prefix too, but it is labelled as theirs
    images(f"{theirs}env:HEAD", ours(f"u-theirs-{tag}", f"theirs-{tag}", theirs))
    # another hub's image with its own name prefix
    images(f"other-{tag}/env:HEAD", ours(f"u-other-{tag}", f"other-{tag}", f"other-{tag}/"))
    # an image of 3.x that no row names: not ours unless asked
    images(f"legacy-{tag}:main", of_3x(f"legacy-{tag}:main", f"legacy-{tag}"))

    adopted = await adopt_images(sqlite_sessions, builder, mine)
    assert adopted == [f"u-own-{tag}"]
    (env,) = await store.list_environments(sqlite_sessions)
    assert env.uid == f"u-own-{tag}" and env.name == f"own-{tag}"
    assert env.status == store.BUILT and env.image_id == own["Id"]
    assert (env.memory, env.cpu) == ("1G", 0.5)
    # a second start adopts nothing more
    assert await adopt_images(sqlite_sessions, builder, mine) == []


async def test_3x_images_without_a_row_are_adopted_only_when_asked(
    sqlite_sessions, tmp_path, builder, images
):
    tag = token()
    name = f"legacy-{tag}:main"
    old = images(name, of_3x(name, f"legacy-{tag}"))
    prefix = f"adopt-{tag}/"
    assert await adopt_images(sqlite_sessions, builder, prefix) == []
    (uid,) = await adopt_images(sqlite_sessions, builder, prefix, adopt_legacy=True)
    env = await store.get_environment(sqlite_sessions, uid)
    assert env.name == f"legacy-{tag}" and env.image_name == name and env.status == store.BUILT
    assert (env.memory, env.cpu, env.owner, env.ref) == ("2G", 1.0, "alice", "main")
    image = json.loads(docker("image", "inspect", name).stdout)[0]
    assert image["Id"] == env.image_id != old["Id"]
    labels = image["Config"]["Labels"]
    assert labels["tljh_repo2docker.uid"] == uid
    assert labels["tljh_repo2docker.image_prefix"] == prefix
    assert labels["repo2docker.ref"] == "main"  # 3.x's labels stay
    assert image["RootFS"]["Layers"] == old["RootFS"]["Layers"]  # nothing copied

    # once labelled, another hub asking for 3.x's images does not take it
    from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db

    engine = make_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
    await upgrade_db(engine)
    try:
        other = make_sessionmaker(engine)
        assert await adopt_images(other, builder, f"other-{tag}/", adopt_legacy=True) == []
    finally:
        await engine.dispose()
    docker("rmi", "-f", old["Id"], check=False)


async def test_a_converted_row_whose_image_is_gone_says_so(sqlite_sessions, builder):
    env = await store.create_environment(
        sqlite_sessions, uid=f"gone-{token()}", name=f"gone-{token()}",
        image_name=f"gone-{token()}:main", repo="https://example.org/r", ref="main",
        node_selector={}, build_args={},
    )
    await store.update_environment(sqlite_sessions, env.uid, status=store.BUILT)
    assert await adopt_images(sqlite_sessions, builder, "adopt/") == []
    env = await store.get_environment(sqlite_sessions, env.uid)
    assert env.status == store.FAILED and "not on the Docker engine" in env.error
