"""Why a build failed, in the words of its log: one rule for every backend.

repo2docker (in its container, or run by BinderHub) ends a failed build with
a summary that rarely says why: an exit code, or the whole ``docker buildx
build …`` command line. The line a person can act on came earlier in the log
("ERROR: failed to solve: … exit code: 3", "fatal: repository … not found").

For the common causes (an unreachable or unknown git host, a ref or a
repository that does not exist, refused credentials, a dependency pip or
conda cannot find or fit, a full disk, too little memory, a download that
timed out, a base image that cannot be pulled) :func:`explain` says it in one
plain sentence; :func:`describe` puts the backend's summary after it. Any
other failure keeps the log line that says why. Credentials in URLs never
reach the message.
"""

import re
from urllib.parse import unquote, urlsplit

#: Log lines kept to explain a failure. repo2docker's own traceback takes
#: about 30 of them after BuildKit's summary of the failed step.
TAIL_LINES = 120
#: Longest reason kept from one log line.
MAX_REASON = 500

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The first pattern that matches any line wins; the last such line is taken.
_ERROR_RES = (
    re.compile(r"^(?:#\d+ )?(?:ERROR|error|fatal)\b"),
    re.compile(r"error|fatal|failed", re.IGNORECASE),
)
_NO_SPACE_RE = re.compile(r"no space left on device", re.IGNORECASE)

# repo2docker logs some messages without a line end, so that the traceback
# that follows starts on the same line: "Failed to check out ref xTraceback …".
_GLUED_TRACEBACK_RE = re.compile(r"(?<=\S)(?=Traceback \(most recent call last\):)")
#: What BuildKit puts before a line of a step's output ("#7 0.465 "), and
#: before the same line repeated in its summary of the failed step ("0.465 ").
_BUILDKIT_PREFIX_RE = re.compile(r"^(?:#\d+ )?\d+\.\d+ ")
#: The user and password (or token) part of a URL.
_USERINFO_RE = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@", re.IGNORECASE)


def strip_ansi(text):
    return _ANSI_RE.sub("", text)


def redact(text):
    """``text`` without the credentials in its URLs: ``https://u:p@h`` → ``https://h``."""
    return _USERINFO_RE.sub(r"\1", text)


def split_lines(lines):
    """Clean log lines: no ANSI codes, no blank lines, a glued traceback on its own line."""
    result = []
    for line in lines:
        for part in _GLUED_TRACEBACK_RE.split(strip_ansi(line)):
            part = part.strip()
            if part:
                result.append(part)
    return result


def describe(summary, lines):
    """``summary`` with the line of ``lines`` (the end of the log) that says why.

    Running out of disk space is said first, whatever else failed after it;
    then a cause :func:`explain` recognises, in one sentence before
    ``summary``; else the last line that starts like an error, else the last
    one that mentions one, else the last line.
    """
    lines = split_lines(lines)
    full = next((line for line in reversed(lines) if _NO_SPACE_RE.search(line)), None)
    if full is not None:
        # git, the build tools and the engine all say it this way (ENOSPC).
        return redact(
            "The build ran out of disk space (no space left on device): free space or "
            f"give builds more, then rebuild. {summary}: {full[:MAX_REASON]}"
        )
    sentence = explain(lines, summary)
    if sentence:
        return redact(f"{sentence} ({summary})")
    reason = None
    for pattern in _ERROR_RES:
        reason = next((line for line in reversed(lines) if pattern.search(line)), None)
        if reason:
            break
    if reason is None and lines:
        reason = lines[-1]
    return redact(f"{summary}: {reason[:MAX_REASON]}" if reason else summary)


def explain(lines, summary=""):
    """One plain sentence for the cause of the failure told by ``lines``, or None.

    ``lines``: the end of the build log (as :func:`split_lines` cleans them,
    or raw). ``summary``: the backend's verdict ("repo2docker exited with
    code 137"), read for the exit code only.
    """
    lines = split_lines(lines)
    # What a step of a Dockerfile printed reads the same as repo2docker's own lines.
    plain = [_BUILDKIT_PREFIX_RE.sub("", line) for line in lines]
    sentence = _binderhub_ref(plain, summary) or _first_rule(plain, summary)
    return redact(sentence) if sentence else None


def _first_rule(lines, summary, repo=None):
    for rule in _RULES:
        sentence = rule(lines, _Context(summary, repo))
        if sentence:
            return sentence
    return None


# -- the rules, most specific first ---------------------------------------------


def _last(lines, pattern):
    """The last match of ``pattern`` in ``lines``, or None."""
    for line in reversed(lines):
        match = pattern.search(line)
        if match:
            return match
    return None


