"""DockerBuilder against a real Docker engine, real repo2docker and a real git server.

Needs the local test images (``scripts/build-test-images.sh``):
``TLJH_R2D_TEST_REPO2DOCKER_IMAGE`` (default ``tljh-repo2docker-test/repo2docker:latest``)
and ``TLJH_R2D_TEST_SINGLEUSER_IMAGE`` (default ``tljh-repo2docker-test/singleuser:latest``).
Without a Docker engine or those images the tests skip, and fail under ``CI=true``.

Repositories are served by :mod:`tests.helpers.gitserver` on 127.0.0.1, so the build
containers use host networking. Every test uses its own uids and image names
and removes what it made.
"""

import asyncio
import json
import os
import re
import time
import uuid
from urllib.parse import quote

import pytest

from tests.helpers.dockerbuilder import (
    BUILD_TIMEOUT,
    R2D_IMAGE,
    SINGLEUSER_IMAGE,
    build_containers,
    collect,
    docker,
    dockerfile,
    explain,
    logs_of,
    make_builder,
    new_repo,
    new_request,
)
from tests.helpers.gitserver import GitServer, add_commit, head_commit
from tljh_repo2docker.builds.base import (
    BUILT,
    CANCELLED,
    FAILED,
    LOG,
    STATUS,
    BuildError,
    BuildRequest,
)
from tljh_repo2docker.builds.docker import CREDENTIALS_PATH, DockerBuilder


