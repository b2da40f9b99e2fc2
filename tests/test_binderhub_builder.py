"""BinderHubBuilder against the stand-in BinderHub, over real HTTP on loopback.

Fixtures here:

* ``binder``: a fresh :class:`BinderHubStandin` under ``/services/binder/``
  requiring the token ``TOKEN``;
* ``builder``: a :class:`BinderHubBuilder` pointed at it, with short timeouts
  and retry delays so that the failure cases run fast.
"""

import asyncio
import logging
import socket
import time

import pytest

from tljh_repo2docker.builds.base import (
    BUILT,
    CANCELLED,
    FAILED,
    LOG,
    STATUS,
    BuildError,
    BuildRequest,
)
from tljh_repo2docker.builds.binderhub import (
    CANCEL_NOTE,
    PROVIDERS,
    BinderHubBuilder,
    SpecError,
    build_spec,
    build_url,
)

from .helpers.binderhub_standin import IMAGE, BinderHubStandin

TOKEN = "secret-token-5d1f0e7c9b"


@pytest.fixture
async def binder():
    async with BinderHubStandin(prefix="/services/binder/", token=TOKEN) as standin:
        yield standin


@pytest.fixture
async def builder(binder):
    b = BinderHubBuilder(
        url=binder.url, token=TOKEN, connect_timeout=2, read_timeout=5, retry_delay=0.01
    )
    yield b
    await b.close()


def request(repo="owner/repo", ref="main", provider="gh", uid="b1", **kwargs):
    return BuildRequest(
        uid=uid, repo=repo, ref=ref, image_name="ignored:latest", provider=provider, **kwargs
    )


