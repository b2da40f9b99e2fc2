"""Hostile input through the real hub and proxy: generated requests and known attacks.

The generated part uses schemathesis: for every operation of
``tljh_repo2docker/openapi.yaml``, requests that follow the description
(positive) and requests that break it (negative), sent with an admin API
token. Whatever comes in, the service answers without a 5xx or a traceback,
errors have the API's JSON shape, a refused request stores nothing, and the
answers match the description.

Accepted ``POST api/environments`` bodies would start real builds. So the
generated bodies mostly point at a loopback port where nothing listens (such
builds fail at once), at most ``MAX_ACCEPTED`` are accepted, and after that
every body carries the name of an existing environment, which the service
refuses with 409 only once the whole body has passed its checks. Only
environments created here are rebuilt, cancelled or deleted.

``FUZZ_EXAMPLES`` (default 200) sets the examples per operation and mode.

Archives are fuzzed from the inside too: generated ``.tar.gz``, ``.zip`` and
plain ``.tar`` files with hostile members (tests/helpers/archives.py), each
refused naming the field or, when every member passes, meeting a taken name.
``FUZZ_ARCHIVES`` (default 300) sets how many.
"""

import base64
import collections
import contextlib
import copy
import json
import os
import re
import sqlite3
import time
import uuid

import httpx
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tljh_repo2docker import TLJH_R2D_ADMIN_SCOPE
from tljh_repo2docker.app import TljhRepo2Docker
from tljh_repo2docker.paths import OPENAPI

from .helpers import archives
from .helpers.utils import SERVICE, assert_json_error, figure, make_token

pytestmark = [pytest.mark.hub, pytest.mark.docker]

ACCESS = f"access:services!service={SERVICE}"
#: Nothing listens on the discard port of the loopback: a build of this fails at once.
LOOPBACK_REPO = "http://127.0.0.1:9/nothing-here.git"
#: Builds the generated requests may start (each runs a repo2docker container briefly).
MAX_ACCEPTED = 5
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
#: Operations without input send the same request each time: a few suffice.
FIXED_EXAMPLES = 3
MUTATING = {"POST", "DELETE", "PUT", "PATCH"}
INJECTED_COOKIE = re.compile(r"(^|[;,\s])x=1", re.I)


def _without_security(spec):
    """The description without its security scheme: the token is sent as it is, never varied."""
    spec = copy.deepcopy(spec)
    spec.pop("security", None)
    spec["components"].pop("securitySchemes", None)
    for item in spec["paths"].values():
        for op in item.values():
            if isinstance(op, dict):
                op.pop("security", None)
    return spec


SCHEMA = schemathesis.openapi.from_dict(
    _without_security(yaml.safe_load(OPENAPI.read_text(encoding="utf-8")))
)


def _has_input(op):
    return bool(op.body) or any(True for _ in op.iter_parameters())


def _can_be_invalid(op):
    """Whether some input of the operation has a schema that a value can break."""
    if op.body:
        return True
    return any(
        param.definition.get("schema", {}) != {"type": "string"} for param in op.iter_parameters()
    )


def _operations():
    ops = []
    for result in SCHEMA.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not _can_be_invalid(op):
                continue  # any string is a valid uid or name: nothing to break
            examples = EXAMPLES if _has_input(op) else FIXED_EXAMPLES
            ops.append(pytest.param(op.label, mode, examples, id=f"{op.label}-{mode.value}"))
    return ops


