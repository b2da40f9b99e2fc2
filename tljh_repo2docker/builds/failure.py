"""Why a build failed, in the words of its log: one rule for every backend.

repo2docker (in its container, or run by BinderHub) ends a failed build with
a summary that rarely says why: an exit code, or the whole ``docker buildx
build …`` command line. The line a person can act on came earlier in the log
("ERROR: failed to solve: … exit code: 3", "fatal: repository … not found").
"""

import re

#: Log lines kept to explain a failure.
TAIL_LINES = 50
#: Longest reason kept from one log line.
MAX_REASON = 500

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The first pattern that matches any line wins; the last such line is taken.
_ERROR_RES = (
    re.compile(r"^(?:#\d+ )?(?:ERROR|error|fatal)\b"),
    re.compile(r"error|fatal|failed", re.IGNORECASE),
)
_NO_SPACE_RE = re.compile(r"no space left on device", re.IGNORECASE)


def strip_ansi(text):
    return _ANSI_RE.sub("", text)


def describe(summary, lines):
    """``summary`` with the line of ``lines`` (the end of the log) that says why.

    Running out of disk space is said first, whatever else failed after it;
    else the last line that starts like an error, else the last one that
    mentions one, else the last line.
    """
    lines = [strip_ansi(line).strip() for line in lines]
    lines = [line for line in lines if line]
    full = next((line for line in reversed(lines) if _NO_SPACE_RE.search(line)), None)
    if full is not None:
        # git, the build tools and the engine all say it this way (ENOSPC).
        return (
            "The build ran out of disk space (no space left on device): free space or "
            f"give builds more, then rebuild. {summary}: {full[:MAX_REASON]}"
        )
    reason = None
    for pattern in _ERROR_RES:
        reason = next((line for line in reversed(lines) if pattern.search(line)), None)
        if reason:
            break
    if reason is None and lines:
        reason = lines[-1]
    return f"{summary}: {reason[:MAX_REASON]}" if reason else summary