async def collect(builder, req, timeout=10):
    async def run():
        return [event async for event in builder.build(req)]

    return await asyncio.wait_for(run(), timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- build_spec ---------------------------------------------------------------


@pytest.mark.parametrize(
    "provider, repo, ref, spec",
    [
        ("gh", "jupyterhub/binderhub", "main", "jupyterhub/binderhub/main"),
        ("gh", "https://github.com/jupyterhub/binderhub.git", "", "jupyterhub/binderhub/HEAD"),
        ("gh", "https://github.com/jupyterhub/binderhub/", "v1.0", "jupyterhub/binderhub/v1.0"),
        ("gh", "github.com/owner/repo", "feature/new-ui", "owner/repo/feature/new-ui"),
        ("gh", "owner/repo", "we#ird ref", "owner/repo/we%23ird%20ref"),
        ("gl", "group/project", "main", "group%2Fproject/main"),
        (
            "gl",
            "https://gitlab.com/group/sub/project.git",
            "feature/x",
            "group%2Fsub%2Fproject/feature%2Fx",
        ),
        ("gl", "gitlab.com/group/project", "", "group%2Fproject/HEAD"),
        (
            "git",
            "https://git.example.org/team/repo.git",
            "main",
            "https%3A%2F%2Fgit.example.org%2Fteam%2Frepo.git/main",
        ),
        (
            "git",
            "https://host:8443/a b/repo?x=1&y=%2F",
            "release/2.0",
            "https%3A%2F%2Fhost%3A8443%2Fa%20b%2Frepo%3Fx%3D1%26y%3D%252F/release%2F2.0",
        ),
        ("git", "https://example.org/r.git", "", "https%3A%2F%2Fexample.org%2Fr.git/HEAD"),
        ("gist", "https://gist.github.com/user/8f6b1e2c", "", "user/8f6b1e2c"),
        ("gist", "user/8f6b1e2c", "a1b2c3", "user/8f6b1e2c/a1b2c3"),
        ("zenodo", "10.5281/zenodo.3242074", "", "10.5281/zenodo.3242074"),
        ("zenodo", "https://doi.org/10.5281/zenodo.3242074", "ignored", "10.5281/zenodo.3242074"),
        ("figshare", "doi:10.6084/m9.figshare.9782777.v1", "", "10.6084/m9.figshare.9782777.v1"),
        ("dataverse", "10.7910/DVN/TJCLKP", "", "10.7910/DVN/TJCLKP"),
        (
            "hydroshare",
            "https://www.hydroshare.org/resource/8A38AE7C5C5E4E2AB4E0BB45D5E5A6B1/",
            "",
            "8a38ae7c5c5e4e2ab4e0bb45d5e5a6b1",
        ),
        ("hydroshare", "8a38ae7c5c5e4e2ab4e0bb45d5e5a6b1", "", "8a38ae7c5c5e4e2ab4e0bb45d5e5a6b1"),
        (
            "ckan",
            "https://demo.ckan.org",
            "sample-dataset",
            "https%3A%2F%2Fdemo.ckan.org/sample-dataset",
        ),
    ],
)
def test_build_spec(provider, repo, ref, spec):
    assert build_spec(provider, repo, ref) == spec


@pytest.mark.parametrize(
    "provider, repo, ref, message",
    [
        ("bitbucket", "owner/repo", "main", "unknown BinderHub provider"),
        ("gh", "", "main", "repository is required"),
        ("gh", "just-a-name", "main", "owner/name"),
        ("gh", "https://github.com/owner/repo/tree/main", "main", "owner/name"),
        ("gl", "project-without-group", "main", "group/name"),
        ("gist", "user", "", "user/gist-id"),
        ("zenodo", "https://zenodo.org/record/3242074", "", "DOI"),
        ("hydroshare", "not-an-id", "", "resource id"),
        ("ckan", "https://demo.ckan.org", "", "dataset id"),
        ("git", "https://user:s3cret@git.example.org/r.git", "main", "must not hold credentials"),
        ("git", "https://ghp_token@github.com/o/r", "main", "must not hold credentials"),
    ],
)
def test_build_spec_rejects(provider, repo, ref, message):
    with pytest.raises(SpecError, match=message):
        build_spec(provider, repo, ref)


def test_providers_cover_build_spec():
    for provider in PROVIDERS:
        repo = {
            "zenodo": "10.5281/zenodo.1",
            "figshare": "10.6084/m9.figshare.1",
            "dataverse": "10.7910/DVN/X",
            "hydroshare": "0" * 32,
            "git": "https://example.org/r",
        }.get(provider, "group/name")
        assert build_spec(provider, repo, "ref")


@pytest.mark.parametrize(
    "base",
    [
        "http://binder/services/binder/",
        "http://binder/services/binder",
    ],
)
def test_build_url_joins_paths(base):
    assert build_url(base, "gh", "o/r/main") == "http://binder/services/binder/build/gh/o/r/main"
    assert build_url("http://binder", "gh", "o/r/main") == "http://binder/build/gh/o/r/main"


def test_url_is_validated_and_normalised():
    assert (
        BinderHubBuilder(url="http://binder/services/binder").url
        == "http://binder/services/binder/"
    )
    with pytest.raises(Exception, match="http"):
        BinderHubBuilder(url="binder:8585")


def test_token_defaults_to_hub_token(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "from-env")
    assert BinderHubBuilder().token == "from-env"


# -- builds over HTTP -------------------------------------------------------------


async def test_successful_build(binder, builder):
    events = await collect(builder, request())

    phases = [e.phase for e in events]
    assert phases[-1] == BUILT and phases.count(BUILT) == 1
    assert events[-1].image_name == IMAGE
    assert events[-1].commit == IMAGE.rpartition(":")[2]
    assert events[-1].message == "Done! Image built"
    statuses = [e.message for e in events if e.phase == STATUS]
    assert statuses == [
        "BinderHub: waiting",
        "BinderHub: fetching",
        "BinderHub: building",
        "BinderHub: pushing",
    ]
    logs = [e.message for e in events if e.phase == LOG]
    assert logs[0] == "Waiting for build to start..."
    assert "Step 1/3 : FROM buildpack-deps:jammy" in logs
    # a status comes before the log lines of its phase
    assert phases.index(STATUS) < phases.index(LOG)

    [sent] = binder.build_requests
    assert sent.path == "/services/binder/build/gh/owner/repo/main"
    assert sent.query == {"build_only": ["true"]}
    assert sent.headers["authorization"] == f"token {TOKEN}"
    assert "text/event-stream" in sent.headers["accept"]


async def test_spec_encoding_reaches_binderhub(binder, builder):
    req = request(provider="git", repo="https://git.example.org/a/b.git", ref="release/1.0")
    events = await collect(builder, req)
    assert events[-1].phase == BUILT
    [sent] = binder.build_requests
    assert sent.provider == "git"
    assert sent.spec == "https%3A%2F%2Fgit.example.org%2Fa%2Fb.git/release%2F1.0"

    req = request(provider="gl", repo="group/sub/project", ref="main", uid="b2")
    assert (await collect(builder, req))[-1].phase == BUILT
    assert binder.build_requests[-1].path == "/services/binder/build/gl/group%2Fsub%2Fproject/main"


async def test_url_without_trailing_slash(binder):
    builder = BinderHubBuilder(url=binder.url.rstrip("/"), token=TOKEN)
    try:
        events = await collect(builder, request())
    finally:
        await builder.close()
    assert events[-1].phase == BUILT
    assert binder.build_requests[0].path.startswith("/services/binder/build/gh/")


async def test_cached_image_is_ready_at_once(binder, builder):
    events = await collect(builder, request(repo="owner/cached"))
    assert [e.phase for e in events] == [BUILT]
    assert events[0].message == "Done! Found built image"
    assert events[0].image_name == IMAGE


async def test_failed_phase(binder, builder):
    events = await collect(builder, request(repo="owner/fail-phase"))
    assert events[-1].phase == FAILED
    assert "returned 1" in events[-1].message
    assert sum(e.final for e in events) == 1
    assert any(e.phase == LOG for e in events)


async def test_cut_stream_fails_with_reason(binder, builder):
    events = await collect(builder, request(repo="owner/cut-stream"))
    assert events[-1].phase == FAILED
    assert "connection to BinderHub broke" in events[-1].message
    assert any(e.message == "Picked Git content provider." for e in events)


async def test_stream_closed_without_final_event(binder, builder):
    events = await collect(builder, request(repo="owner/closes-early"))
    assert events[-1].phase == FAILED
    assert "closed the event stream before the build finished" in events[-1].message
    assert "last phase: fetching" in events[-1].message


async def test_malformed_event(binder, builder):
    events = await collect(builder, request(repo="owner/malformed-event"))
    assert events[-1].phase == FAILED
    assert "not a JSON object" in events[-1].message


async def test_ready_without_image_name(binder, builder):
    events = await collect(builder, request(repo="owner/no-image"))
    assert events[-1].phase == FAILED
    assert "without naming the image" in events[-1].message


async def test_http_500_is_retried_then_fails(binder, builder):
    builder.retries = 2
    events = await collect(builder, request(repo="owner/http-500"))
    assert events[-1].phase == FAILED
    assert "HTTP 500" in events[-1].message
    assert "Stand-in error 500" in events[-1].message
    assert len(binder.build_requests) == 3
    assert [e.phase for e in events[:-1]] == [STATUS, STATUS]


async def test_5xx_then_success(binder, builder):
    events = await collect(builder, request(repo="owner/flaky"))
    assert events[-1].phase == BUILT
    assert len(binder.build_requests) == 3
    assert "HTTP 503" in events[0].message and "retrying" in events[0].message


async def test_http_404_is_not_retried(binder, builder):
    events = await collect(builder, request(repo="owner/http-404"))
    assert events[-1].phase == FAILED
    assert "refused the build (HTTP 404)" in events[-1].message
    assert len(binder.build_requests) == 1


async def test_wrong_token_is_refused(binder, builder):
    builder.token = "wrong"
    events = await collect(builder, request())
    assert [e.phase for e in events] == [FAILED]
    assert "HTTP 403" in events[0].message and "Forbidden" in events[0].message


async def test_binderhub_without_api_only_mode(binder, builder):
    binder.api_only = False
    events = await collect(builder, request())
    assert events[-1].phase == FAILED
    assert "Building but not launching is not permitted" in events[-1].message


async def test_not_an_event_stream(binder, builder):
    events = await collect(builder, request(repo="owner/html-page"))
    assert events[-1].phase == FAILED
    assert "did not answer with an event stream" in events[-1].message


async def test_connection_refused(builder):
    builder.url = f"http://127.0.0.1:{free_port()}/"
    builder.retries = 1
    events = await collect(builder, request())
    assert events[-1].phase == FAILED
    assert "Could not connect to BinderHub" in events[-1].message
    assert [e.phase for e in events] == [STATUS, FAILED]


async def test_no_url_configured():
    builder = BinderHubBuilder()
    events = await collect(builder, request())
    assert [e.phase for e in events] == [FAILED]
    assert "BinderHubBuilder.url" in events[0].message


async def test_bad_spec_fails_without_request(binder, builder):
    events = await collect(builder, request(provider="bitbucket"))
    assert [e.phase for e in events] == [FAILED]
    assert "unknown BinderHub provider" in events[0].message
    assert binder.build_requests == []


async def test_credentials_and_build_args_are_refused(binder, builder):
    events = await collect(builder, request(username="u", password="p"))
    assert [e.phase for e in events] == [FAILED]
    assert "credentials" in events[0].message
    events = await collect(builder, request(build_args={"A": "1"}))
    assert "build arguments" in events[0].message
    assert binder.build_requests == []
    assert not BinderHubBuilder.supports_credentials
    assert not BinderHubBuilder.supports_build_args


# -- time -----------------------------------------------------------------------


async def test_keepalives_keep_a_slow_stream_alive(binder, builder):
    # 4 quiet periods of 0.2 s with keep-alives: 0.8 s in all, over the read timeout
    builder.read_timeout = 0.5
    start = time.monotonic()
    events = await collect(builder, request(repo="owner/slow-stream"))
    assert events[-1].phase == BUILT
    assert time.monotonic() - start > builder.read_timeout


async def test_silence_over_read_timeout_fails(binder, builder):
    builder.read_timeout = 0.3
    events = await collect(builder, request(repo="owner/silent-stream"))
    assert events[-1].phase == FAILED
    assert "No news from BinderHub for 0.3 s" in events[-1].message


# -- cancel ---------------------------------------------------------------------


async def wait_until(condition, timeout=5):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_cancel_mid_stream(binder, builder):
    events = []
    req = request(repo="owner/endless-stream", uid="c1")

    async def consume():
        async for event in builder.build(req):
            events.append(event)

    task = asyncio.create_task(consume())
    await wait_until(lambda: any(e.phase == LOG for e in events))
    assert await builder.running() == {"c1"}

    await builder.cancel("c1")
    await asyncio.wait_for(task, 5)

    assert events[-1].phase == CANCELLED
    assert "cannot cancel" in events[-1].message
    assert await builder.running() == set()
    await wait_until(lambda: binder.build_requests[0].client_closed)


async def test_cancelling_the_consumer_stops_following(binder, builder):
    req = request(repo="owner/endless-stream", uid="c2")
    seen = []

    async def consume():
        async for event in builder.build(req):
            seen.append(event)

    task = asyncio.create_task(consume())
    await wait_until(lambda: len(seen) > 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await builder.running() == set()
    await wait_until(lambda: binder.build_requests[0].client_closed)
    # cancelling a build that is no longer followed is harmless
    await builder.cancel("c2")


async def test_close_stops_followers_and_client(binder, builder):
    req = request(repo="owner/endless-stream", uid="c3")
    gen = builder.build(req)
    first = await gen.__anext__()
    assert first.phase == STATUS
    await builder.close()
    rest = [event async for event in gen]
    assert rest[-1].phase == CANCELLED
    assert builder._client is None


# -- secrets --------------------------------------------------------------------


async def test_token_is_sent_but_never_shown(binder, builder, caplog):
    caplog.set_level(logging.DEBUG)
    builder.log = logging.getLogger("test.binderhub")
    all_events = []
    for uid, repo in [
        ("s1", "owner/repo"),
        ("s2", "owner/fail-phase"),
        ("s3", "owner/http-404"),
        ("s4", "owner/cut-stream"),
    ]:
        all_events += await collect(builder, request(uid=uid, repo=repo))
    builder.token = "wrong"
    all_events += await collect(builder, request(uid="s5"))

    assert all(
        r.headers.get("authorization", "").startswith("token ") for r in binder.build_requests
    )
    assert binder.build_requests[0].headers["authorization"] == f"token {TOKEN}"
    for event in all_events:
        assert TOKEN not in repr(event)
    assert TOKEN not in caplog.text
    assert "wrong" not in " ".join(e.message for e in all_events)


# -- the rest of the interface ----------------------------------------------------


async def test_check_healthy(binder, builder):
    assert await builder.check() == f"BinderHub at {binder.url}"
    assert binder.requests[-1].path == "/services/binder/health"


async def test_check_unhealthy(binder, builder):
    binder.healthy = False
    with pytest.raises(BuildError, match="not healthy: Docker registry not ok") as info:
        await builder.check()
    assert "HTTP 503" in info.value.log_message


async def test_check_unreachable(builder):
    builder.url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(BuildError, match="cannot be reached"):
        await builder.check()


async def test_attach_is_not_possible(builder):
    assert builder.attach("b1", 10) is None


async def test_delete_image_keeps_registry_image(builder, caplog):
    caplog.set_level(logging.INFO)
    builder.log = logging.getLogger("test.binderhub")
    await builder.delete_image(IMAGE)
    assert "stays in BinderHub's registry" in caplog.text


# -- what the real BinderHub does, and the stand-in now does too ------------------


async def test_standin_answers_its_errors_like_binderhub(binder):
    """HTTP 200 and a failed event with status_code (BinderHub's send_error)."""
    import json

    import httpx

    async with httpx.AsyncClient() as client:
        r = await client.get(f"{binder.url}build/gh/owner/repo/main", params={"build_only": "true"})
    assert r.status_code == 200
    event = json.loads(r.text.strip().removeprefix("data:"))
    assert event == {
        "phase": "failed",
        "status_code": 400,
        "message": "Missing Accept header: text/event-stream\n",
    }


async def test_event_status_5xx_is_retried_4xx_is_not(binder, builder):
    events = await collect(builder, request(repo="owner/flaky"))  # 503 in the event, twice
    assert [e.phase for e in events] == [STATUS, STATUS, *[e.phase for e in events[2:]]]
    assert events[-1].phase == BUILT
    builder.token = "wrong"
    events = await collect(builder, request())
    assert [(e.phase, e.message) for e in events] == [
        (FAILED, "BinderHub refused the build (HTTP 403): Forbidden")
    ]


async def test_lines_without_phase_and_blank_lines(binder, builder):
    events = await collect(builder, request())
    logs = [e.message for e in events if e.phase == LOG]
    assert "Step 2/3 : RUN pip install -r requirements.txt" in logs  # an event without phase
    assert "" not in logs  # the blank line after it is dropped
    assert events[-1].phase == BUILT


async def test_failure_reason_is_the_log_line_that_says_why(binder, builder):
    command = "docker buildx build --progress plain --load -t r2d:1 " + "--build-arg A=b " * 30
    binder.scenarios["buildx-fail"] = binder_failed_like_repo2docker(command)
    events = await collect(builder, request(repo="owner/buildx-fail"))
    assert events[-1].phase == FAILED
    assert events[-1].message == (
        "The build failed on BinderHub: ERROR: failed to solve: process "
        '"/bin/sh -c exit 3" did not complete successfully: exit code: 3'
    )


def binder_failed_like_repo2docker(command):
    from .helpers.binderhub_standin import Event, Scenario, building_steps

    return Scenario(
        steps=[
            *building_steps()[:4],
            Event({"message": "#5 [2/2] RUN exit 3\n"}),
            Event({"message": "\n"}),
            Event({"message": 'ERROR: failed to solve: process "/bin/sh -c exit 3" did not '
                              "complete successfully: exit code: 3\n"}),
            Event({"phase": "failed", "message": command + "\n"}),
            Event({"phase": "failed"}),
        ]
    )


async def test_cancel_returns_the_note_for_the_log(binder, builder):
    task = asyncio.create_task(collect(builder, request(repo="owner/endless-stream", uid="c1")))
    deadline = time.monotonic() + 5
    while "c1" not in await builder.running():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    note = await builder.cancel("c1")
    assert note == CANCEL_NOTE and "BinderHub cannot cancel a build" in note
    events = await task
    assert events[-1].phase == CANCELLED
    # no build followed: the note all the same (the manager writes it to the log)
    assert await builder.cancel("gone") == CANCEL_NOTE


@pytest.mark.parametrize("registry", [True, False])
async def test_images_of_a_binderhub_without_registry_are_unstartable(binder, builder, registry):
    image = "r2d-test-binderhub-abc:1"
    assert builder.unstartable(image) is None  # health not read yet: left to the spawner
    binder.registry = registry  # BinderHub lists the check only with use_registry
    await builder.check()
    reason = builder.unstartable(image)
    if registry:
        assert reason is None
    else:
        assert image in reason and "without a registry" in reason
