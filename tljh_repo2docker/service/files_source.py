"""Environments built from files: checking them, unpacking uploaded archives, comparing them.

An environment of source ``"files"`` is built from ``{relative path: text}``
(``requirements.txt``, ``environment.yml`` + ``postBuild``, a ``Dockerfile``
...) that the service keeps and hands to repo2docker as a local directory.
Everything here treats its input as hostile: a path is relative, normalised
and stays inside the tree; the text is UTF-8 without NUL; the count and the
total size are capped (``max_files_count``, ``max_files_size``). An uploaded
archive (base64 of a ``.zip`` or a ``.tar.gz``) is unpacked into the same
dict under the same limits, streamed: reading stops as soon as the unpacked
total passes the cap (a zip bomb is refused before it is read whole), and
links, devices and binary members are refused.

Every refusal is a FieldError naming ``files`` or ``archive``. Framework-free.
"""

import base64
import binascii
import difflib
import gzip
import io
import re
import stat
import tarfile
import zipfile
import zlib

from ..builds.base import files_hash  # noqa: F401 (the "commit" of a files version)
from ..errors import FieldError

#: Deepest path accepted (directories + the file).
MAX_DEPTH = 20
#: Longest path accepted (characters), and longest name of one part (bytes).
MAX_PATH = 1024
MAX_PART = 255
#: Reading unpacked members goes in chunks of this many bytes.
_CHUNK = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATA_URL = re.compile(r"^data:[^,;]*(;[^,;]*)*;base64,", re.IGNORECASE)


def _size_text(size):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.3g} {unit}"
        size /= 1024


def clean_path(path, field="files"):
    """``path`` normalised (``./a//b`` -> ``a/b``), or FieldError when it is
    not a relative path inside the tree."""
    if not isinstance(path, str):
        raise FieldError(field, "every path must be a string")
    shown = repr(path[:100])
    if not path or not path.strip():
        raise FieldError(field, "a path is empty")
    if len(path) > MAX_PATH:
        raise FieldError(field, f"the path {shown} is longer than {MAX_PATH} characters")
    if _CONTROL.search(path):
        raise FieldError(field, f"the path {shown} contains control characters")
    if "\\" in path:
        raise FieldError(field, f"the path {shown} contains a backslash: use / between folders")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise FieldError(field, f"the path {shown} is absolute: paths must be relative")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts:
        raise FieldError(field, f"the path {shown} names no file")
    for part in parts:
        if part == "..":
            raise FieldError(field, f"the path {shown} leaves the folder (..)")
        if not part.strip():
            raise FieldError(field, f"the path {shown} has a blank name in it")
        try:
            encoded = part.encode("utf-8")
        except UnicodeEncodeError:
            raise FieldError(field, f"the path {shown} is not valid UTF-8") from None
        if len(encoded) > MAX_PART:
            raise FieldError(field, f"a name in the path {shown} is longer than {MAX_PART} bytes")
    if len(parts) > MAX_DEPTH:
        raise FieldError(field, f"the path {shown} is nested deeper than {MAX_DEPTH} levels")
    return "/".join(parts)


def _text_size(path, text, field):
    if not isinstance(text, str):
        raise FieldError(field, f"the content of {path!r} must be text (a string)")
    if "\x00" in text:
        raise FieldError(field, f"{path!r} contains a NUL character: only text files are accepted")
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise FieldError(field, f"the content of {path!r} is not valid UTF-8 text") from None


