"""Server names: what users may type, and the slugs JupyterHub 6 gets for them."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tljh_repo2docker.handlers.base import FieldError
from tljh_repo2docker.handlers.servers import check_server_name, slug_for
from tljh_repo2docker.hub_client import parse_version

# JupyterHub 6's rule for a named server's name (jupyterhub.slugs.is_valid_safe_slug):
# 1-30 characters, lowercase ASCII letters, digits and single hyphens, starting
# with a letter and ending with a letter or digit.
HUB6_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")

user_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


def hub6_accepts(name):
    return len(name) <= 30 and bool(HUB6_NAME.match(name))


@settings(max_examples=3000, deadline=None)
@given(user_names)
def test_every_valid_name_gets_a_slug_jupyterhub_6_accepts(name):
    assert check_server_name(name) == name
    slug = slug_for(name)
    assert hub6_accepts(slug), (name, slug)
    assert slug_for(name) == slug  # stable: the same server every time


@settings(max_examples=3000, deadline=None)
@given(user_names, user_names)
def test_two_names_never_share_a_slug(a, b):
    if a != b:
        assert slug_for(a) != slug_for(b)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("analysis", "analysis"),
        ("data-lab", "data-lab"),
        ("a1", "a1"),
        ("Data.Lab", "data-lab-9e457c77"),
        ("___", None),
        ("1abc", None),
        ("a" * 31, None),
    ],
)
def test_slugs_are_the_name_when_possible_and_readable_otherwise(name, expected):
    slug = slug_for(name)
    assert hub6_accepts(slug)
    if expected:
        assert slug == expected
    else:
        assert slug != name and re.search(r"-[0-9a-f]{8}$", slug)


def test_jupyterhub_agrees_with_our_reading_of_its_rule():
    slugs = pytest.importorskip("jupyterhub.slugs", reason="JupyterHub 5 has no slug rule")
    for name in ["analysis", "Data.Lab", "1abc", "___", "a" * 63, "x_y", "a--b", "viaLogin"]:
        assert slugs.is_valid_safe_slug(slug_for(name)), name
    for bad in ["Data.Lab", "1abc", "a--b", "a" * 31, "x_y", "-a", "a-"]:
        assert not slugs.is_valid_safe_slug(bad) and not hub6_accepts(bad), bad


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "a b", "a" * 64, "é", None, 3])
def test_bad_names_are_refused_naming_the_field(bad):
    with pytest.raises(FieldError) as e:
        check_server_name(bad)
    assert e.value.field == "name"


@pytest.mark.parametrize(
    "text, version",
    [("6.1.1", (6, 1, 1)), ("5.0.0b1", (5, 0, 0)), ("5.4", (5, 4)), ("", (0,)), ("dev", (0,))],
)
def test_hub_versions_are_read_leniently(text, version):
    assert parse_version(text) == version