def unavailable(reason):
    """Skip, or fail under CI=true, when the real infrastructure is missing."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: Docker tests must run)")
    pytest.skip(reason)


@pytest.fixture
async def builder():
    builder = make_builder()
    try:
        await builder.check()
    except BuildError as e:
        await builder.close()
        unavailable(f"no Docker engine: {e.message}")
    for image in (R2D_IMAGE, SINGLEUSER_IMAGE):
        if not await builder.image_exists(image):
            await builder.close()
            unavailable(f"test image {image} is missing: run scripts/build-test-images.sh")
    yield builder
    await builder.close()


@pytest.fixture
def made(builder):
    """Records uids and images a test makes; removes them afterwards."""
    things = {"uids": [], "images": []}
    yield things
    for uid in things["uids"]:
        docker("rm", "-f", f"{builder.container_prefix}{uid}", check=False)
    for image in things["images"]:
        docker("rmi", "-f", image, check=False)


@pytest.fixture(scope="module")
def git_root(tmp_path_factory):
    return tmp_path_factory.mktemp("repos")


@pytest.fixture(scope="module")
def git_server(git_root):
    with GitServer(git_root) as server:
        yield server


async def until(event, task):
    """Wait for ``event``; fail at once if the build ``task`` ends first."""
    waiter = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait(
        {waiter, task}, timeout=BUILD_TIMEOUT, return_when="FIRST_COMPLETED"
    )
    if waiter not in done:
        waiter.cancel()
        if task.done():
            task.result()
        raise AssertionError("the build ended (or hung) before it got where the test needs it")


# -- building -------------------------------------------------------------------


@pytest.mark.docker
async def test_build_makes_a_labelled_image_and_removes_its_container(
    builder, made, git_root, git_server
):
    name = new_repo(git_root, {"Dockerfile": dockerfile("RUN echo built-by-test")})
    request = new_request(
        made,
        git_server.url(name),
        labels={"tljh_repo2docker.display_name": "Demo env", "tljh_repo2docker.mem_limit": "1G"},
    )
    events = await collect(builder.build(request))
    final = events[-1]
    assert final.phase == BUILT, explain(events)

    logs = logs_of(events)
    assert any("built-by-test" in line for line in logs), explain(events)
    assert all("\n" not in line for line in logs)

    image = await builder.docker.images.inspect(request.image_name)
    labels = image["Config"]["Labels"]
    assert labels["tljh_repo2docker.display_name"] == "Demo env"
    assert labels["tljh_repo2docker.mem_limit"] == "1G"
    assert labels["tljh_repo2docker.uid"] == request.uid
    assert labels["repo2docker.ref"] == "main"
    assert final.image_name == request.image_name
    assert final.image_id == image["Id"]
    assert final.size == image["Size"] > 0
    assert final.commit == head_commit(git_root, name)

    assert await build_containers(builder, request.uid) == []
    assert request.uid not in await builder.running()
    assert await builder.image_exists(request.image_name)
    adoptable = {i["image_name"]: i for i in await builder.adoptable_images()}
    assert adoptable[request.image_name]["image_id"] == image["Id"]
    assert adoptable[request.image_name]["labels"]["tljh_repo2docker.uid"] == request.uid


@pytest.mark.docker
async def test_build_args_reach_the_build(builder, made, git_root, git_server):
    name = new_repo(
        git_root, {"Dockerfile": dockerfile("ARG GREETING", 'RUN echo "greeting=$GREETING"')}
    )
    request = new_request(made, git_server.url(name), build_args={"GREETING": "hello-tljh"})
    events = await collect(builder.build(request))
    assert events[-1].phase == BUILT, explain(events)
    assert any(re.search(r"greeting=hello-tljh\b", line) for line in logs_of(events))


@pytest.mark.docker
async def test_failing_build_yields_failed_and_leaves_no_image(builder, made, git_root, git_server):
    name = new_repo(git_root, {"Dockerfile": dockerfile("RUN echo about-to-fail && exit 3")})
    request = new_request(made, git_server.url(name))
    events = await collect(builder.build(request))
    final = events[-1]
    assert final.phase == FAILED, explain(events)
    assert re.match(r"repo2docker exited with code [1-9]", final.message), final.message
    # the line that says why, by the rule BinderHub builds use too (builds/failure.py)
    assert "exit code: 3" in final.message, final.message
    assert any("about-to-fail" in line for line in logs_of(events))
    assert not await builder.image_exists(request.image_name)
    assert await build_containers(builder, request.uid) == []


@pytest.mark.docker
async def test_unknown_ref_fails(builder, made, git_root, git_server):
    name = new_repo(git_root, {"Dockerfile": dockerfile()})
    request = new_request(made, git_server.url(name), ref="no-such-branch")
    events = await collect(builder.build(request))
    assert events[-1].phase == FAILED, explain(events)
    assert "no-such-branch" in events[-1].message
    assert not await builder.image_exists(request.image_name)


@pytest.mark.docker
async def test_cancel_mid_build_removes_the_container_and_leaves_no_image(
    builder, made, git_root, git_server
):
    # Long enough that a loaded machine cancels before it ends (4 s was not,
    # once, in CI), short enough to check below that the engine did not
    # finish it anyway.
    name = new_repo(git_root, {"Dockerfile": dockerfile("RUN sleep 12 && echo slept")})
    request = new_request(made, git_server.url(name))
    seen = []
    sleeping = asyncio.Event()
    slept_from = []

    async def consume():
        async for event in builder.build(request):
            seen.append(event)
            if "RUN sleep 12" in event.message and not sleeping.is_set():
                sleeping.set()
                slept_from.append(time.monotonic())

    task = asyncio.create_task(consume())
    await until(sleeping, task)
    await builder.cancel(request.uid)
    await asyncio.wait_for(task, 30)
    assert seen[-1].phase == CANCELLED, explain(seen)
    # The image build itself was stopped, not only repo2docker.
    assert any("context canceled" in line for line in logs_of(seen)), explain(seen)
    assert await build_containers(builder, request.uid) == []
    # Past the end of the `sleep 12`: a build that went on would have tagged it.
    await asyncio.sleep(max(0.0, slept_from[0] + 13 - time.monotonic()))
    assert not await builder.image_exists(request.image_name)
    # Cancelling again (or a build that is gone) is no error.
    await builder.cancel(request.uid)


@pytest.mark.docker
async def test_cancelling_the_consumer_leaves_the_build_to_cancel(
    builder, made, git_root, git_server
):
    """A cancelled consumer only stops following (the manager then calls cancel())."""
    name = new_repo(git_root, {"Dockerfile": dockerfile("RUN sleep 30")})
    request = new_request(made, git_server.url(name))
    started = asyncio.Event()

    async def consume():
        async for event in builder.build(request):
            if event.phase == LOG:
                started.set()

    task = asyncio.create_task(consume())
    await until(started, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert request.uid in await builder.running()
    await builder.cancel(request.uid)
    assert await build_containers(builder, request.uid) == []
    assert request.uid not in await builder.running()


# -- re-attaching after a restart -------------------------------------------------


@pytest.mark.docker
async def test_attach_to_a_running_build_after_a_restart(builder, made, git_root, git_server):
    ticks = "RUN for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 1; done"
    name = new_repo(git_root, {"Dockerfile": dockerfile(ticks)})
    request = new_request(made, git_server.url(name))
    before = []
    ticked = asyncio.Event()

    async def consume():
        async for event in builder.build(request):
            before.append(event)
            if re.search(r"tick-\d", event.message):
                ticked.set()
                # Read nothing more until cancelled: on a loaded machine the
                # ticks can arrive in one burst, and a consumer that kept
                # reading would have seen the whole build before its cancel.
                await asyncio.Event().wait()

    # The service follows the build, then stops (its tasks are cancelled).
    task = asyncio.create_task(consume())
    await until(ticked, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await builder.close()
    skip = len(logs_of(before))

    restarted = make_builder()
    try:
        assert request.uid in await restarted.running()
        assert restarted.attach("t-not-a-build", 0) is None
        after = await collect(restarted.attach(request.uid, skip))
    finally:
        await restarted.close()
    assert after[-1].phase == BUILT, explain(after)

    def tick_numbers(events):
        return [
            int(m.group(1)) for m in (re.search(r"tick-(\d+)", s) for s in logs_of(events)) if m
        ]

    first, rest = tick_numbers(before), tick_numbers(after)
    assert first and rest, (logs_of(before), logs_of(after))
    assert first + rest == list(range(1, 9))
    assert not set(logs_of(before)) & {line for line in logs_of(after) if line.strip()}
    assert after[-1].commit == head_commit(git_root, name)
    assert not await build_containers(builder, request.uid)


@pytest.mark.docker
async def test_attach_to_a_build_that_ended_meanwhile(builder, made, git_root, git_server):
    name = new_repo(git_root, {"Dockerfile": dockerfile("RUN exit 3")})
    request = new_request(made, git_server.url(name))
    before = []

    async def follow_a_little():
        events = builder.build(request)
        async for event in events:
            before.append(event)
            if len(before) == 3:
                break
        await events.aclose()  # stops following; the build goes on
        (container,) = await build_containers(builder, request.uid)
        await container.wait()
        return "".join(await container.log(stdout=True, stderr=True))

    full = (await asyncio.wait_for(follow_a_little(), BUILD_TIMEOUT)).split("\n")
    if full[-1] == "":
        full.pop()
    assert len(full) > 3

    restarted = make_builder()
    try:
        assert request.uid in await restarted.running()
        after = await collect(restarted.attach(request.uid, 3))
    finally:
        await restarted.close()
    assert logs_of(before) == full[:3]
    assert logs_of(after) == full[3:]
    assert after[-1].phase == FAILED, explain(after)
    assert "exited with code" in after[-1].message
    assert not await build_containers(builder, request.uid)


# -- private repositories ---------------------------------------------------------


@pytest.mark.docker
async def test_private_repository_credentials_stay_secret(builder, made, git_root):
    secret = f"pw-{uuid.uuid4().hex}/+@"
    forms = [secret, quote(secret, safe=""), f"alice:{secret}"]

    def leaky():
        return dockerfile("COPY leak.txt /tmp/leak.txt", "RUN sleep 1 && cat /tmp/leak.txt")

    # The repository prints the secret during the build: the log must hide it.
    name = new_repo(
        git_root,
        {
            "leak.txt": f"leaked {secret} here\n",
            "Dockerfile": leaky(),
        },
    )
    with GitServer(git_root, username="alice", password=secret) as server:
        # Without credentials the clone is refused.
        anonymous = new_request(made, server.url(name))
        events = await collect(builder.build(anonymous))
        assert events[-1].phase == FAILED, explain(events)
        assert server.records and all(r.status == 401 for r in server.records)
        assert not await builder.image_exists(anonymous.image_name)

        server.clear()
        request = new_request(made, server.url(name), username="alice", password=secret)
        assert secret not in repr(request)
        seen = {}

        async def watch(events):
            async for event in events:
                if "inspect" not in seen:
                    # The container while it runs, as `docker inspect` shows it.
                    container_name = f"{builder.container_prefix}{request.uid}"
                    seen["inspect"] = docker("inspect", container_name).stdout
                    (container,) = await build_containers(builder, request.uid)
                    archive = await container.get_archive(CREDENTIALS_PATH)
                    seen["file"] = archive.getmembers()[0]
                yield event

        events = await collect(watch(builder.build(request)))
        inspected, credentials_file = seen["inspect"], seen["file"]

        # Credentials written into the URL take the same path (a new commit,
        # so that the build runs again instead of coming from the cache).
        add_commit(git_root, name, {"Dockerfile": leaky()})
        in_url = new_request(made, server.url(name, with_credentials=True))
        url_events = await collect(builder.build(in_url))
    assert events[-1].phase == BUILT, explain(events)
    assert any(r.username == "alice" and r.status == 200 for r in server.records)

    for form in forms:
        assert form not in inspected
    config = json.loads(inspected)[0]["Config"]
    assert f"GIT_CONFIG_VALUE_1=store --file={CREDENTIALS_PATH}" in config["Env"]
    assert credentials_file.mode & 0o777 == 0o600
    assert credentials_file.uid == 0

    assert url_events[-1].phase == BUILT, explain(url_events)
    messages = [e.message for e in events + url_events]
    assert any("leaked *** here" in m for m in logs_of(events)), explain(events)
    assert any("leaked *** here" in m for m in logs_of(url_events)), explain(url_events)
    for image in (request.image_name, in_url.image_name):
        image_inspect = docker("image", "inspect", image).stdout
        history = docker("history", "--no-trunc", image).stdout
        labels = json.loads(image_inspect)[0]["Config"]["Labels"]
        assert labels["repo2docker.repo"] == server.url(name)
        for form in forms:
            assert form not in image_inspect
            assert form not in history
    for form in forms:
        assert not any(form in m for m in messages)
    assert await build_containers(builder, request.uid) == []


async def test_credentials_need_an_http_url():
    builder = DockerBuilder()
    request = BuildRequest(
        uid="t-git", repo="git://127.0.0.1/x.git", ref="main", image_name="x:1",
        username="u", password="p",
    )  # fmt: skip
    events = await collect(builder.build(request))
    assert [e.phase for e in events] == [FAILED]
    assert "http" in events[0].message


# -- images -------------------------------------------------------------------------


@pytest.mark.docker
async def test_delete_image_refused_while_a_container_uses_it(builder, made, git_root, git_server):
    name = new_repo(git_root, {"Dockerfile": dockerfile()})
    request = new_request(made, git_server.url(name))
    events = await collect(builder.build(request))
    assert events[-1].phase == BUILT, explain(events)
    image_id = events[-1].image_id

    user = f"tljh-r2d-test-user-{request.uid}"
    container = await builder.docker.containers.create(
        {"Image": request.image_name, "Cmd": ["true"]}, name=user
    )
    try:
        with pytest.raises(BuildError) as info:
            await builder.delete_image(request.image_name, image_id)
        assert user in info.value.message
        assert await builder.image_exists(request.image_name)
    finally:
        await container.delete(force=True)

    # By id alone, as the manager does for an image replaced by a rebuild.
    await builder.delete_image(image_id)
    assert not await builder.image_exists(request.image_name)
    assert not await builder.image_exists(image_id)
    await builder.delete_image(request.image_name, image_id)  # already gone: no error


# -- the engine and the repo2docker image -------------------------------------------


@pytest.mark.docker
async def test_missing_repo2docker_image_fails_the_build_clearly(builder, made):
    missing = f"tljh-repo2docker-test/no-such-image:{uuid.uuid4().hex[:8]}"
    request = new_request(made, "http://127.0.0.1:9/x.git")

    no_pull = make_builder(repo2docker_image=missing, pull_repo2docker_image=False)
    events = await collect(no_pull.build(request))
    await no_pull.close()
    assert [e.phase for e in events] == [FAILED]
    assert missing in events[0].message

    # Nothing can be pulled here (no registry), and where it can, this name does not exist.
    pulling = make_builder(repo2docker_image=missing, pull_repo2docker_image=True)
    events = await collect(pulling.build(request))
    await pulling.close()
    assert [e.phase for e in events] == [STATUS, FAILED]
    assert missing in events[-1].message and "pull" in events[-1].message
    assert await build_containers(builder, request.uid) == []


@pytest.mark.parametrize("url", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:9"])
async def test_an_unreachable_engine_is_a_failed_event_not_an_exception(url):
    builder = DockerBuilder(docker_url=url, repo2docker_image=R2D_IMAGE)
    try:
        with pytest.raises(BuildError, match=re.escape(url)):
            await builder.check()
        request = BuildRequest(uid="t-down", repo="http://x/y.git", ref="main", image_name="x:1")
        events = await collect(builder.build(request))
        assert [e.phase for e in events] == [FAILED]
        assert url in events[0].message
    finally:
        await builder.close()


def test_bad_settings_are_refused():
    with pytest.raises(Exception, match="docker_url"):
        DockerBuilder(docker_url="/var/run/docker.sock")
    with pytest.raises(Exception, match="user_id"):
        DockerBuilder(user_id=0)
    with pytest.raises(Exception, match="build_tmpfs_size"):
        DockerBuilder(build_tmpfs_size="4 GB")
    assert DockerBuilder(build_tmpfs_size="2G").build_tmpfs_size == "2g"


def test_command_line_holds_no_credentials():
    builder = DockerBuilder(user_id=1234, user_name="ana", extra_repo2docker_args=["--debug"])
    request = BuildRequest(
        uid="u1",
        repo="https://example.org/r.git",
        ref="v1",
        image_name="img:1",
        labels={"k": "v"},
        build_args={"A": "b"},
        username="ana",
        password="topsecret",
    )
    cmd = builder._command(request)
    assert cmd == [
        "jupyter-repo2docker", "--no-run", "--ref", "v1", "--user-id", "1234",
        "--user-name", "ana", "--image-name", "img:1", "--label", "k=v",
        "--label", "tljh_repo2docker.uid=u1", "--build-arg", "A=b", "--debug",
        "--", "https://example.org/r.git",
    ]  # fmt: skip
    env = builder._environment(request)
    assert not any("topsecret" in item for item in cmd + env)
    assert "GIT_TERMINAL_PROMPT=0" in env


@pytest.mark.docker
async def test_repo2docker_image_removed_after_a_build_is_checked_again(builder, made):
    """The image is looked up once, not before every build; a build that finds
    it gone since then fails as clearly as one that never had it."""
    import aiodocker

    own = f"tljh-repo2docker-test/r2d-removed:{uuid.uuid4().hex[:8]}"
    docker = aiodocker.Docker()
    try:
        await docker.images.tag(R2D_IMAGE, own.split(":")[0], tag=own.split(":")[1])
        tagged = make_builder(repo2docker_image=own, pull_repo2docker_image=False)
        try:
            request = new_request(made, "http://127.0.0.1:9/x.git")
            first = await collect(tagged.build(request))
            assert first[-1].phase == FAILED and own not in first[-1].message  # the clone failed
            assert tagged._repo2docker_found == own
            await docker.images.delete(own)
            second = await collect(tagged.build(new_request(made, "http://127.0.0.1:9/x.git")))
            assert [e.phase for e in second] == [FAILED]
            assert own in second[0].message and "not present" in second[0].message
            assert await build_containers(builder, request.uid) == []
        finally:
            await tagged.close()
    finally:
        try:
            await docker.images.delete(own)
        except aiodocker.DockerError:
            pass
        await docker.close()
