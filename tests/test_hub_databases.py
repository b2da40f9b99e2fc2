"""The whole service on real database servers, through a real JupyterHub and its proxy.

1. For PostgreSQL and MariaDB/MySQL (the servers of ``tests/test_databases.py``:
   ``TLJH_R2D_TEST_POSTGRES_URL``, ``TLJH_R2D_TEST_MYSQL_URL``), a hub whose
   service uses a database created for this run (dropped afterwards): an
   environment's whole life (add, build, list, logs, fields, delete, with the
   database and Docker agreeing), and two builds logging at the same time.
   A server that does not answer fails under ``CI=true`` and skips elsewhere.

2. The database lost mid-build: a PostgreSQL instance of this test's own
   (``initdb`` in a temporary directory, run as the ``postgres`` user) is
   stopped while a build runs and started again after the build ended. The
   API answers 503, ``health`` names the database, the service stays up, and
   once the database is back the result and the whole log are stored.
"""

import asyncio
import re
import subprocess
import time

import httpx
import pytest
from sqlalchemy import text

from tests.helpers import utils
from tests.helpers.utils import sse_read
from tests.helpers.buildutils import (
    FINAL,
    build_containers,
    build_containers_gone,
    docker,
    dockerfile,
    image_info,
    images_of,
    log_text,
    read_events,
    token,
    wait_building,
    wait_for,
)
from tests.helpers.fixtures import running_hub
from tests.helpers.gitserver import head_commit, make_repo
from tests.helpers.databases import _server_db
from tests.helpers.private_postgres import PrivatePostgres
from tljh_repo2docker.db import store
from tljh_repo2docker.db.session import make_engine, make_sessionmaker

pytestmark = [pytest.mark.hub, pytest.mark.docker]


# -- a hub per database server ------------------------------------------------------


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
async def db_url(request):
    """A fresh database on the shared server of each kind, dropped after the module."""
    url, drop = await _server_db(request.param)
    try:
        yield url
    finally:
        await drop()


@pytest.fixture(scope="module")
def hub(db_url, tmp_path_factory, test_images):
    kind = db_url.split(":", 1)[0]
    with running_hub(tmp_path_factory.mktemp(f"hub-{kind}"), [f"--db_url={db_url}"]) as info:
        yield info
        remove_images(info)


@pytest.fixture(scope="module")
async def admin(hub):
    user = await utils.HubUser.login(hub, "admin")
    yield user
    await user.close()


