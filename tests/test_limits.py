import pytest

from tljh_repo2docker.limits import (
    LimitError,
    memory_bytes,
    parse_cpu,
    parse_machine_profile,
    parse_memory,
    parse_node_selector_choice,
)


@pytest.mark.parametrize(
    "value, expected",
    [("512M", "512M"), ("2G", "2G"), ("2", "2G"), (2, "2G"), ("1.5G", "1.5G"), ("512MB", "512M"),
     ("8192k", "8192K"), ("", None), (None, None)],
)
def test_parse_memory(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["2X", "G", "-1G", "0", "1K", True, [], "2 G B"])
def test_parse_memory_rejects(value):
    with pytest.raises(LimitError) as e:
        parse_memory(value)
    assert e.value.field == "memory"


def test_memory_bytes():
    assert memory_bytes("512M") == 512 * 1024**2
    assert memory_bytes("2G") == 2 * 1024**3


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", True])
def test_parse_cpu_rejects(value):
    with pytest.raises(LimitError):
        parse_cpu(value)


def test_parse_cpu():
    assert parse_cpu("0.5") == 0.5
    assert parse_cpu(2) == 2.0
    assert parse_cpu("") is None


def test_machine_profile_unknown_key():
    with pytest.raises(LimitError, match="unknown keys"):
        parse_machine_profile({"label": "x", "gpus": 1})


def test_node_selector_choice():
    config = {"gpu": {"description": "GPU", "values": ["yes", "no"]}}
    assert parse_node_selector_choice({"gpu": "yes"}, config) == {"gpu": "yes"}
    assert parse_node_selector_choice({"gpu": ""}, config) == {}
    with pytest.raises(LimitError, match="not one of"):
        parse_node_selector_choice({"gpu": "maybe"}, config)
    with pytest.raises(LimitError, match="unknown key"):
        parse_node_selector_choice({"disk": "ssd"}, config)
