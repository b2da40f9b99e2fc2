"""Starting a server right after an in-place upgrade from 3.0.21 (unit tests, real SQLite).

The converted environments are ``built`` before their images are adopted
(the build manager's recovery does it once the build backend answers). A
start in that window waits for the recovery, a bounded time, then is told
to try again (503 with Retry-After); it is never told that a built
environment is "not built yet (status: built)". See service/starting.py.
"""

import asyncio
import shutil
from pathlib import Path

import pytest

from tljh_repo2docker.db import store
from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db
from tljh_repo2docker.errors import FieldError
from tljh_repo2docker.service import starting

DATA = Path(__file__).parent / "data" / "upstream-3.0.21"


@pytest.fixture
async def upgraded(tmp_path):
    """Sessions of 3.0.21's database converted, and its environments (by name)."""
    db = tmp_path / "tljh_repo2docker.sqlite"
    shutil.copy(DATA / "tljh_repo2docker.sqlite", db)
    db.chmod(0o644)
    engine = make_engine(f"sqlite:///{db}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    envs = {e.name: e for e in await store.list_environments(sessions)}
    yield sessions, envs
    await engine.dispose()


def contradicts_itself(message):
    return "not built yet (status: built)" in message


async def test_converted_environments_are_built_before_their_image_is_adopted(upgraded):
    _, envs = upgraded
    assert envs and all(starting.awaiting_adoption(e) for e in envs.values())


async def test_before_the_recovery_the_start_is_told_to_try_again(upgraded):
    _, envs = upgraded
    env = next(iter(envs.values()))
    error = starting.refusal(env, recovered=False)
    assert error.status_code == 503 and error.headers == {"Retry-After": "5"}
    assert error.field == "environment"
    assert f"{env.name!r} is being prepared: its image is not adopted yet" in error.log_message
    assert "try again" in error.log_message
    # with the build backend's problem named
    error = starting.refusal(env, recovered=False, backend_problem="Docker does not answer")
    assert "the build backend cannot be used yet: Docker does not answer" in error.log_message
    assert not contradicts_itself(error.log_message)


async def test_the_start_waits_for_the_adoption(upgraded):
    sessions, envs = upgraded
    env = next(iter(envs.values()))
    recovered = asyncio.Event()

    async def recovery():
        await asyncio.sleep(0.2)
        await store.update_environment(sessions, env.uid, image_id="sha256:adopted")
        recovered.set()

    task = asyncio.create_task(recovery())
    started = await starting.startable(sessions, env, recovered, wait=10)
    await task
    assert started.uid == env.uid and started.image_id == "sha256:adopted"


async def test_a_start_waits_a_bounded_time_then_answers_503(upgraded):
    sessions, envs = upgraded
    env = next(iter(envs.values()))
    recovered = asyncio.Event()
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(FieldError) as caught:
        await starting.startable(
            sessions, env, recovered, wait=0.2, backend_problem=lambda: "connection refused"
        )
    assert asyncio.get_running_loop().time() - t0 < 5
    error = caught.value
    assert error.status_code == 503 and error.headers["Retry-After"] == "5"
    assert "is being prepared" in error.log_message and "connection refused" in error.log_message
    assert not contradicts_itself(error.log_message)


async def test_an_image_adoption_could_not_find_says_so(upgraded):
    sessions, envs = upgraded
    env = next(iter(envs.values()))
    recovered = asyncio.Event()
    recovered.set()
    with pytest.raises(FieldError) as caught:
        await starting.startable(sessions, env, recovered)
    error = caught.value
    assert error.status_code == 409
    assert "could not adopt its image" in error.log_message
    assert not contradicts_itself(error.log_message)


async def test_environments_that_are_not_built_and_built_ones_are_as_before(upgraded):
    sessions, envs = upgraded
    env = next(iter(envs.values()))
    for status in (store.QUEUED, store.BUILDING, store.FAILED):
        await store.update_environment(sessions, env.uid, status=status)
        again = await store.get_environment(sessions, env.uid)
        # not waited for, even before the recovery
        with pytest.raises(FieldError) as caught:
            await starting.startable(sessions, again, asyncio.Event(), wait=30)
        assert caught.value.status_code == 409
        assert caught.value.log_message == (
            f"environment: {env.name!r} is not built yet (status: {status})"
        )
    await store.update_environment(sessions, env.uid, status=store.BUILT, image_id="sha256:x")
    built = await store.get_environment(sessions, env.uid)
    assert await starting.startable(sessions, built, asyncio.Event(), wait=30) is built
    with pytest.raises(FieldError) as caught:
        await starting.startable(sessions, built, None, unstartable=lambda image: "no registry")
    assert caught.value.status_code == 409
    assert caught.value.log_message == f"environment: {env.name!r} cannot be started: no registry"


async def test_no_refusal_ever_says_not_built_yet_of_a_built_environment(upgraded):
    _, envs = upgraded
    for env in envs.values():
        for recovered in (True, False):
            error = starting.refusal(env, recovered=recovered)
            assert error is not None and not contradicts_itself(error.log_message)