@pytest.fixture
async def db(db_url):
    """The service's database, read directly: what is really stored."""
    engine = make_engine(db_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def repo(git_root, git_server):
    """``repo(files) -> (name, url)``: a new repository on the git server."""

    def make(files):
        name = f"r-{token()}"
        make_repo(git_root, name, files)
        return name, git_server.url(name)

    return make


def remove_images(info):
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for image in listed:
        if image.startswith(info.image_prefix):
            docker("rmi", "-f", image, check=False)


async def log_line_count(sessions, env_id):
    async with sessions() as session:
        return await session.scalar(
            text("SELECT COUNT(*) FROM log_lines WHERE environment_id = :id"), {"id": env_id}
        )


async def log_row_ids(sessions, env_id):
    """Primary keys of an environment's log rows: one sequence for all environments."""
    async with sessions() as session:
        rows = await session.execute(
            text("SELECT id FROM log_lines WHERE environment_id = :id ORDER BY id"), {"id": env_id}
        )
        return [row[0] for row in rows]


def ticks(tag, count, pause):
    """A Dockerfile step printing ``<tag>-tick-1`` ... ``<tag>-tick-<count>``, ``pause`` s apart."""
    return dockerfile(
        f"RUN for i in $(seq 1 {count}); do echo {tag}-tick-$i; sleep {pause}; done; echo {tag}-done"
    )


def printed(events, line):
    """How many build-output lines are exactly ``line`` (BuildKit prints "#<step> <s> <line>")."""
    return sum(1 for _, data in events if re.fullmatch(rf"#\d+ [\d.]+ {line}", data["message"]))


def assert_complete(events, tag, count):
    """Ids strictly one after the other, every tick once, the end marker, a final ``built``."""
    ids = [event_id for event_id, _ in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    for i in range(1, count + 1):
        assert printed(events, f"{tag}-tick-{i}") == 1, (i, log_text(events)[-3000:])
    assert printed(events, f"{tag}-done") == 1, log_text(events)[-3000:]
    assert events[-1][1]["phase"] == "built", events[-3:]


async def follow(user, uid, into):
    """Append ``(id, data, arrival time)`` SSE events to ``into`` until the final one."""
    url = user.service_path(f"api/environments/{uid}/logs")
    async with user.client.stream("GET", url, timeout=300) as r:
        assert r.status_code == 200, (r.status_code, await r.aread())
        await sse_read(
            r, lambda i, data: into.append((i, data, time.monotonic())) or data["phase"] in FINAL
        )


# -- 1. on each database server -------------------------------------------------------


async def test_environment_life_on_a_database_server(hub, admin, db, repo, git_root):
    name, url = repo({"Dockerfile": ticks("life", 3, 0.2)})
    display = f"db-life-{token()}"
    env = await admin.create_env({"repo": url, "name": display, "memory": "512M", "cpu": "0.5"})
    uid = env["uid"]
    assert env["status"] == "queued" and env["owner"] == "admin"
    try:
        env = await admin.wait_env(uid, FINAL, timeout=240)
        assert env["status"] == "built", env
        assert env["owner"] == "admin" and env["error"] is None
        assert env["commit"] == head_commit(git_root, name)
        image = image_info(env["image_name"])
        assert image is not None and image["Config"]["Labels"]["tljh_repo2docker.uid"] == uid
        assert env["size"] == image["Size"] > 0
        assert env["memory"] == "512M" and env["cpu"] == 0.5

        # Listed with the same fields; a plain user sees it too, without the admin's.
        r = await admin.api("GET", "api/environments")
        assert r.status_code == 200, r.text
        listed = {e["uid"]: e for e in r.json()["environments"]}
        assert listed[uid] == env
        alice = await utils.HubUser.login(hub, "alice")
        try:
            r = await alice.api("GET", "api/environments")
            seen = {e["uid"]: e for e in r.json()["environments"]}
            assert seen[uid]["commit"] == env["commit"] and seen[uid]["owner"] == "admin"
            assert "build_args" not in seen[uid] and "error" not in seen[uid]
        finally:
            await alice.close()

        # The stored log, replayed over SSE, whole and from an id.
        events = await read_events(admin, uid)
        assert_complete(events, "life", 3)
        assert events[0][1]["message"].startswith("queued")
        assert events[1][1] == {"phase": "status", "message": "building"}
        middle = events[len(events) // 2][0]
        assert await read_events(admin, uid, last_event_id=middle) == [
            e for e in events if e[0] > middle
        ]

        # The database holds what the API says, and Docker agrees.
        row = await store.get_environment(db, uid)
        assert row.status == "built" and row.image_id == image["Id"] and row.size == image["Size"]
        assert row.last_event_id == events[-1][0] and row.owner == "admin"
        assert await log_line_count(db, row.id) == len(events)
        assert images_of(uid) == [image["Id"]] and build_containers_gone(uid)
    finally:
        r = await admin.delete_env(uid)
    assert r.status_code == 204, r.text
    # Gone everywhere: API, database (row and log lines) and Docker.
    utils.assert_json_error(await admin.api("GET", f"api/environments/{uid}"), 404)
    assert await store.get_environment(db, uid) is None
    assert await log_line_count(db, row.id) == 0
    assert image_info(env["image_name"]) is None and image_info(image["Id"]) is None
    assert images_of(uid) == [] and build_containers_gone(uid)


async def test_two_builds_log_at_once(admin, db, repo):
    count = 8
    tags = [f"a{token()}", f"b{token()}"]
    uids = []
    for tag in tags:
        _, url = repo({"Dockerfile": ticks(tag, count, 0.5)})
        uids.append((await admin.create_env({"repo": url, "name": f"db-two-{tag}"}))["uid"])
    try:
        streams = [[], []]
        following = [asyncio.ensure_future(follow(admin, uid, s)) for uid, s in zip(uids, streams)]

        # Both run at the same time (the hub allows two builds at once).
        async def both_building():
            statuses = [(await admin.get_env(uid))["status"] for uid in uids]
            assert not set(statuses) & FINAL, statuses
            return statuses == ["building", "building"] and all(map(build_containers, uids))

        await wait_for(both_building, timeout=180, interval=0.3, what="both builds running")
        await asyncio.wait_for(asyncio.gather(*following), 240)

        for uid, tag, other, stream in zip(uids, tags, reversed(tags), streams):
            events = [(event_id, data) for event_id, data, _ in stream]
            assert_complete(events, tag, count)
            assert other not in log_text(events), "one build's lines in the other's log"
            assert await read_events(admin, uid) == events
            row = await store.get_environment(db, uid)
            assert row.status == "built" and row.last_event_id == events[-1][0]
            assert await log_line_count(db, row.id) == len(events)
            assert image_info(row.image_name)["Id"] == row.image_id
        # Both logs were written at the same time: their rows interleave in
        # the table, and both live streams got lines over the same stretch.
        # (Not the ticks themselves: BuildKit sometimes holds back the output
        # of one of two builds until its step ends.)
        rows = [await log_row_ids(db, (await store.get_environment(db, uid)).id) for uid in uids]
        assert rows[0][0] < rows[1][-1] and rows[1][0] < rows[0][-1], rows
        times = [[t for _, data, t in stream if data["phase"] == "log"] for stream in streams]
        assert times[0][0] < times[1][-1] and times[1][0] < times[0][-1], times
    finally:
        for uid in uids:
            await admin.api("POST", f"api/environments/{uid}/cancel")
            r = await admin.delete_env(uid)
            assert r.status_code in (204, 404), r.text
    for uid in uids:
        assert images_of(uid) == [] and await store.get_environment(db, uid) is None


# -- 2. the database lost mid-build -----------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres():
    server = PrivatePostgres()
    yield server
    server.remove()


def service_pids(info):
    result = subprocess.run(
        ["pgrep", "-f", f"tljh_repo2docker --port={info.service_port}"],
        capture_output=True, text=True,
    )
    return [int(pid) for pid in result.stdout.split()]


async def get_when_back(user, path, timeout=60):
    """GET ``path`` until the service answers 200 again (the database is back)."""
    deadline = time.monotonic() + timeout
    while True:
        r = await user.api("GET", path)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503 and time.monotonic() < deadline, (r.status_code, r.text)
        await asyncio.sleep(0.3)


async def test_database_lost_mid_build(private_postgres, tmp_path_factory, test_images, repo):
    pg = private_postgres
    workdir = tmp_path_factory.mktemp("hub-lost-db")
    args = [f"--db_url={pg.url}", "--BuildManager.db_retry_interval=0.5", "--health_check_timeout=5"]
    count = 16
    with running_hub(workdir, args) as info:
        admin = await utils.HubUser.login(info, "admin")
        hub_log = workdir / "jupyterhub.log"
        uid = None
        try:
            _, url = repo({"Dockerfile": ticks("lost", count, 0.5)})
            env = await admin.create_env({"repo": url, "name": f"db-lost-{token()}"})
            uid = env["uid"]
            live = []
            watcher = asyncio.ensure_future(follow(admin, uid, live))
            await wait_building(admin, uid, contains="lost-tick-2")
            (pid,) = service_pids(info)
            log_offset = len(hub_log.read_bytes())

            pg.stop()
            # The API says the database is away, in its one JSON error shape.
            for path in ("api/environments", f"api/environments/{uid}", f"api/environments/{uid}/logs"):
                r = await admin.api("GET", path)
                body = utils.assert_json_error(r, 503, "database")
                assert r.headers.get("Retry-After"), r.headers
                assert "Traceback" not in r.text and "postgres" not in body["message"]
            r = httpx.get(f"{info.service_url}health", timeout=30)
            body = utils.assert_json_error(r, 503, "database")
            assert body["database"].startswith("failed: "), body
            assert not body["builder"].startswith("failed"), body

            # The build goes on and ends while the database is away. Its
            # container stays until the result is stored (a kill meanwhile
            # must find it), and the live client gets no line that is not
            # stored: it waits, its stream open.
            def running_builds():
                out = docker("ps", "-q", "--filter", f"label=tljh_repo2docker.build={uid}")
                return out.stdout.split()

            await wait_for(lambda: not running_builds(), timeout=180, what="build ended")
            assert build_containers(uid), "the container waits for the result to be stored"
            await asyncio.sleep(2)  # a few rounds of retries
            # After the container, the image is checked (a server started in
            # it): the result comes once that is done, and waits in memory.
            result_waits = f"the result of build {uid} waits in memory"
            await wait_for(
                lambda: result_waits in hub_log.read_bytes()[log_offset:].decode(errors="replace"),
                timeout=120, what="the result waiting for the database",
            )
            stored_before = [i for i, d, _ in live if i is not None]
            assert printed([(i, d) for i, d, _ in live], "lost-done") == 0
            assert not watcher.done()
            utils.assert_json_error(await admin.api("GET", f"api/environments/{uid}"), 503)
            assert service_pids(info) == [pid], "the service must stay up"

            pg.start()
            env = await get_when_back(admin, f"api/environments/{uid}")
            deadline = time.monotonic() + 60
            while env["status"] not in FINAL:
                assert time.monotonic() < deadline, f"no result stored once the database is back: {env}"
                await asyncio.sleep(0.3)
                env = await get_when_back(admin, f"api/environments/{uid}")
            assert env["status"] == "built", env
            await asyncio.wait_for(watcher, 60)
            assert service_pids(info) == [pid]
            await wait_for(lambda: not build_containers(uid), timeout=60, what="container removed")
            built_images = images_of(uid)
            assert len(built_images) == 1, built_images
            assert [i for i, d, _ in live if i is not None][: len(stored_before)] == stored_before

            # The stored log is whole: what the live client saw, lines from
            # while the database was away included, nothing twice.
            # (and, while it was away, one notice without an id, not stored)
            notices = [data for event_id, data, _ in live if event_id is None]
            assert notices and all("database" in n["message"].lower() for n in notices), notices
            events = [(event_id, data) for event_id, data, _ in live if event_id is not None]
            assert_complete(events, "lost", count)
            replay = await read_events(admin, uid)
            assert replay == events

            # The database and Docker agree.
            image = image_info(env["image_name"])
            assert image is not None and [image["Id"]] == built_images
            assert env["size"] == image["Size"] and env["finished"]
            engine = make_engine(pg.url)
            try:
                row = await store.get_environment(make_sessionmaker(engine), uid)
            finally:
                await engine.dispose()
            assert row.status == "built" and row.image_id == image["Id"]
            assert row.last_event_id == events[-1][0]
            r = await admin.api("GET", "api/environments")
            assert r.status_code == 200 and uid in {e["uid"] for e in r.json()["environments"]}
            r = httpx.get(f"{info.service_url}health", timeout=30)
            assert r.status_code == 200 and r.json()["database"] == "ok", r.text

            # What the service logged meanwhile: one clear line per thing
            # waiting, that it is back, and no tracebacks.
            outage_log = hub_log.read_bytes()[log_offset:].decode(errors="replace")
            assert "Traceback" not in outage_log, outage_log[-5000:]
            waits = re.findall(r"The database is unavailable \(\w+\): (.+?) waits in memory", outage_log)
            assert f"the log of build {uid}" in waits and f"the result of build {uid}" in waits, waits
            assert len(waits) <= 3, waits
            assert "The database is back" in outage_log

            r = await admin.delete_env(uid)
            assert r.status_code == 204, r.text
            assert images_of(uid) == [] and image_info(image["Id"]) is None
            utils.assert_json_error(await admin.api("GET", f"api/environments/{uid}"), 404)
            uid = None
        except BaseException:
            print("---- jupyterhub.log (tail) ----")
            print(hub_log.read_text(errors="replace")[-8000:])
            raise
        finally:
            if uid is not None:
                try:
                    pg.start()
                except RuntimeError:
                    pass  # already running
                await admin.api("POST", f"api/environments/{uid}/cancel")
                await admin.delete_env(uid)
            await admin.close()
            remove_images(info)
