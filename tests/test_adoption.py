"""Which images on a shared Docker engine a service takes as its own.

Real Docker: images are made here with the labels this service, another
service, or tljh-repo2docker 3.x put on them; a fresh database (a service
whose database was lost, or a new one) then adopts what is its own, and
nothing else. Ownership is the image prefix: the image's name, and the
``tljh_repo2docker.image_prefix`` label every image of ours carries.
"""

import json

import pytest

from tests.helpers.buildutils import docker, token
from tests.helpers.fixtures import SINGLEUSER_IMAGE
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


async def test_adopted_images_are_versions_and_version_tags_are_not_environments(
    sqlite_sessions, builder, images
):
    """An adopted image is its environment's first version (reason "adopted"),
    kept under its own tag; an image known only by a version tag is not
    taken for an environment of its own."""
    tag = token()
    mine = f"adopt-{tag}/"
    uid = f"u-ver-{tag}"
    own = images(f"{mine}env:HEAD", ours(uid, f"ver-{tag}", mine))
    # an older build of the same environment, kept only as its version 1
    older = images(f"{mine}env:HEAD--v1", ours(uid, f"ver-{tag}", mine))
    try:
        assert await adopt_images(sqlite_sessions, builder, mine) == [uid]
        env = await store.get_environment(sqlite_sessions, uid)
        assert env.image_name == f"{mine}env:HEAD" and env.image_id == own["Id"]
        (version,) = await store.list_versions(sqlite_sessions, uid)
        assert (version.reason, version.number, version.image_id) == ("adopted", 1, own["Id"])
        assert version.image_name == f"{mine}env:HEAD--v1"
        tagged = json.loads(docker("image", "inspect", version.image_name).stdout)[0]
        assert tagged["Id"] == own["Id"]
        # again: nothing more
        assert await adopt_images(sqlite_sessions, builder, mine) == []
        assert len(await store.list_versions(sqlite_sessions, uid)) == 1
    finally:
        docker("rmi", f"{mine}env:HEAD--v1", check=False)
        docker("rmi", "-f", older["Id"], check=False)  # its tag went to version 1


async def test_versions_of_the_upgrade_get_their_own_tag(sqlite_sessions, builder, images):
    """A version the upgrade to 4.x recorded under the environment's own name
    gets a tag of its own, so that a rebuild does not leave it untagged."""
    tag = token()
    name = f"adopt-{tag}/up:main"
    uid = f"u-up-{tag}"
    image = images(name, ours(uid, f"up-{tag}", f"adopt-{tag}/"))
    env = await store.create_environment(
        sqlite_sessions, uid=uid, name=f"up-{tag}", image_name=name,
        repo="https://example.org/r", ref="main", node_selector={}, build_args={},
    )
    await store.update_environment(
        sqlite_sessions, uid, status=store.BUILT, image_id=image["Id"], build_number=3
    )
    await store.add_version(
        sqlite_sessions, uid, number=3, image_name=name, image_id=image["Id"],
        built_at=store.now(), reason="upgrade",
    )
    try:
        await adopt_images(sqlite_sessions, builder, f"adopt-{tag}/")
        (version,) = await store.list_versions(sqlite_sessions, env.uid)
        assert version.image_name == f"{name}--v3"
        tagged = json.loads(docker("image", "inspect", version.image_name).stdout)[0]
        assert tagged["Id"] == image["Id"]
    finally:
        docker("rmi", f"{name}--v3", check=False)


async def test_a_current_version_whose_tag_was_never_made_gets_it(sqlite_sessions, builder, images):
    """The manager tags a version only once its build's result is stored: a
    service killed in between leaves the version without its tag. The next
    start makes it, before a rebuild could move the environment's name."""
    tag = token()
    name = f"adopt-{tag}/lost:main"
    uid = f"u-lost-{tag}"
    image = images(name, ours(uid, f"lost-{tag}", f"adopt-{tag}/"))
    await store.create_environment(
        sqlite_sessions, uid=uid, name=f"lost-{tag}", image_name=name,
        repo="https://example.org/r", ref="main", node_selector={}, build_args={},
    )
    await store.update_environment(
        sqlite_sessions, uid, status=store.BUILT, image_id=image["Id"], build_number=2
    )
    await store.add_version(
        sqlite_sessions, uid, number=2, image_name=builder.version_name(name, 2),
        image_id=image["Id"], built_at=store.now(), reason="request",
    )
    assert f"{name}--v2" not in await builder.image_references()
    try:
        await adopt_images(sqlite_sessions, builder, f"adopt-{tag}/")
        tagged = json.loads(docker("image", "inspect", f"{name}--v2").stdout)[0]
        assert tagged["Id"] == image["Id"]
        (version,) = await store.list_versions(sqlite_sessions, uid)
        assert version.image_name == f"{name}--v2"
    finally:
        docker("rmi", f"{name}--v2", check=False)