def check_files(value, *, max_count, max_size, field="files"):
    """The files of a request: ``{normalised path: text}``, or FieldError
    naming ``field``."""
    if not isinstance(value, dict):
        raise FieldError(field, 'must be an object: {"<relative path>": "<text>", ...}')
    if not value:
        raise FieldError(field, "give at least one file (for example requirements.txt)")
    if len(value) > max_count:
        raise FieldError(field, f"{len(value)} files are more than the {max_count} allowed")
    files = {}
    total = 0
    for path, text in value.items():
        clean = clean_path(path, field)
        if clean in files:
            raise FieldError(field, f"the path {clean!r} is given twice")
        total += _text_size(clean, text, field)
        if total > max_size:
            raise FieldError(
                field, f"the files are larger than the {_size_text(max_size)} allowed in all"
            )
        files[clean] = text
    names = set(files)
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in names:
                raise FieldError(field, f"{folder!r} is both a file and a folder")
    return dict(sorted(files.items()))


# -- archives -----------------------------------------------------------------


class _TooLarge(Exception):
    pass


class _Capped(io.RawIOBase):
    """A reader of ``source`` that raises _TooLarge past ``limit`` bytes."""

    def __init__(self, source, limit):
        self.source = source
        self.limit = limit
        self.count = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.source.read(min(len(buffer), self.limit + 1 - self.count))
        self.count += len(data)
        if self.count > self.limit:
            raise _TooLarge()
        buffer[: len(data)] = data
        return len(data)


class _Unpacked:
    """The files read so far from an archive, under the limits."""

    def __init__(self, max_count, max_size):
        self.max_count = max_count
        self.max_size = max_size
        self.total = 0
        self.files = {}

    def too_large(self):
        return FieldError(
            "archive",
            f"it unpacks to more than the {_size_text(self.max_size)} of files allowed",
        )

    def name(self, name):
        """The member's path, checked; a FieldError naming ``archive``."""
        return clean_path(name, "archive")

    def add(self, path, reader, declared):
        """Read one member (``reader.read``) under the size cap, as UTF-8 text."""
        if len(self.files) >= self.max_count:
            raise FieldError(
                "archive", f"it holds more than the {self.max_count} files allowed"
            )
        if path in self.files:
            raise FieldError("archive", f"the path {path!r} is in it twice")
        if declared is not None and self.total + declared > self.max_size:
            raise self.too_large()
        chunks = []
        while True:
            chunk = reader.read(_CHUNK)
            if not chunk:
                break
            self.total += len(chunk)
            if self.total > self.max_size:
                raise self.too_large()
            chunks.append(chunk)
        data = b"".join(chunks)
        if b"\x00" in data:
            raise FieldError(
                "archive", f"{path!r} is a binary file: only text files are accepted"
            )
        try:
            self.files[path] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise FieldError(
                "archive",
                f"{path!r} is not UTF-8 text (a binary file, or another encoding: "
                "save it as UTF-8)",
            ) from None


