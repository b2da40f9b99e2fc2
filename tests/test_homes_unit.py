"""Edge cases of the homes module and of the servers list's container matching, without a hub."""

import pytest
from dockerspawner import DockerSpawner

from tljh_repo2docker.handlers.servers import _escape, _reason
from tljh_repo2docker.service.engine import _iso, name_matches, valid_volume_name


@pytest.mark.parametrize("name", ["alice", "hs-dora", "Ünïcode", "a.b_c", "data-lab-9e457c77", "UPPER"])
def test_container_names_are_matched_with_dockerspawners_escaping(name):
    assert _escape(name) == DockerSpawner._escape(name)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-12-01T09:00:00Z", "2026-12-01T09:00:00+00:00"),
        ("2026-12-01T09:00:00.123456789Z", "2026-12-01T09:00:00+00:00"),
        ("2026-12-01T10:00:00+01:00", "2026-12-01T09:00:00+00:00"),
        ("not a date", "not a date"),
        ("", None),
        (None, None),
    ],
)
def test_volume_creation_times_become_utc_iso(value, expected):
    assert _iso(value) == expected


@pytest.mark.parametrize(
    "name, ok",
    [
        ("jupyterhub-user-alice", True),
        ("a", True),
        ("a" * 255, True),
        ("a" * 256, False),
        ("-a", False),
        (".a", False),
        ("a/b", False),
        ("a b", False),
        ("été", False),
        ("", False),
        (None, False),
    ],
)
def test_volume_names_follow_dockers_rule(name, ok):
    assert valid_volume_name(name) is ok


def test_hub_failure_messages_lose_their_prefix_only():
    assert _reason("Spawn failed: the image is gone") == "the image is gone"
    assert _reason("Spawn failed: ") == "Spawn failed:"
    assert _reason("Spawn cancelled") == "Spawn cancelled"
    assert _reason(None) is None and _reason("") is None


def test_no_engine_with_binderhub():
    from tljh_repo2docker.app import TljhRepo2Docker
    from tljh_repo2docker.builds.binderhub import BinderHubBuilder
    from tljh_repo2docker.service.engine import Homes

    app = TljhRepo2Docker()
    app.builder = BinderHubBuilder(parent=app, url="http://127.0.0.1:9/")
    homes = Homes.for_app(app)
    assert homes.available is False
    assert Homes.for_app(app) is homes


def test_container_names_match_whole_user_and_server_names():
    name = "tljh-r2d-test-hs-2ddora-at-2donce"
    assert name_matches(name, [_escape("hs-dora"), _escape("at-once")])
    assert not name_matches(name, [_escape("hs-dor"), _escape("at-once")])
    assert not name_matches("jupyter-bob--lab", ["bo", "lab"])
    assert name_matches("jupyter-bob--lab", ["bob", "lab"])
