"""Telling "the database cannot be reached right now" from a bug.

The API answers the first with a 503, and the build manager keeps what it
must store in memory and tries again; a bug stays a 500 or is logged.
"""

import os
import traceback

from sqlalchemy import exc as sa_exc

_DB_CODE = (os.sep + "sqlalchemy" + os.sep, os.path.join("tljh_repo2docker", "db") + os.sep)

# SQLSTATEs of a server that is away: class 08 (connection exception), and
# 57P01-57P03 (shut down by an admin or a crash, starting up or shutting down).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08",)
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03"}


def database_unavailable(exc, tb=None):
    """Whether ``exc`` means the database cannot be reached (retry later), not a bug."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if _server_away(exc) or _server_away(getattr(exc, "orig", None)):
        return True
    if isinstance(exc, OSError):  # refused, reset, timed out: only when raised by the database layer
        tb = tb or exc.__traceback__
        return any(f.filename and any(p in f.filename for p in _DB_CODE)
                   for f in traceback.extract_tb(tb))
    return False


def _server_away(exc):
    sqlstate = getattr(exc, "sqlstate", None)
    if not isinstance(sqlstate, str):
        return False
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASSES) or sqlstate in _UNAVAILABLE_SQLSTATES
