"""Bad input to POST api/environments: a 400 (or 404/409/413) that names the field, nothing stored."""

import pytest

from .helpers.utils import assert_json_error

pytestmark = [pytest.mark.hub, pytest.mark.docker]

GOOD_REPO = "https://git.example.invalid/owner/repo.git"

BAD = [
    ({}, "repo"),
    ({"repo": ""}, "repo"),
    ({"repo": "   "}, "repo"),
    ({"repo": 42}, "repo"),
    ({"repo": "not a url"}, "repo"),
    ({"repo": "ftp://example.org/repo.git"}, "repo"),
    ({"repo": "file:///etc"}, "repo"),
    ({"repo": "relative/path"}, "repo"),
    ({"repo": "https://"}, "repo"),
    ({"repo": "https://user:pw@example.org/r.git"}, "repo"),
    ({"repo": "https://exa\x07mple.org/r.git"}, "repo"),
    ({"repo": "https://example.org/my repo.git"}, "repo"),
    ({"repo": GOOD_REPO, "ref": "main branch"}, "ref"),
    ({"repo": GOOD_REPO, "ref": "ma\x01in"}, "ref"),
    ({"repo": GOOD_REPO, "ref": "a..b"}, "ref"),
    ({"repo": GOOD_REPO, "ref": "-rf"}, "ref"),
    ({"repo": GOOD_REPO, "name": "!!!"}, "name"),
    ({"repo": GOOD_REPO, "name": "x" * 200}, "name"),
    ({"repo": GOOD_REPO, "name": "line\nbreak"}, "name"),
    ({"repo": GOOD_REPO, "memory": "2X"}, "memory"),
    ({"repo": GOOD_REPO, "memory": "-1G"}, "memory"),
    ({"repo": GOOD_REPO, "memory": True}, "memory"),
    ({"repo": GOOD_REPO, "cpu": "0"}, "cpu"),
    ({"repo": GOOD_REPO, "cpu": "-2"}, "cpu"),
    ({"repo": GOOD_REPO, "cpu": "lots"}, "cpu"),
    ({"repo": GOOD_REPO, "machine_profile": "Huge"}, "machine_profile"),
    ({"repo": GOOD_REPO, "machine_profile": "Small", "memory": "1G"}, "machine_profile"),
    ({"repo": GOOD_REPO, "node_selector": {"gpu": "maybe"}}, "node_selector"),
    ({"repo": GOOD_REPO, "node_selector": {"disk": "ssd"}}, "node_selector"),
    ({"repo": GOOD_REPO, "node_selector": "not json"}, "node_selector"),
    ({"repo": GOOD_REPO, "buildargs": "NOEQUALS"}, "buildargs"),
    ({"repo": GOOD_REPO, "buildargs": "1BAD=x"}, "buildargs"),
    ({"repo": GOOD_REPO, "buildargs": {"KEY": ["list"]}}, "buildargs"),
    ({"repo": GOOD_REPO, "buildargs": [1, 2]}, "buildargs"),
    ({"repo": GOOD_REPO, "password": 123}, "password"),
    ({"repo": GOOD_REPO, "provider": "gh"}, "provider"),
    ({"repo": GOOD_REPO, "unknown_field": 1}, "unknown_field"),
]


async def _count(admin):
    r = await admin.api("GET", "api/environments")
    return len(r.json()["environments"])


@pytest.mark.parametrize("body, field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
async def test_bad_input_names_the_field_and_stores_nothing(admin, body, field):
    before = await _count(admin)
    r = await admin.api("POST", "api/environments", json=body)
    error = assert_json_error(r, 400)
    assert error["field"] == field, error
    assert field in error["message"], error
    assert await _count(admin) == before


async def test_unknown_uid_is_404(admin):
    for method, path in [
        ("GET", "api/environments/0123abc"),
        ("DELETE", "api/environments/0123abc"),
        ("POST", "api/environments/0123abc/rebuild"),
        ("POST", "api/environments/0123abc/cancel"),
        ("GET", "api/environments/0123abc/logs"),
        ("GET", "api/environments/..%2F..%2Fetc%2Fpasswd"),
    ]:
        r = await admin.api(method, path)
        assert_json_error(r, 404)


async def test_oversized_body_is_413(admin):
    before = await _count(admin)
    # Over what POST api/environments takes (enough for an archive of
    # max_archive_size in base64: bodylimit.body_limit), not only max_body_size.
    body = b'{"repo": "' + b"a" * (8 * 1024 * 1024) + b'"}'
    r = await admin.api("POST", "api/environments", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.status_code
    assert await _count(admin) == before
