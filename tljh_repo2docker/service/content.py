"""Content pulled at launch: a git repository cloned, or updated, into the
user's home when their server starts (``content``, ``content_ref``,
``urlpath`` of ``POST api/servers`` and of the Servers page's direct link).

The fields are checked here, by the service and again by the spawners
(anyone may send the hub ``user_options`` of their own), and turn into
``user_options["content"] = {"repo", "ref", "dir", "urlpath"}``
(see contract.py). How the repository is pulled is the spawners' part.
"""

import re
from urllib.parse import unquote, urlsplit

from ..errors import FieldError
from .fields import check_ref, check_repo, name_from_repo, text_field

#: The longest content URL, ref and urlpath (characters).
MAX_URL = 2048
MAX_REF = 255
MAX_URLPATH = 1024
#: The longest folder name made from a repository's name.
MAX_DIR = 100

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_DIR = re.compile(r"[^A-Za-z0-9._-]+")


def content_dir(repo):
    """The folder of the user's home a repository goes in: its name, made
    safe (letters, digits, ``.``, ``_`` and ``-``; never hidden, never
    ``..``), ``content`` when nothing is left of it."""
    name = _UNSAFE_DIR.sub("-", name_from_repo(repo)).strip(".-")[:MAX_DIR].strip(".-")
    return name or "content"


def check_urlpath(urlpath, field="urlpath"):
    """A path inside the server (``lab/tree/notebooks/intro.ipynb``), without
    its leading ``/``: no scheme, no host, no ``..``, no control characters."""
    if _CONTROL.search(urlpath) or "\\" in urlpath:
        raise FieldError(field, "must not contain control characters or backslashes")
    parts = urlsplit(urlpath)
    if parts.scheme or parts.netloc or urlpath.startswith("//"):
        raise FieldError(field, "must be a path inside the server, not a URL")
    path = parts.path
    for text in (path, unquote(path)):
        if ".." in text.split("/"):
            raise FieldError(field, "must not contain '..'")
    return urlpath.lstrip("/")


def parse_content(body):
    """``user_options["content"]`` from the fields ``content``, ``content_ref``
    and ``urlpath`` of ``body`` (a dict of strings), or None without
    ``content``. Raises FieldError naming the field."""
    repo = text_field(body, "content", default="", limit=MAX_URL)
    ref = text_field(body, "content_ref", default="", limit=MAX_REF)
    urlpath = text_field(body, "urlpath", default="", limit=MAX_URLPATH)
    if urlpath:
        urlpath = check_urlpath(urlpath)
    if not repo:
        if ref:
            raise FieldError("content_ref", "is only used with content (a git repository URL)")
        return None
    if repo.startswith("-"):
        raise FieldError("content", f"{repo!r} is not a repository URL")
    try:
        check_repo(repo)
    except FieldError as e:
        reason = e.reason
        if "credentials" in reason:
            reason = "must not contain credentials: content is pulled from public repositories"
        raise FieldError("content", reason) from None
    if ref:
        try:
            check_ref(ref)
        except FieldError as e:
            raise FieldError("content_ref", e.reason) from None
    folder = content_dir(repo)
    return {"repo": repo, "ref": ref, "dir": folder, "urlpath": urlpath or f"lab/tree/{folder}"}


def checked_content(options):
    """``user_options["content"]`` as the spawners take it: checked again as
    the service does, None when there is none. Raises FieldError."""
    content = options.get("content") if isinstance(options, dict) else None
    if not content:
        return None
    if not isinstance(content, dict):
        raise FieldError("content", "must be an object {repo, ref, dir, urlpath}")
    checked = parse_content(
        {"content": content.get("repo"), "content_ref": content.get("ref"),
         "urlpath": content.get("urlpath")}
    )
    if checked is None:
        raise FieldError("content", "names no repository")
    # dir always comes from the repository: a folder of the sender's choosing
    # could point anywhere in the home
    return checked