def _host(url):
    """``host:port`` (or ``host``) of a URL or of git's ``user@host:path``, without credentials."""
    url = url.strip().strip("'\"")
    if "://" not in url:
        scp = re.match(r"^(?:[^@/\s]+@)?([^:/\s]+):", url)
        return scp.group(1) if scp else url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return redact(url)
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


class _Context:
    """What a rule knows besides the lines: the backend's summary, maybe the repository URL."""

    def __init__(self, summary, repo=None):
        self.summary = summary or ""
        self.repo = repo


def _repo_url(lines, context):
    """The repository URL repo2docker names when the clone failed (or the context's), or None."""
    match = _last(lines, _CLONE_FAILED_RE)
    return match.group(1) if match else context.repo


# repo2docker: "Failed to clone repository from <url> (ref <ref>)."
_CLONE_FAILED_RE = re.compile(r"Failed to clone repository from (\S+) \(ref ")


_BAD_REF_RES = (
    # repo2docker (its log line, and the ValueError at the end of its traceback)
    re.compile(r"Failed to check out ref (\S+)"),
    re.compile(r"Failed to check out the '([^']+)' branch"),
    # git itself
    re.compile(r"fatal: couldn't find remote ref (\S+)"),
    re.compile(r"fatal: Remote branch (\S+) not found in upstream"),
    re.compile(r"error: pathspec '([^']+)' did not match any file"),
)


def _bad_ref(lines, context):
    for pattern in _BAD_REF_RES:
        match = _last(lines, pattern)
        if match:
            ref = match.group(1).rstrip(".,:")
            return f"The ref '{ref}' does not exist in the repository."
    return None


_AUTH_FAILED_RE = re.compile(r"fatal: Authentication failed for '([^']+)'")
_NO_USERNAME_RE = re.compile(r"fatal: could not read (?:Username|Password) for '([^']+)'")
_HTTP_403_RE = re.compile(
    r"fatal: unable to access '([^']+)': The requested URL returned error: 403"
)
_SSH_DENIED_RE = re.compile(r"(?:^|\s)(?:\S+@)?([\w.-]+): Permission denied \(publickey")


def _authentication(lines, context):
    match = _last(lines, _AUTH_FAILED_RE)
    if match:
        return (
            f"The git host {_host(match.group(1))} refused the credentials: "
            "check the username and the password or token."
        )
    match = _last(lines, _HTTP_403_RE)
    if match:
        return f"The git host {_host(match.group(1))} refused access to the repository (HTTP 403)."
    match = _last(lines, _NO_USERNAME_RE)
    if match:
        return (
            f"The git host {_host(match.group(1))} asked for credentials: "
            "the repository is private or does not exist."
        )
    match = _last(lines, _SSH_DENIED_RE)
    if match:
        host = match.group(1)
        return f"The git host {host} refused access over SSH: use an https:// URL instead."
    return None


_REPO_NOT_FOUND_RES = (
    re.compile(r"fatal: repository '([^']+)' not found"),
    re.compile(r"fatal: '([^']+)' does not appear to be a git repository"),
)
_REMOTE_NOT_FOUND_RE = re.compile(r"(?:remote: |ERROR: )Repository not found", re.IGNORECASE)


def _repository_not_found(lines, context):
    for pattern in _REPO_NOT_FOUND_RES:
        match = _last(lines, pattern)
        if match:
            url = match.group(1).rstrip("/")
            return f"The repository {url} was not found: check its URL."
    if _last(lines, _REMOTE_NOT_FOUND_RE):
        url = _repo_url(lines, context)
        named = f" {url}" if url else ""
        return f"The repository{named} was not found: check its URL."
    return None


_RESOLVE_RES = (
    re.compile(r"Could not resolve host: ([^\s']+)"),
    re.compile(r"ssh: Could not resolve hostname ([^\s:]+)"),
)
_TIMED_OUT_GIT_RES = (
    re.compile(
        r"fatal: unable to access '([^']+)':.*(?:timed out|Timeout was reached)", re.IGNORECASE
    ),
    re.compile(r"ssh: connect to host (\S+) port (\d+): Connection timed out"),
)
_UNREACHABLE_RES = (
    # git:// ("fatal: unable to connect to 127.0.0.1:" then "…errno=Connection refused")
    re.compile(r"fatal: unable to connect to ([^\s:]+)"),
    # http(s):// (curl's words vary with its version)
    re.compile(
        r"fatal: unable to access '([^']+)': "
        r"(?:Failed to connect|Could not connect|Couldn't connect)"
    ),
    re.compile(r"ssh: connect to host (\S+) port (\d+): "),
)


