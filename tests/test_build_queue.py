"""The build queue with one build at a time: the BuildManager, a real DockerBuilder, real SQLite.

The test hub runs the service with two concurrent builds; a limit of one is
checked here directly on the manager, which is where the queue lives. The
builds are real repo2docker builds on the local Docker engine.
"""

import asyncio
import re
import time

import pytest

from tests.helpers.buildutils import build_containers, docker, dockerfile, image_info, token
from tests.helpers.fixtures import BUILDER_IMAGE
from tests.helpers.gitserver import make_repo
from tljh_repo2docker.builds.docker import DockerBuilder
from tljh_repo2docker.builds.manager import BuildManager
from tljh_repo2docker.db import store
from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db
from tljh_repo2docker.service.lifecycle import build_request

pytestmark = pytest.mark.docker


@pytest.fixture
async def manager(tmp_path, test_images):
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.sqlite'}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    builder = DockerBuilder(
        repo2docker_image=BUILDER_IMAGE, network_mode="host", pull_repo2docker_image=False
    )
    prefix = f"tljh-r2d-queue-{token()}/"
    manager = BuildManager(
        builder=builder, sessions=sessions, max_concurrent_builds=1, image_prefix=prefix
    )
    manager.prefix = prefix
    yield manager
    await manager.close()
    for env in await store.list_environments(sessions):
        docker("rm", "-f", f"{builder.container_prefix}{env.uid}", check=False)
        docker("rmi", "-f", env.image_name, check=False)
    await builder.close()
    await engine.dispose()


async def test_one_build_at_a_time_first_in_first_out(manager, git_root, git_server):
    sessions = manager.sessions
    envs = []
    for number in range(3):
        name = f"q{number}-{token()}"
        make_repo(git_root, name, {"Dockerfile": dockerfile(f"RUN echo queued-build-{number} && sleep 2")})
        env = await store.create_environment(
            sessions,
            uid=token() + token(),
            name=name,
            image_name=f"{manager.prefix}{name}:main",
            repo=git_server.url(name),
            ref="main",
            node_selector={},
            build_args={},
        )
        await manager.submit(env, build_request(env))
        envs.append(env)
    first, second, third = (env.uid for env in envs)

    assert manager.running_count == 1
    assert manager.positions() == {second: 1, third: 2}
    assert manager.position(first) is None
    statuses = {env.uid: env.status for env in await store.list_environments(sessions)}
    assert statuses == {first: "building", second: "queued", third: "queued"} or statuses == {
        first: "queued",  # the first build's task may not have run yet
        second: "queued",
        third: "queued",
    }

    # Only one build container at a time, while the builds run.
    deadline = time.monotonic() + 180
    most = 0
    while time.monotonic() < deadline:
        running = sum(1 for uid in (first, second, third) if build_containers(uid))
        most = max(most, running)
        done = [await store.get_environment(sessions, uid) for uid in (first, second, third)]
        if all(env.status in ("built", "failed", "cancelled") for env in done):
            break
        await asyncio.sleep(0.2)
    else:
        raise TimeoutError("the queued builds did not finish")
    assert most == 1

    assert [env.status for env in done] == ["built", "built", "built"], [e.error for e in done]
    # First in, first out, and never two at once.
    assert done[0].started <= done[0].finished <= done[1].started
    assert done[1].finished <= done[2].started
    for env in done:
        assert image_info(env.image_name)["Config"]["Labels"]["tljh_repo2docker.uid"] == env.uid

    # Each log says where the build waited.
    logs = [await store.read_log(sessions, uid) for uid in (first, second, third)]
    assert [log[0][2] for log in logs] == [
        "queued (position 1)",
        "queued (position 1)",
        "queued (position 2)",
    ]
    for number, log in enumerate(logs):
        assert any(f"queued-build-{number}" in message for _, _, message in log)
        assert log[-1][1] == "built"
        ids = [event_id for event_id, _, _ in log]
        assert ids == sorted(set(ids))