def decode_archive(text, max_archive_size):
    """The bytes of a base64 archive (a ``data:...;base64,`` URL too)."""
    if not isinstance(text, str):
        raise FieldError("archive", "must be a string: the base64 of a .zip or .tar.gz file")
    # Refused by its length, before anything is decoded.
    if len(text) > 4 * ((max_archive_size + 2) // 3) + 1024:
        raise FieldError(
            "archive", f"is larger than the {_size_text(max_archive_size)} allowed"
        )
    text = _DATA_URL.sub("", text.strip(), count=1)
    text = re.sub(r"\s+", "", text)
    if not text:
        raise FieldError("archive", "is empty")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError("archive", "is not valid base64") from None
    if len(raw) > max_archive_size:
        raise FieldError(
            "archive", f"is larger than the {_size_text(max_archive_size)} allowed"
        )
    return raw


def unpack_archive(text, *, max_count, max_size, max_archive_size):
    """The files of a base64 ``.zip`` or ``.tar.gz`` (``{path: text}``,
    checked like :func:`check_files`), or FieldError naming ``archive``."""
    raw = decode_archive(text, max_archive_size)
    unpacked = _Unpacked(max_count, max_size)
    if raw[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        _unzip(raw, unpacked)
    elif raw[:2] == b"\x1f\x8b":
        _untar(raw, unpacked)
    else:
        raise FieldError("archive", "is neither a .zip nor a .tar.gz file")
    if not unpacked.files:
        raise FieldError("archive", "holds no files")
    files = check_files(unpacked.files, max_count=max_count, max_size=max_size, field="archive")
    return _without_one_top_folder(files)


def _without_one_top_folder(files):
    """An archive whose files all sit in one top folder (as a repository's
    download does: ``project-main/requirements.txt``) is that folder's files:
    repo2docker reads its configuration at the top of the tree."""
    tops = {path.split("/", 1)[0] for path in files}
    if len(tops) != 1 or any("/" not in path for path in files):
        return files
    return {path.split("/", 1)[1]: text for path, text in files.items()}


def _unzip(raw, unpacked):
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        raise FieldError("archive", "is not a readable .zip file") from None
    # Folders are entries too: a bound on them all before anything is read.
    if len(members) > 4 * unpacked.max_count + 100:
        raise FieldError("archive", f"it holds more than the {unpacked.max_count} files allowed")
    declared = sum(member.file_size for member in members)
    if declared > unpacked.max_size:
        raise unpacked.too_large()
    for member in members:
        # zipfile cuts a name at its first NUL; the name as stored is checked.
        path = unpacked.name(member.orig_filename)
        # Made on Unix, the mode's file type (when there is one) says what it is.
        kind = stat.S_IFMT(member.external_attr >> 16) if member.create_system == 3 else 0
        if kind == stat.S_IFLNK:
            raise FieldError("archive", f"{path!r} is a symbolic link: links are not accepted")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise FieldError("archive", f"{path!r} is not a regular file (a device, a pipe...)")
        if member.is_dir():
            continue
        if member.flag_bits & 0x1:
            raise FieldError("archive", f"{path!r} is encrypted")
        try:
            with archive.open(member) as reader:
                unpacked.add(path, reader, member.file_size)
        except (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError, OSError,
                ValueError, RuntimeError):
            raise FieldError("archive", f"{path!r} cannot be read from the .zip file") from None


def _untar(raw, unpacked):
    # Everything read from the decompressed stream is capped, headers
    # included (a header can claim any size), so that a small upload never
    # turns into more than the limit allows.
    limit = unpacked.max_size + (unpacked.max_count + 16) * 4096 + 20 * 1024
    stream = _Capped(gzip.GzipFile(fileobj=io.BytesIO(raw)), limit)
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as archive:
            count = 0
            for member in archive:
                count += 1
                if count > 4 * unpacked.max_count + 100:
                    raise FieldError(
                        "archive", f"it holds more than the {unpacked.max_count} files allowed"
                    )
                path = unpacked.name(member.name)
                if member.issym() or member.islnk():
                    raise FieldError(
                        "archive", f"{path!r} is a link: links are not accepted"
                    )
                if member.isdir():
                    continue
                if not member.isreg():
                    raise FieldError(
                        "archive", f"{path!r} is not a regular file (a device, a pipe...)"
                    )
                reader = archive.extractfile(member)
                unpacked.add(path, reader, member.size)
    except _TooLarge:
        raise unpacked.too_large() from None
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError):
        raise FieldError("archive", "is not a readable .tar.gz file") from None


# -- what a build of files is -------------------------------------------------


def diff_files(old, new):
    """What changed from ``old`` to ``new`` (``{path: text}`` each, None as
    empty): ``{"added": [path], "removed": [path], "changed": [{"path",
    "diff"}]}`` with a unified diff of each changed file."""
    old = old or {}
    new = new or {}
    changed = []
    for path in sorted(old.keys() & new.keys()):
        if old[path] == new[path]:
            continue
        lines = difflib.unified_diff(
            old[path].splitlines(keepends=True),
            new[path].splitlines(keepends=True),
            fromfile=f"a/{path}",
            tofile=f"b/{path}",
        )
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        changed.append({"path": path, "diff": text})
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": changed,
    }