def _git_host(lines, match, context):
    """The host a git match names: the repository URL's when repo2docker gave it (with its port)."""
    url = _repo_url(lines, context)
    if url:
        return _host(url)
    if match.lastindex and match.lastindex >= 2:
        return f"{match.group(1)}:{match.group(2)}"
    return _host(match.group(1))


def _unreachable_git_host(lines, context):
    for pattern in _RESOLVE_RES:
        match = _last(lines, pattern)
        if match:
            return f"The git host {match.group(1)} could not be found: check the repository URL."
    for pattern in _TIMED_OUT_GIT_RES:
        match = _last(lines, pattern)
        if match:
            host = _git_host(lines, match, context)
            return f"The git host {host} did not answer in time: try again later."
    for pattern in _UNREACHABLE_RES:
        match = _last(lines, pattern)
        if match:
            return f"The git host {_git_host(lines, match, context)} could not be reached."
    return None


# BuildKit names the base image in a step ("#3 [internal] load metadata for
# docker.io/library/buildpack-deps:24.04", "#4 [1/2] FROM docker.io/…@sha256:…"),
# and that step's error on a line with the same number ("#3 ERROR: …").
_IMAGE_STEP_RE = re.compile(r"^#(\d+) (?:\[internal\] load metadata for|\[[^\]]*\] FROM) (\S+)")
_STEP_ERROR_RE = re.compile(r"^#(\d+) ERROR: (.*)")
_IMAGE_MISSING_RE = re.compile(r"manifest unknown|: not found|pull access denied", re.IGNORECASE)
_UNREACHABLE_REGISTRY_RE = re.compile(
    r"no such host|dial tcp|i/o timeout|connection refused|TLS handshake timeout", re.IGNORECASE
)


def _base_image(lines, context):
    images = {}
    for line in lines:
        match = _IMAGE_STEP_RE.match(line)
        if match:
            images[match.group(1)] = match.group(2).partition("@")[0]
    for line in reversed(lines):
        match = _STEP_ERROR_RE.match(line)
        if match and match.group(1) in images:
            image = images[match.group(1)]
            said = match.group(2)
            if _IMAGE_MISSING_RE.search(said):
                return (
                    f"The base image {image} does not exist in its registry, or may not be pulled."
                )
            if _UNREACHABLE_REGISTRY_RE.search(said):
                return (
                    f"The base image {image} could not be downloaded: "
                    "its registry could not be reached."
                )
            return f"The base image {image} could not be downloaded from its registry."
    return None


_PIP_NO_MATCH_RE = re.compile(r"ERROR: No matching distribution found for (\S+)")
_PIP_OFFLINE_RE = re.compile(
    r"Retrying \(Retry\(.*(?:NewConnectionError|ConnectTimeoutError|ProxyError|"
    r"Temporary failure in name resolution|Name or service not known)"
)
_PIP_CONFLICT_RE = re.compile(
    r"ERROR: Cannot install (.+?) because these package versions have conflicting"
)
_PIP_DEPENDS_RE = re.compile(r"^\s*(\S+ \S+ depends on .+)$")
_PIP_IMPOSSIBLE_RE = re.compile(r"\bResolutionImpossible\b")
_REQUIREMENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def _pip(lines, context):
    match = _last(lines, _PIP_NO_MATCH_RE)
    if match:
        spec = match.group(1)
        name_match = _REQUIREMENT_NAME_RE.match(spec)
        name = name_match.group(0) if name_match else spec
        if _last(lines, _PIP_OFFLINE_RE):
            return f"pip could not reach the package index to download '{name}'."
        if spec != name:
            return (
                f"pip could not find a version of '{name}' that satisfies the requirement '{spec}'."
            )
        return f"pip could not find a version of '{name}' that satisfies the requirement."
    conflict = _last(lines, _PIP_CONFLICT_RE)
    if conflict:
        depends = _last(lines, _PIP_DEPENDS_RE)
        why = f" ({depends.group(1)})" if depends else ""
        return (
            f"pip could not install {conflict.group(1)} together: "
            f"their dependencies conflict{why}."
        )
    if _last(lines, _PIP_IMPOSSIBLE_RE):
        return "pip could not find versions of the requirements that work together."
    return None


