"""The database of the published tljh-repo2docker 3.x, and its conversion.

3.x kept one table, ``images`` (uid, name, status, log, image_meta JSON), at
alembic revision ``ac1b4e7e52f3``. Its ``image_meta`` holds display_name,
repo, ref, creation_date (``dd/mm/YYYY``), owner, cpu_limit, mem_limit (GB,
as text), node_selector, buildargs and provider.

The conversion never changes or drops ``images``: after it, that table is
still there as 3.x left it, so going back to 3.x only needs its alembic
revision put back (see CHANGELOG.md). It runs in these steps:

1. our tables are made by our migrations while they record their revision in
   a version table of their own (``UPGRADE_VERSION_TABLE``), so that 3.x's
   revision stays in ``alembic_version`` until the very end;
2. every ``images`` row becomes an environment (same uid, image name kept as
   it is, without our prefix) with its log;
3. ``alembic_version`` gets our head revision, and the temporary version
   table is dropped.

On SQLite and PostgreSQL all of it is one transaction. MySQL/MariaDB commit
each table they create at once: if the service stops in the middle, 3.x's
revision is still the current one, and the next start drops the half-made
tables of ours and converts again. Either way a failure leaves 3.x's data
as it was.
"""

import json
import logging
from datetime import datetime, timezone

from sqlalchemy import inspect, text

from ..limits import LimitError, parse_cpu, parse_memory
from .models import Environment, LogLine

log = logging.getLogger(__name__)

#: The revision the published 3.x releases leave in ``alembic_version``.
REVISIONS_3X = {"ac1b4e7e52f3"}
#: Where our migrations record their revision while a 3.x database is converted.
UPGRADE_VERSION_TABLE = "tljh_repo2docker_upgrade_version"
#: Log lines kept per converted environment: the first and the last ones.
HEAD_LINES = 2000
TAIL_LINES = 8000

_COLUMNS_3X = {"uid", "name", "status", "log", "image_meta"}


class LegacyDatabaseError(Exception):
    """The 3.x database cannot be converted; the message says what to do."""


def is_3x(connection, revision):
    """Whether ``connection`` holds a 3.x database (its revision or its table)."""
    tables = set(inspect(connection).get_table_names())
    if "images" not in tables:
        return False
    if "environments" in tables and revision not in REVISIONS_3X:
        return False  # ours already (converted before), with 3.x's table kept
    columns = {c["name"] for c in inspect(connection).get_columns("images")}
    return _COLUMNS_3X <= columns


def read_rows(connection):
    """The ``images`` rows as dicts, in the order 3.x stored them."""
    result = connection.execute(text("SELECT uid, name, status, log, image_meta FROM images"))
    return [dict(row._mapping) for row in result]


def drop_partial_conversion(connection):
    """Remove what an interrupted conversion made (our tables only)."""
    tables = set(inspect(connection).get_table_names())
    for table in ("log_lines", "environments", UPGRADE_VERSION_TABLE):
        if table in tables:
            log.warning("Removing the table %s left by an interrupted conversion", table)
            connection.execute(text(f"DROP TABLE {table}"))


def convert_rows(connection, rows, now=None):
    """Insert the environments (and logs) that 3.x's ``rows`` describe."""
    now = now or datetime.now(timezone.utc)
    used_names = set()
    used_uids = set()
    for number, row in enumerate(rows, 1):
        fields, lines = environment_fields(row, now)
        if fields["uid"] in used_uids:
            fields["uid"] = _fresh_uid()
        used_uids.add(fields["uid"])
        fields["name"] = _unique(fields["name"], used_names)
        used_names.add(fields["name"].lower())
        events = _bounded(lines)
        fields["last_event_id"] = events[-1][0] if events else 0
        env_id = connection.execute(Environment.__table__.insert().values(**fields)).inserted_primary_key[0]
        if events:
            connection.execute(
                LogLine.__table__.insert(),
                [
                    {"environment_id": env_id, "event_id": i, "phase": "log", "message": m}
                    for i, m in events
                ],
            )
        log.info(
            "Converted 3.x image %s (%s) into environment %s: %s",
            row.get("name"), number, fields["uid"], fields["status"],
        )


def environment_fields(row, now):
    """``(columns of an environments row, log lines)`` for one 3.x ``images`` row."""
    meta = _json(row.get("image_meta"))
    image_name = (row.get("name") or "").strip()
    if not image_name:
        raise LegacyDatabaseError(f"a 3.x row (uid {row.get('uid')!r}) has no image name")
    repo_name, _, tag = image_name.rpartition(":")
    ref = str(meta.get("ref") or tag or "HEAD")
    status = (row.get("status") or "").strip().lower()
    error = None
    if status == "built":
        new_status = "built"
    elif status in ("building", "queued"):
        new_status = "failed"
        error = "The build was still running when tljh-repo2docker was upgraded: rebuild it"
    else:
        new_status = "failed"
        error = "The build had failed under tljh-repo2docker 3.x: rebuild it"
    created = _date(meta.get("creation_date")) or now
    lines = (row.get("log") or "").splitlines()
    fields = {
        "uid": (row.get("uid") or "").strip() or _fresh_uid(),
        "name": str(meta.get("display_name") or repo_name or image_name)[:255],
        "image_name": image_name,
        "image_id": None,  # filled in once the image is found on the engine
        "repo": str(meta.get("repo") or ""),
        "ref": ref,
        "provider": str(meta.get("provider") or "git"),
        "status": new_status,
        "memory": _memory(meta.get("mem_limit")),
        "cpu": _cpu(meta.get("cpu_limit")),
        "machine_profile": None,
        "node_selector": _node_selector(meta.get("node_selector")),
        "build_args": _build_args(meta.get("buildargs")),
        "private": False,
        "owner": str(meta["owner"]) if meta.get("owner") else None,
        "commit": None,
        "size": None,
        "error": error,
        "created": created,
        "queued": None,
        "started": None,
        "finished": created,
        "build_number": 1,
        "source_lines": len(lines),
    }
    return fields, lines


def _json(value):
    if isinstance(value, dict):
        return value
    try:
        value = json.loads(value or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _date(value):
    for fmt in ("%d/%m/%Y", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(str(value), fmt).replace(tzinfo=timezone.utc)
        except (TypeError, ValueError):
            continue
    return None


def _memory(value):
    try:
        return parse_memory(str(value) if value not in (None, "") else None)
    except LimitError:
        return None


def _cpu(value):
    try:
        return parse_cpu(value if value not in (None, "") else None)
    except LimitError:
        return None


def _node_selector(value):
    if isinstance(value, str):
        value = _json(value)
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _build_args(value):
    """3.x kept build args as ``KEY=VALUE`` lines (or a dict); ours are a dict."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    result = {}
    for line in str(value or "").splitlines():
        key, sep, val = line.strip().partition("=")
        if sep and key.strip():
            result[key.strip()] = val
    return result


def _bounded(lines):
    """``[(event_id, line)]``: every line, or the first and last ones of a very long log."""
    events = list(enumerate(lines, 1))
    if len(events) > HEAD_LINES + TAIL_LINES:
        events = events[:HEAD_LINES] + events[-TAIL_LINES:]
    return events


def _unique(name, used):
    candidate = name
    number = 2
    while candidate.lower() in used:
        suffix = f" ({number})"
        candidate = name[: 255 - len(suffix)] + suffix
        number += 1
    return candidate


def _fresh_uid():
    import uuid

    return uuid.uuid4().hex