class Fuzzer:
    """Sends generated cases as bob (admin scope, API token) and checks the answers."""

    def __init__(self, hub):
        self.base_url = hub.service_url.rstrip("/")
        self.db_path = hub.db_path
        self.direct_url = f"http://127.0.0.1:{hub.service_port}/services/{SERVICE}"
        token = make_token(hub, "bob", [ACCESS, TLJH_R2D_ADMIN_SCOPE])
        self.headers = {"Authorization": f"token {token}"}
        self.session = requests.Session()
        self.created = []  # uids this module created
        self.accepted = 0
        self.statuses = collections.Counter()  # (operation, status, error field): how many
        self.sentinel_name = f"hostile-sentinel-{uuid.uuid4().hex[:8]}"
        r = self.request(
            "POST", "api/environments", json={"repo": LOOPBACK_REPO, "name": self.sentinel_name}
        )
        assert r.status_code == 202, r.text
        self.created.append(r.json()["uid"])

    def request(self, method, path, direct=False, **kwargs):
        """A request through the proxy, or ``direct`` to the service's own port."""
        base = self.direct_url if direct else self.base_url
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.session.request(method, f"{base}/{path}", headers=headers, timeout=60, **kwargs)

    def count(self):
        """Environments in the service's database (read directly: cheaper than the API)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT count(*) FROM environments").fetchone()[0]

    def wait_done(self, uid, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.request("GET", f"api/environments/{uid}")
            if r.status_code == 404 or r.json()["status"] not in ("queued", "building"):
                return
            time.sleep(0.3)
        raise TimeoutError(uid)

    def close(self):
        for uid in self.created:
            r = self.request("DELETE", f"api/environments/{uid}")
            assert r.status_code in (204, 404), r.text
        self.session.close()

    # -- one generated case --------------------------------------------------

    def harmless(self, case, flags):
        """Steer a POST api/environments body away from real work (see the module docstring)."""
        body = case.body
        if not isinstance(body, dict):
            return
        if isinstance(body.get("repo"), str) and not flags["keep_repo"]:
            body["repo"] = LOOPBACK_REPO
        for field in ("provider", "machine_profile", "node_selector"):
            if field in body and not flags[f"keep_{field}"]:
                del body[field]
        # Credentials make a build private; with a repo other than loopback
        # they would be sent to whatever host was generated.
        if body.get("repo") != LOOPBACK_REPO:
            body.pop("username", None)
            body.pop("password", None)
        # Files that pass every check would be built: a Dockerfile that
        # fails at once keeps such a build short (the other files stay).
        if isinstance(body.get("files"), dict):
            body["files"]["Dockerfile"] = "not a Dockerfile\n"
        if self.accepted >= MAX_ACCEPTED or not flags["keep_name"]:
            body["name"] = self.sentinel_name

    def check(self, case):
        is_add = case.operation.label == "POST /api/environments"
        mutating = case.method.upper() in MUTATING
        before = self.count() if mutating else None
        try:
            response = case.call(
                base_url=self.base_url, session=self.session, headers=self.headers, timeout=60
            )
        except (requests.exceptions.InvalidHeader, UnicodeEncodeError):
            # The client library refuses to send it (a header with a line break, …).
            reject()
        status = response.status_code
        where = f"{case.method} {case.formatted_path} -> {status}: {response.text[:500]}"
        assert status < 500, where
        assert "Traceback" not in response.text, where
        headers = {name.lower(): values for name, values in response.headers.items()}
        for value in headers.get("set-cookie", []):
            assert not INJECTED_COOKIE.search(value), where
        if 400 <= status < 500:
            assert headers.get("content-type", [""])[0].startswith("application/json"), where
            error = response.json()
            assert error["status"] == status, where
            assert isinstance(error["message"], str) and error["message"], where
            assert isinstance(error.get("field", ""), str), where
            self.statuses[case.operation.label, status, error.get("field")] += 1
            if mutating:
                assert self.count() == before, f"a refused request changed the environments: {where}"
        else:
            self.statuses[case.operation.label, status, None] += 1
        if is_add and status == 202:
            self.created.append(response.json()["uid"])
            self.accepted += 1
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )


@pytest.fixture(scope="module")
def fuzzer(hub):
    fuzzer = Fuzzer(hub)
    fuzzer.wait_done(fuzzer.created[0])
    yield fuzzer
    for uid in fuzzer.created:
        fuzzer.wait_done(uid)
    fuzzer.close()
    figure(f"generated requests: {sum(fuzzer.statuses.values())}, builds accepted: {fuzzer.accepted}")
    for (label, status, field), count in sorted(fuzzer.statuses.items(), key=str):
        figure(f"  {label} -> {status}{f' ({field})' if field else ''}: {count}")


FLAGS = st.fixed_dictionaries(
    {
        "keep_repo": st.booleans(),
        "keep_name": st.booleans(),
        "keep_provider": st.booleans(),
        "keep_machine_profile": st.booleans(),
        "keep_node_selector": st.booleans(),
    }
)


@pytest.mark.parametrize("label, mode, examples", _operations())
def test_generated_requests(fuzzer, label, mode, examples):
    operation = SCHEMA.find_operation_by_label(label)
    cases = operation.as_strategy(generation_mode=mode)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=False,
    )
    @given(case=cases, flags=FLAGS)
    def run(case, flags):
        if label == "POST /api/environments":
            fuzzer.harmless(case, flags)
        fuzzer.check(case)

    run()


# -- known attacks ------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel(fuzzer):
    return fuzzer.created[0]


UID_ROUTES = [
    ("GET", "api/environments/{}"),
    ("DELETE", "api/environments/{}"),
    ("POST", "api/environments/{}/rebuild"),
    ("POST", "api/environments/{}/cancel"),
    ("GET", "api/environments/{}/logs"),
    ("GET", "api/environments/{}/versions"),
    ("POST", "api/environments/{}/rollback"),
    ("PUT", "api/environments/{}/webhook"),
    ("DELETE", "api/environments/{}/webhook"),
    ("DELETE", "api/servers/{}"),
]
TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e",
    "%00",
    "x%00y",
    "%2F",
    "%252e%252e%252fetc",
    "a" * 5000,
]
#: Not UTF-8: configurable-http-proxy answers 500 to these itself (URIError)
#: before the service sees them, so they go to the service directly.
NOT_UTF8 = ["%C0%AE%C0%AE", "%ff", "abc%fe%ff"]


@pytest.mark.parametrize("method, route", UID_ROUTES)
def test_path_traversal_in_ids(fuzzer, method, route):
    before = fuzzer.count()
    for uid, direct in [(u, False) for u in TRAVERSALS] + [(u, True) for u in NOT_UTF8]:
        r = fuzzer.request(method, route.format(uid), direct=direct)
        assert r.status_code in (400, 404), (uid, r.status_code, r.text[:300])
        assert_json_error(r, r.status_code)
        assert "root:" not in r.text
    assert fuzzer.count() == before


POST_ROUTES = [
    "api/environments",
    "api/environments/{sentinel}/rebuild",
    "api/environments/{sentinel}/rollback",
    "api/servers",
]


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("size", [2 * 1024 * 1024, 8 * 1024 * 1024])
def test_huge_bodies_are_413(fuzzer, sentinel, route, size):
    before = fuzzer.count()
    if route == "api/environments":
        # It takes an archive of max_archive_size in base64 (bodylimit.body_limit).
        size += 8 * 1024 * 1024
    body = b'{"repo": "' + b"a" * size + b'"}'
    r = fuzzer.request(
        "POST", route.format(sentinel=sentinel), data=body, headers={"Content-Type": "application/json"}
    )
    assert_json_error(r, 413)
    assert fuzzer.count() == before


@pytest.mark.parametrize("direct", [False, True], ids=["proxy", "direct"])
def test_huge_chunked_body_is_413(fuzzer, direct):
    """Without a Content-Length, the limit applies as the body comes."""
    before = fuzzer.count()

    def chunks():
        yield b'{"repo": "'
        # 12 MiB: over what POST api/environments takes (an archive of
        # max_archive_size in base64: bodylimit.body_limit)
        for _ in range(192):
            yield b"a" * 65536
        yield b'"}'

    r = fuzzer.request(
        "POST", "api/environments", direct=direct, data=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert_json_error(r, 413)
    assert fuzzer.count() == before


BAD_BODIES = [
    (b'{"repo": "\xff\xfe"}', "UTF-8"),
    (b"\xc3\x28", "UTF-8"),
    (b'{"repo": ', "JSON"),
    (b"[]", "object"),
    (b'"text"', "object"),
    (b"null", "object"),
    (b"[" * 100_000, None),  # deeper than the JSON parser goes
    (b'{"cpu": 1' + b"0" * 5000 + b"}", None),  # more digits than Python converts
    (b'{"repo": "\\ud800"}', None),  # a lone surrogate
]


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("body, says", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_malformed_bodies_are_400(fuzzer, sentinel, route, body, says):
    before = fuzzer.count()
    r = fuzzer.request(
        "POST", route.format(sentinel=sentinel), data=body, headers={"Content-Type": "application/json"}
    )
    assert_json_error(r, 400, says)
    assert fuzzer.count() == before


INJECTIONS = ["a\r\nSet-Cookie: x=1", "a\nSet-Cookie: x=1", "a\rLocation: http://evil.example"]


@pytest.mark.parametrize("text", INJECTIONS)
def test_header_injection_in_names(fuzzer, sentinel, text):
    before = fuzzer.count()
    answers = [
        fuzzer.request("POST", "api/environments", json={"repo": LOOPBACK_REPO, "name": text}),
        fuzzer.request("POST", "api/environments", json={"repo": LOOPBACK_REPO, "ref": text}),
        fuzzer.request("POST", "api/environments", json={"repo": LOOPBACK_REPO + text}),
        fuzzer.request("POST", "api/servers", json={"name": text, "environment": "x"}),
        fuzzer.request("DELETE", "api/servers/" + requests.utils.quote(text, safe="")),
        fuzzer.request("GET", f"api/environments/{sentinel}/logs", params={"last_event_id": text}),
    ]
    for r in answers:
        assert_json_error(r, 400)
    page = fuzzer.request(
        "GET", "servers", params={"name": text, "environment": "x"}, allow_redirects=False
    )
    for r in answers + [page]:
        assert "Location" not in r.headers or "evil" not in r.headers["Location"]
        for value in r.raw.headers.getlist("Set-Cookie"):
            assert not INJECTED_COOKIE.search(value), value
    assert fuzzer.count() == before


MARKUP = '<script>alert("{}")</script><img src=x onerror=alert(1)>'


async def test_markup_is_data_in_json_and_escaped_in_pages(fuzzer, admin):
    tag = uuid.uuid4().hex[:6]
    body = {
        "repo": f"{LOOPBACK_REPO}?<script>alert('repo')</script>",
        "ref": "<b>ref</b>",
        "name": MARKUP.format(tag),
        "buildargs": {"NOTE": MARKUP.format("arg")},
        "username": "<i>user</i>",
        "password": "<i>secret</i>",
    }
    env = await admin.create_env(body)
    fuzzer.created.append(env["uid"])
    env = await admin.wait_env(env["uid"], {"failed"}, timeout=120)
    for field in ("repo", "ref", "name"):
        assert env[field] == body[field], field
    assert env["build_args"] == body["buildargs"]
    assert "secret" not in json.dumps(env)

    r = await admin.api("GET", "environments")
    assert r.status_code == 200
    page = r.text
    for raw in (body["name"], "<script>alert(", "<img src=x", "<b>ref</b>", "<i>user</i>"):
        assert raw not in page, raw
    island = re.search(
        r'<script type="application/json" id="environments-data">(.*?)</script>', page, re.S
    ).group(1)
    shown = {e["uid"]: e for e in json.loads(island)}[env["uid"]]
    assert shown["name"] == body["name"] and shown["repo"] == body["repo"]
    assert "\\u003cscript\\u003e" in island or "&lt;script&gt;" in page

    # An error page that echoes input escapes it too.
    r = await admin.client.get(
        admin.service_path("servers"), params={"name": "<script>x</script>", "environment": "y"}
    )
    assert "<script>x</script>" not in r.text
    assert "&lt;script&gt;x&lt;/script&gt;" in r.text or "\\u003cscript" in r.text

    async with httpx.AsyncClient() as client:
        r = await client.get(f"{fuzzer.base_url}/api/environments", headers=fuzzer.headers)
    listed = {e["uid"]: e for e in r.json()["environments"]}
    assert listed[env["uid"]]["name"] == body["name"]


# -- the push webhook: the route open without a hub login -----------------------

WEBHOOK_REFUSED = {"status": 403, "message": "Forbidden"}


def _assert_webhook_answer(r, where=""):
    """Refused (403, always the same body) or rate limited (429), never more."""
    assert r.status_code in (403, 429), (where, r.status_code, r.text[:300])
    assert "Set-Cookie" not in r.headers, where
    assert "Location" not in r.headers, where
    if r.status_code == 403:
        assert r.json() == WEBHOOK_REFUSED, where
    else:
        assert_json_error(r, 429)
        assert int(r.headers["Retry-After"]) >= 1


def test_webhook_traversals_and_bad_bodies_are_refused_alike(fuzzer, sentinel):
    before = fuzzer.count()
    for uid in [*TRAVERSALS, sentinel]:
        for body, _ in BAD_BODIES:
            r = fuzzer.request(
                "POST", f"api/environments/{uid}/webhook", data=body,
                headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64,
                         # each its own address: the rate limit is tested elsewhere
                         "X-Forwarded-For": f"10.0.{len(body) % 250}.{abs(hash(uid)) % 250}"},
            )
            if r.status_code == 404:
                # the path was normalised into another route (``..``, ``/``)
                assert "No API endpoint" in assert_json_error(r, 404)["message"], uid
                continue
            # through the proxy all come from one address: 429 once it is spent
            _assert_webhook_answer(r, uid)
    for uid in NOT_UTF8:  # the path cannot be decoded: 400 before any check
        r = fuzzer.request("POST", f"api/environments/{uid}/webhook", direct=True, data=b"{}")
        assert r.status_code in (400, 403, 429), r.text
        assert_json_error(r, r.status_code)
    assert fuzzer.count() == before


@pytest.mark.parametrize("size", [2 * 1024 * 1024])
def test_webhook_huge_body_is_413(fuzzer, sentinel, size):
    r = fuzzer.request(
        "POST", f"api/environments/{sentinel}/webhook", data=b"{" + b" " * size + b"}",
        headers={"X-GitHub-Event": "push", "Content-Type": "application/json"},
    )
    assert_json_error(r, 413)
    assert "Set-Cookie" not in r.headers


HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300
)


def test_generated_webhook_calls_are_refused(fuzzer):
    """Generated signatures, tokens, events and bodies, sent to the service
    directly from generated addresses (so that the rate limit does not hide
    the checks): always the same 403, nothing changed, nothing queued."""
    before = fuzzer.count()

    @settings(max_examples=min(EXAMPLES, 150), deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(
        uid=st.one_of(st.just(fuzzer.created[0]), st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)),
        signature=st.one_of(st.none(), HEADER_TEXT, HEADER_TEXT.map(lambda t: "sha256=" + t)),
        token=st.one_of(st.none(), HEADER_TEXT),
        event=st.one_of(st.none(), st.sampled_from(["push", "ping", "Push Hook", "Tag Push Hook"]), HEADER_TEXT),
        body=st.one_of(st.binary(max_size=2000), st.builds(
            lambda ref, after: json.dumps({"ref": ref, "after": after}).encode(),
            st.text(max_size=50), st.text(max_size=50),
        )),
        address=st.integers(min_value=1, max_value=2**24),
    )
    def run(uid, signature, token, event, body, address):
        headers = {"X-Forwarded-For": f"10.{address >> 16}.{(address >> 8) & 255}.{address & 255}"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        if token is not None:
            headers["X-Gitlab-Token"] = token
        if event is not None:
            headers["X-GitHub-Event"] = headers["X-Gitlab-Event"] = event
        try:
            r = fuzzer.request(
                "POST", f"api/environments/{uid}/webhook", direct=True, data=body, headers=headers
            )
        except requests.exceptions.InvalidHeader:
            reject()
        _assert_webhook_answer(r, (uid, headers))

    run()
    assert fuzzer.count() == before


# -- archives: what is inside them ------------------------------------------------

#: Generated archives per run (tests/helpers/archives.py says what is in them).
ARCHIVES = int(os.environ.get("FUZZ_ARCHIVES", "300"))
#: Archive ``i`` of a run is ``archives.generate(i, limits, ARCHIVE_SEED)``, made alone.
ARCHIVE_SEED = 23
#: One refused archive in this many is sent to PATCH of a files environment too.
PATCH_EVERY = 4


@pytest.fixture(scope="module")
def files_env(fuzzer):
    """An environment from files, for PATCH: its one build fails at once
    (its Dockerfile is not one)."""
    r = fuzzer.request(
        "POST", "api/environments",
        json={"files": {"Dockerfile": "not a Dockerfile\n"},
              "name": f"hostile-files-{uuid.uuid4().hex[:8]}"},
    )
    assert r.status_code == 202, r.text
    uid = r.json()["uid"]
    fuzzer.created.append(uid)
    fuzzer.wait_done(uid)
    return uid


def _archive_answer(r, verdict, where):
    """Check the answer to one generated archive against what it must be:
    400 naming ``archive`` or ``files`` when a member breaks a rule; 409
    naming ``name`` (the sentinel's, taken) when every member passes.
    Returns ``(status, field)``."""
    where = f"{where} -> {r.status_code}: {r.text[:500]}"
    assert r.status_code < 500, where
    body = assert_json_error(r, r.status_code)
    if r.status_code == 409:
        field = body["message"].split(":", 1)[0]
        assert field == "name", where
        assert verdict != archives.REFUSED, f"a refused archive passed the checks: {where}"
    else:
        field = body.get("field")
        assert r.status_code == 400 and field in ("archive", "files"), where
        assert verdict != archives.CLEAN, f"a valid archive was refused: {where}"
    return r.status_code, field


def test_generated_archives_are_refused_naming_the_field_or_pass_whole(fuzzer, files_env):
    """Archives with hostile insides (tests/helpers/archives.py), sent as
    ``archive`` to ``POST api/environments`` with the sentinel's name, and
    one refused archive in PATCH_EVERY to PATCH of a files environment: each
    is refused naming the field, or passes every check of its members and
    meets the name taken (409, nothing built). Nothing is ever stored."""
    limits = archives.Limits.defaults(TljhRepo2Docker)  # the test hub sets none
    for uid in fuzzer.created:  # builds of earlier tests would change the list
        fuzzer.wait_done(uid)
    listed = fuzzer.request("GET", "api/environments").json()["environments"]
    patched = fuzzer.request("GET", f"api/environments/{files_env}").json()
    count = fuzzer.count()
    answers = collections.Counter()
    try:
        for index in range(ARCHIVES):
            archive = archives.generate(index, limits, ARCHIVE_SEED)
            packed = archive.pack()
            verdict = archive.verdict(packed, limits)
            text = base64.b64encode(packed).decode("ascii")
            where = (
                f"archives.generate({index}, limits, {ARCHIVE_SEED}) ({verdict}):\n"
                f"{archive.describe()}\n"
            )
            r = fuzzer.request(
                "POST", "api/environments", json={"name": fuzzer.sentinel_name, "archive": text}
            )
            answers["POST", *_archive_answer(r, verdict, "POST " + where)] += 1
            assert fuzzer.count() == count, f"stored: {where}"
            if verdict == archives.REFUSED and index % PATCH_EVERY == 0:
                r = fuzzer.request("PATCH", f"api/environments/{files_env}", json={"archive": text})
                answers["PATCH", *_archive_answer(r, verdict, "PATCH " + where)] += 1
    finally:
        shown = {f"{method} {status} ({field})": n for (method, status, field), n in sorted(answers.items())}
        figure(f"generated archives: {ARCHIVES}, answers: {shown}")
    assert fuzzer.count() == count
    assert fuzzer.request("GET", "api/environments").json()["environments"] == listed
    assert fuzzer.request("GET", f"api/environments/{files_env}").json() == patched