_CONDA_MISSING_RES = (
    # micromamba and mamba 1.x/2.x
    re.compile(r"^[└├│─\s]*(\S+)\s.*does not exist \(perhaps a typo or a missing channel\)"),
    # older mamba
    re.compile(r"nothing provides requested (\S+)"),
)
_CONDA_NOT_FOUND_RE = re.compile(r"PackagesNotFoundError")
_CONDA_UNSATISFIABLE_RE = re.compile(
    r"UnsatisfiableError|The following packages are incompatible"
    r"|Could not solve for environment specs"
)


def _conda_packages_not_found(lines):
    """The packages conda lists after PackagesNotFoundError ("  - name")."""
    start = max(i for i, line in enumerate(lines) if _CONDA_NOT_FOUND_RE.search(line))
    names = []
    for line in lines[start + 1 :]:
        item = re.match(r"^-\s+(\S+)$", line)
        if not item:
            if names:
                break
            continue
        names.append(item.group(1))
    return names


def _conda(lines, context):
    names = []
    for pattern in _CONDA_MISSING_RES:
        for line in lines:
            match = pattern.search(line)
            if match and match.group(1).rstrip("*") not in names:
                names.append(match.group(1).rstrip("*"))
        if names:
            break
    if not names and _last(lines, _CONDA_NOT_FOUND_RE):
        names = _conda_packages_not_found(lines)
    if names:
        quoted = ", ".join(f"'{name}'" for name in names)
        what = "package" if len(names) == 1 else "packages"
        return f"conda could not find the {what} {quoted} in the channels of environment.yml."
    if _last(lines, _CONDA_NOT_FOUND_RE):
        return "conda could not find some packages of environment.yml in its channels."
    if _last(lines, _CONDA_UNSATISFIABLE_RE):
        return (
            "conda could not find versions of the packages in environment.yml that work together."
        )
    return None


_OOM_RE = re.compile(
    r"\bMemoryError\b|\bout of memory\b|\bOOMKilled\b|Cannot allocate memory|std::bad_alloc",
    re.IGNORECASE,
)
# sh says "Killed" alone, bash "line 1:     7 Killed   python3 …"; BuildKit the exit code.
_KILLED_RE = re.compile(r"^Killed\s*$|\b\d+ Killed\s|exit code: 137\b")
_EXIT_137_RE = re.compile(r"\bcode:? 137\b")


def _memory(lines, context):
    if _last(lines, _OOM_RE):
        return (
            "The build ran out of memory: give the build machine more memory, "
            "or install fewer or smaller packages, then rebuild."
        )
    if _last(lines, _KILLED_RE) or _EXIT_137_RE.search(context.summary):
        return (
            "The build was killed, most likely because it ran out of memory: give the build "
            "machine more memory, or install fewer or smaller packages, then rebuild."
        )
    return None


_DOWNLOAD_TIMEOUT_RES = (
    # pip / urllib3: "HTTPSConnectionPool(host='files.pythonhosted.org', port=443): Read timed out."
    re.compile(r"HTTPS?ConnectionPool\(host='([^']+)'.*(?:timed out|Timeout)", re.IGNORECASE),
    # curl, conda, apt and the like
    re.compile(
        r"(?:Failed to connect to|Could not connect to|connecting to) ([\w.-]+)\b.*timed out",
        re.IGNORECASE,
    ),
)


def _timeout(lines, context):
    # pip's warnings of a retry are not its failure.
    lines = [line for line in lines if "Retrying (Retry(" not in line]
    for pattern in _DOWNLOAD_TIMEOUT_RES:
        match = _last(lines, pattern)
        if match:
            return f"Downloading from {match.group(1)} timed out: try again later."
    return None


# BinderHub resolves the ref itself (git ls-remote) before it builds, and says
# "Error resolving ref for git:<quoted URL>/<ref>: Unable to run git ls-remote …: fatal: …".
_BINDERHUB_REF_RE = re.compile(r"^Error resolving ref for (\S+?): (.*)$")


def _binderhub_ref(lines, summary):
    for index in range(len(lines) - 1, -1, -1):
        match = _BINDERHUB_REF_RE.match(lines[index])
        if match:
            break
    else:
        return None
    provider, _, spec = match.group(1).partition(":")
    repo = unquote(spec).rpartition("/")[0] if provider == "git" else None
    detail = [match.group(2).rpartition("`: ")[2], *lines[index + 1 :]]
    sentence = _first_rule(detail, summary, repo)
    if not sentence:
        return None
    if sentence.startswith("The "):
        sentence = "the " + sentence[len("The ") :]
    return f"Error resolving ref: {sentence}"


_RULES = (
    _bad_ref,
    _authentication,
    _repository_not_found,
    _unreachable_git_host,
    _base_image,
    _pip,
    _conda,
    _memory,
    _timeout,
)
