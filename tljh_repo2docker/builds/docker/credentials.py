"""Credentials for private repositories: kept off the command line, scrubbed from the log.

Credentials never reach the build container's command line, environment or
labels. They are written, as one git credential-store line (:func:`store_line`),
to a file inside the created (not yet started) container (:func:`tar` is
what is uploaded), and git is pointed at that file through ``GIT_CONFIG_*``
variables that hold only its path. Every line of the build's log is scrubbed
of them (:func:`secrets`, :func:`scrub`); after a restart of the service,
which never stores them, they are read back from that file to go on
scrubbing (:func:`read_back`).
"""

import io
import tarfile
import time
from urllib.parse import quote, unquote, urlsplit

import aiodocker
import aiohttp

#: Where the git credential store goes inside the build container.
CREDENTIALS_DIR = "/tmp"
CREDENTIALS_FILE = "tljh-r2d-git-credentials"
CREDENTIALS_PATH = f"{CREDENTIALS_DIR}/{CREDENTIALS_FILE}"


def split(repo):
    """``(url without user info, user, password)`` for an http(s) URL with user info."""
    parts = urlsplit(repo)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return repo, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = parts._replace(netloc=host).geturl()
    return clean, unquote(user) or None, unquote(password) or None


def secrets(username, password):
    """The strings that must never be shown, longest first."""
    found = set()
    if password:
        found.update({password, quote(password, safe="")})
        if username:
            found.update(
                {f"{username}:{password}", f"{quote(username, safe='')}:{quote(password, safe='')}"}
            )
    elif username:
        # A token given as the user name is the secret.
        found.update({username, quote(username, safe="")})
    return sorted(found, key=len, reverse=True)


def scrub(text, secrets):
    """``text`` with each of ``secrets`` (see :func:`secrets`) replaced by ``***``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def store_line(repo, username, password):
    """A git credential-store line for the scheme and host of ``repo``."""
    parts = urlsplit(repo)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("Credentials can only be used with http:// or https:// repository URLs")
    host = parts.netloc.rpartition("@")[2]
    user = quote(username or "", safe="")
    secret = quote(password or "", safe="")
    return f"{parts.scheme}://{user}:{secret}@{host}\n"


def tar(content):
    """A tar archive holding the credential store ``content``, readable by root only,
    to upload into :data:`CREDENTIALS_DIR`."""
    data = content.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(CREDENTIALS_FILE)
        info.size = len(data)
        info.mode = 0o600
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = int(time.time())
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def read_back(container):
    """The secrets stored in ``container``'s credential store (``[]`` without one).

    Defence in depth after a restart: the request's credentials are gone, so
    the log of a build re-attached to is scrubbed of these.
    """
    try:
        archive = await container.get_archive(CREDENTIALS_PATH)
        member = archive.extractfile(CREDENTIALS_FILE)
        text = member.read().decode() if member is not None else ""
    except (aiodocker.DockerError, aiohttp.ClientError, OSError, KeyError, tarfile.TarError):
        return []
    found = []
    for line in text.splitlines():
        parts = urlsplit(line.strip())
        if parts.password is not None or parts.username is not None:
            found += secrets(unquote(parts.username or ""), unquote(parts.password or ""))
    return found