async def test_close_leaves_the_build_running_and_a_new_manager_reattaches(
    manager, git_root, git_server
):
    """A graceful shutdown (``close()``) stops following, not building; ``recover()`` re-attaches."""
    sessions = manager.sessions
    name = f"close-{token()}"
    make_repo(
        git_root,
        name,
        {"Dockerfile": dockerfile("RUN echo before-close; sleep 6; echo after-close")},
    )
    env = await store.create_environment(
        sessions,
        uid=token() + token(),
        name=name,
        image_name=f"{manager.prefix}{name}:main",
        repo=git_server.url(name),
        ref="main",
        node_selector={},
        build_args={},
    )
    await manager.submit(env, build_request(env))
    seen = []

    async def follow():
        async for event in manager.subscribe(env.uid):
            seen.append(event)

    follower = asyncio.ensure_future(follow())
    deadline = time.monotonic() + 120
    while not any(message.endswith(" before-close") for _, _, message in seen):
        assert time.monotonic() < deadline and not follower.done(), seen
        await asyncio.sleep(0.1)

    await manager.close()
    follower.cancel()
    assert build_containers(env.uid), "close() must leave the build container running"
    stored = await store.get_environment(sessions, env.uid)
    assert stored.status == "building"
    # Everything subscribers were sent is stored, so ids go on from there.
    assert stored.last_event_id == seen[-1][0]
    assert [e[0] for e in await store.read_log(sessions, env.uid)] == [e[0] for e in seen]

    builder = DockerBuilder(
        repo2docker_image=BUILDER_IMAGE, network_mode="host", pull_repo2docker_image=False
    )
    again = BuildManager(builder=builder, sessions=sessions, image_prefix=manager.prefix)
    try:
        await again.recover(build_request)
        rest = [event async for event in again.subscribe(env.uid, after=seen[-1][0])]
    finally:
        await again.close()
        await builder.close()
    assert rest[0][0] == seen[-1][0] + 1
    assert rest[0][2] == "re-attached after a service restart"
    assert rest[-1][1] == "built", rest[-5:]
    messages = [message for _, _, message in seen + rest]
    for line in ("before-close", "after-close"):
        # BuildKit prints "#<step> <seconds> <output>"; the RUN line names both.
        assert len([m for m in messages if re.fullmatch(rf"#\d+ [\d.]+ {line}", m)]) == 1
    done = await store.get_environment(sessions, env.uid)
    assert done.status == "built" and done.image_id
    assert build_containers(env.uid) == []


async def test_recovery_removes_leftover_containers_of_ended_builds_only(manager):
    """A build container the service could not remove (the engine was away
    when the build ended) goes at the next start; a build container of
    another service on the same engine stays."""
    sessions = manager.sessions
    builder = manager.builder
    name = f"leftover-{token()}"
    env = await store.create_environment(
        sessions,
        uid=token() + token(),
        name=name,
        image_name=f"{manager.prefix}{name}:main",
        repo="http://127.0.0.1:9/none.git",
        ref="main",
        node_selector={},
        build_args={},
    )
    await store.update_environment(sessions, env.uid, status="failed", error="engine lost")
    foreign = token() + token()
    for uid in (env.uid, foreign):
        docker(
            "run", "-d", "--name", f"{builder.container_prefix}{uid}",
            "--label", f"tljh_repo2docker.build={uid}",
            "--entrypoint", "sleep", BUILDER_IMAGE, "300",
        )
    try:
        assert build_containers(env.uid) and build_containers(foreign)
        await manager.recover(build_request)
        assert build_containers(env.uid) == []
        assert build_containers(foreign), "another service's build must be left alone"
        stored = await store.get_environment(sessions, env.uid)
        assert (stored.status, stored.error) == ("failed", "engine lost")
    finally:
        docker("rm", "-f", f"{builder.container_prefix}{foreign}", check=False)


async def test_one_user_cannot_hold_the_queue(manager, git_root, git_server):
    """ann queues three builds, then ben one: with one slot, ben's starts second, not last."""
    sessions = manager.sessions
    envs = []
    for number, owner in enumerate(["ann", "ann", "ann", "ben"]):
        name = f"fair{number}-{token()}"
        make_repo(git_root, name, {"Dockerfile": dockerfile(f"RUN echo fair-{number}")})
        env = await store.create_environment(
            sessions, uid=token() + token(), name=name, image_name=f"{manager.prefix}{name}:main",
            repo=git_server.url(name), ref="main", node_selector={}, build_args={}, owner=owner,
        )
        await manager.submit(env, build_request(env))
        envs.append(env)
    uids = [env.uid for env in envs]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = [await store.get_environment(sessions, uid) for uid in uids]
        if all(env.status in ("built", "failed", "cancelled") for env in done):
            break
        await asyncio.sleep(0.3)
    else:
        raise TimeoutError("the builds did not finish")
    assert [env.status for env in done] == ["built"] * 4, [e.error for e in done]
    order = [env.owner + str(n) for n, env in sorted(enumerate(done), key=lambda item: item[1].started)]
    assert order == ["ann0", "ben3", "ann1", "ann2"], order
