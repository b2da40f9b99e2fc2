"""Parsing and validation of resource limits, machine profiles and node selectors.

Used both for the service's configuration (traitlets validators) and for the
values that admins send through the API, so that both give the same messages.
"""

import json
import math
import re

from .errors import FieldError

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1024**3, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class LimitError(FieldError, ValueError):
    """A value that cannot be used; the message is meant for the user.

    A :class:`~.errors.FieldError` (400 naming the field) where a request
    holds it; a ``ValueError`` where configuration does.
    """


def parse_memory(value, field="memory"):
    """Normalise a memory limit to a string like ``"512M"`` or ``"2G"``.

    Accepts ``512M``, ``2G``, ``1.5G``, ``2`` (a bare number is GB), ``512MB``.
    Returns None for an empty value.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise LimitError(field, f"{value!r} is not a memory size like 512M or 2G")
    if isinstance(value, (int, float)):
        value = repr(value)
    if not isinstance(value, str):
        raise LimitError(field, f"{value!r} is not a memory size like 512M or 2G")
    match = _MEMORY_RE.match(value)
    if not match:
        raise LimitError(field, f"{value!r} is not a memory size like 512M or 2G")
    number, unit = match.groups()
    unit = unit.upper() or "G"
    amount = float(number)
    if amount <= 0 or not math.isfinite(amount):
        raise LimitError(field, f"{value!r} must be more than zero")
    if amount * _UNITS[unit] < 6 * 1024**2:
        raise LimitError(field, f"{value!r} is below Docker's minimum of 6M")
    text = number.rstrip("0").rstrip(".") if "." in number else number
    return f"{text}{unit}"


def memory_bytes(value):
    """Bytes for a normalised memory string (``"2G"`` -> 2147483648)."""
    if value is None:
        return None
    match = _MEMORY_RE.match(str(value))
    if not match:
        raise LimitError("memory", f"{value!r} is not a memory size like 512M or 2G")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper() or "G"])


def parse_cpu(value, field="cpu"):
    """Normalise a CPU limit to a positive float, or None when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise LimitError(field, f"{value!r} is not a positive number")
    try:
        cpu = float(value)
    except (TypeError, ValueError):
        raise LimitError(field, f"{value!r} is not a positive number") from None
    if not math.isfinite(cpu) or cpu <= 0:
        raise LimitError(field, f"{value!r} is not a positive number")
    if cpu > 1024:
        raise LimitError(field, f"{value!r} is more CPUs than any machine has")
    return cpu


def parse_machine_profile(profile, field="machine_profiles"):
    """Check one profile ``{"label": "Small", "cpu": 2, "memory": 2}``.

    Returns a new dict with ``label`` (str), ``cpu`` (float or None) and
    ``memory`` (normalised string or None).
    """
    if isinstance(profile, str):
        try:
            profile = json.loads(profile)
        except json.JSONDecodeError as e:
            raise LimitError(field, f"not valid JSON ({e.msg})") from None
    if not isinstance(profile, dict):
        raise LimitError(field, "each profile must be a JSON object with a label")
    label = profile.get("label")
    if not isinstance(label, str) or not label.strip():
        raise LimitError(field, f"profile {json.dumps(profile)} has no label")
    unknown = set(profile) - {"label", "cpu", "memory"}
    if unknown:
        raise LimitError(
            field, f"profile {label!r} has unknown keys: {', '.join(sorted(unknown))}"
        )
    return {
        "label": label.strip(),
        "cpu": parse_cpu(profile.get("cpu"), field=f"{field} {label!r} cpu"),
        "memory": parse_memory(profile.get("memory"), field=f"{field} {label!r} memory"),
    }


def parse_node_selector_config(value, field="node_selector"):
    """Check the configured node selector choices.

    ``{"gpu": {"description": "GPU availability", "values": ["yes", "no"]}}``
    """
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise LimitError(field, f"not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise LimitError(field, "must be a JSON object of keys to choices")
    result = {}
    for key, spec in value.items():
        if not isinstance(spec, dict):
            raise LimitError(field, f"{key!r} must be an object with description and values")
        values = spec.get("values")
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise LimitError(field, f"{key!r} needs a non-empty list of string values")
        description = spec.get("description", key)
        if not isinstance(description, str):
            raise LimitError(field, f"{key!r} description must be a string")
        result[key] = {"description": description, "values": list(values)}
    return result


def parse_node_selector_choice(value, config, field="node_selector"):
    """Check an environment's node selector against the configured choices."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise LimitError(field, f"not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise LimitError(field, "must be an object of key to value")
    result = {}
    for key, choice in value.items():
        if choice in (None, ""):
            continue
        if key not in config:
            known = ", ".join(sorted(config)) or "none are configured"
            raise LimitError(field, f"unknown key {key!r} (known keys: {known})")
        if choice not in config[key]["values"]:
            allowed = ", ".join(config[key]["values"])
            raise LimitError(field, f"{key}={choice!r} is not one of: {allowed}")
        result[key] = choice
    return result
