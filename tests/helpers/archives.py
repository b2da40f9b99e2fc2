"""Generated hostile archives (issue 23): what goes in them, the packed bytes,
and what the service must answer.

Each archive is a ``.tar.gz``, a ``.zip`` or a plain ``.tar`` of a few
members with clean names and UTF-8 text, into which one hazard (sometimes
two) is planted: a name that leaves the tree (``../``, absolute, ``C:\\``,
backslashes), one too long or too deep, control characters or a NUL in it, a
name in Latin-1; a member that is a link, a pipe or a device; contents that
are binary, in another encoding, with NUL bytes, a nested archive, over the
unpacked-size cap (a zip bomb among them); too many files, an archive over the
packed-size cap, a path given twice or as both a file and a folder. Some
archives get no hazard, or only names and contents that are odd but valid
(a 255-byte name, 20 levels, ``...``, emoji, CRLF, a BOM, an empty file).

The expected answer is known by construction, not by running the service's
own checks again: each member is marked :data:`CLEAN`, :data:`REFUSED` or
:data:`EITHER` by the rule it was made to meet or break (the rules of
``POST api/environments``'s ``archive`` in ``openapi.yaml``), and
:meth:`Archive.verdict` combines them with the archive-wide limits.

Every archive is made from its own seeded ``random.Random``
(:func:`generate`), so one of them is rebuilt alone from its index.
"""

import dataclasses
import gzip
import io
import random
import stat
import tarfile
import warnings
import zipfile

#: Every member meets the rules: the archive must be taken.
CLEAN = "clean"
#: A member breaks a rule: the archive must be refused (400 naming ``archive``).
REFUSED = "refused"
#: Either answer is right: a NUL in a member's name. Tar's header fields
#: end at the first NUL, and Python's zip reader ends names there too, so
#: readers take the name before it; refusing the member is right as well.
EITHER = "either"

FORMS = ("tar.gz", "zip", "tar")
#: What tar writes: the formats' name fields differ (100 bytes, prefix, PAX).
TAR_FORMATS = (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)
#: Parts of clean names: unicode, spaces, dots that are not ``..``.
WORDS = (
    "src", "data", "notes", "v1.2", "x_y-z", ".hidden", "...", "..a", "a b",
    "é", "日本語", "ß-ü", "🙂", "Ωmega",
)
#: Where links point.
LINK_TARGETS = ("../../etc/passwd", "/etc/shadow", "/", "..", "requirements.txt")


@dataclasses.dataclass(frozen=True)
class Limits:
    """The service's limits on an archive (its settings of the same names)."""

    max_files_count: int
    max_files_size: int
    max_archive_size: int

    @classmethod
    def defaults(cls, app_class):
        """The defaults of ``app_class`` (the service's Application)."""
        traits = app_class.class_traits()
        return cls(*(traits[name].default_value for name in (
            "max_files_count", "max_files_size", "max_archive_size"
        )))


@dataclasses.dataclass
class Member:
    """One entry of an archive. ``raw_name`` (zip only) is written as these
    bytes, as they are: the zip writer would cut a name at a NUL and encode
    Latin-1 as UTF-8."""

    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, fifo, chardev, blockdev
    data: bytes = b""
    target: str = ""
    raw_name: bytes = None
    verdict: str = CLEAN
    why: str = ""

    def describe(self):
        shown = self.raw_name if self.raw_name is not None else self.name
        size = f", {len(self.data)} bytes" if self.data else ""
        why = f" [{self.why}]" if self.why else ""
        return f"{self.kind} {shown[:120]!r}{size}{why}"


@dataclasses.dataclass
class Archive:
    index: int
    form: str
    tar_format: int
    members: list
    hazards: list

    def describe(self):
        kinds = ", ".join(self.hazards) or "none"
        lines = [f"#{self.index} {self.form} (hazards: {kinds})"]
        lines += [f"  {member.describe()}" for member in self.members[:12]]
        if len(self.members) > 12:
            lines.append(f"  ... {len(self.members) - 12} more")
        return "\n".join(lines)

    def verdict(self, packed, limits):
        """What the service must answer for ``packed`` (these members packed)."""
        if self.form == "tar":
            return REFUSED  # the service takes a .zip or a .tar.gz
        if len(packed) > limits.max_archive_size:
            return REFUSED
        verdicts = {member.verdict for member in self.members}
        if REFUSED in verdicts:
            return REFUSED
        files = [member for member in self.members if member.kind == "file"]
        if not files or len(files) > limits.max_files_count:
            return REFUSED
        if sum(len(member.data) for member in files) > limits.max_files_size:
            return REFUSED
        return EITHER if EITHER in verdicts else CLEAN

    def pack(self):
        """The archive's bytes."""
        if self.form == "zip":
            return _zip(self.members)
        raw = _tar(self.members, self.tar_format)
        return gzip.compress(raw, compresslevel=6, mtime=0) if self.form == "tar.gz" else raw


def text_verdict(data):
    """The rule for contents: UTF-8 text without NUL."""
    if b"\x00" in data:
        return REFUSED
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return REFUSED
    return CLEAN


# -- making members -------------------------------------------------------------


class _Maker:
    """Makes the members of one archive; file names are unique (a counter)."""

    def __init__(self, rng, form, limits):
        self.rng = rng
        self.form = form
        self.limits = limits
        self.count = 0

    def unique(self, stem=None):
        self.count += 1
        return f"{stem or self.rng.choice(WORDS)}-{self.count}.txt"

    def folder(self, depth):
        return "/".join(self.rng.choice(WORDS) for _ in range(depth))

    def clean_path(self, depth=None):
        depth = self.rng.randint(0, 3) if depth is None else depth
        return "/".join(filter(None, [self.folder(depth), self.unique()]))

    def text(self):
        lines = self.rng.randint(0, 5)
        words = [self.rng.choice(WORDS) for _ in range(lines * 3)]
        return (" ".join(words) + "\n").encode("utf-8")

    def file(self, name=None, data=None, verdict=CLEAN, why=""):
        """A regular file: a clean name and text unless given; its verdict is
        its contents' (:func:`text_verdict`) unless ``verdict`` refuses it."""
        data = self.text() if data is None else data
        if verdict == CLEAN:
            verdict = text_verdict(data)
        return Member(name or self.clean_path(), "file", data, verdict=verdict, why=why)


def _hostile_name(maker, why, verdict=REFUSED):
    """A file whose name breaks a rule (its contents are clean)."""
    member = maker.file(why=why)
    member.verdict = verdict
    return member


def _traversal(maker):
    """A path that leaves the tree (``{d}`` is two folders deep)."""
    name = maker.rng.choice([
        "../{f}", "../../../../etc/{f}", "a/../../{f}", "./../{f}", "{d}/../../../{f}",
        "{d}/../../..", "..", "../",
    ])
    member = _hostile_name(maker, "traversal")
    member.name = name.format(f=maker.unique(), d=maker.folder(2))
    return [member]


def _absolute(maker):
    member = _hostile_name(maker, "absolute")
    member.name = maker.rng.choice(["/", "//", "/etc/"]) + maker.clean_path()
    return [member]


def _windows(maker):
    f = maker.unique()
    name = maker.rng.choice([
        f"C:\\Windows\\{f}", f"C:/{f}", f"c:{f}", f"\\\\server\\share\\{f}",
        f"..\\..\\{f}", f"src\\{f}", f"\\{f}", f"\\\\?\\C:\\{f}",
    ])
    member = _hostile_name(maker, "windows path")
    member.name = name
    return [member]


def _long_segment(maker):
    rng = maker.rng
    segment = rng.choice(["x" * rng.randint(256, 300), "é" * rng.randint(128, 150)])
    member = _hostile_name(maker, "segment over 255 bytes")
    member.name = rng.choice([f"{segment}/{maker.unique()}", f"{maker.folder(1)}/{segment}.txt"])
    return [member]


def _long_path(maker):
    parts = [("p" * 250) + str(i) for i in range(maker.rng.randint(5, 8))]
    member = _hostile_name(maker, "path over 1024 characters")
    member.name = "/".join(parts + [maker.unique()])
    return [member]


def _deep(maker):
    depth = maker.rng.randint(21, 40)
    member = _hostile_name(maker, f"{depth} levels")
    member.name = "/".join([f"d{i}" for i in range(depth - 1)] + [maker.unique()])
    return [member]


def _control(maker):
    char = maker.rng.choice(["\n", "\r", "\t", "\x1b", "\x7f", "\x01"])
    member = _hostile_name(maker, f"control character {char!r}")
    f = maker.unique()
    member.name = f"{f[:2]}{char}{f[2:]}"
    return [member]


def _blank(maker):
    member = _hostile_name(maker, "blank name")
    member.name = maker.rng.choice(["", ".", "./", " ", "a/ /b.txt", "./ ", "\u3000/x.txt"])
    return [member]


def _nul_name(maker):
    """A NUL, then a hostile tail: short ASCII, so that tar writes it in
    the header's name field (which ends at the NUL) in every format."""
    name = maker.unique("n")
    tail = maker.rng.choice(["../../etc/passwd", "/abs.txt", "\\evil.txt", ""])
    member = _hostile_name(maker, "NUL in the name", verdict=EITHER)
    member.name = f"{name}\x00{tail}"
    member.raw_name = member.name.encode("ascii")
    return [member]


def _latin1_name(maker):
    """A name in Latin-1 bytes: not UTF-8 in tar (refused); in a zip,
    a name without the UTF-8 flag is CP437 by the format, all printable."""
    raw = maker.unique(maker.rng.choice(["café", "naïve", "Ümlaut", "señor"])).encode("latin-1")
    member = _hostile_name(maker, "Latin-1 name", verdict=CLEAN if maker.form == "zip" else REFUSED)
    member.name = raw.decode("utf-8", "surrogateescape")  # tar writes these bytes back
    member.raw_name = raw
    return [member]


def _odd_names(maker):
    """Valid at the edges: a 255-byte name, 20 levels, ``./`` and ``//``."""
    rng = maker.rng
    choices = [
        "x" * (255 - len(str(maker.count + 1)) - 5),  # with "-N.txt": 255 bytes
        "/".join(f"e{i}" for i in range(19)),  # 19 folders and the file: 20 levels
        "./" + maker.folder(1) + "/",
        maker.folder(1) + "//.",
    ]
    stem = rng.choice(choices)
    if stem.startswith("x"):
        name = maker.unique(stem)
    else:
        name = stem.rstrip("/") + "/" + maker.unique()
    return [maker.file(name, why="odd but valid name")]


def _link(kind):
    def make(maker):
        kind_here = "symlink" if kind == "hardlink" and maker.form == "zip" else kind
        target = maker.rng.choice(LINK_TARGETS)
        return [Member(maker.clean_path(), kind_here, target=target, verdict=REFUSED, why=kind_here)]
    return make


def _special(kind):
    def make(maker):
        return [Member(maker.clean_path(), kind, verdict=REFUSED, why=kind)]
    return make


def _binary(maker):
    data = bytearray(maker.rng.randbytes(maker.rng.randint(1, 4096)))
    data[maker.rng.randrange(len(data))] = 0
    return [maker.file(data=bytes(data), why="binary with NUL")]


def _encoded(maker):
    encoding, text = maker.rng.choice([
        ("latin-1", "café crème, Ünïcödé\n"), ("cp1252", "naïve — «quoted»\n"),
        ("utf-16", "text in UTF-16\n"), ("utf-32", "text in UTF-32\n"),
        ("shift_jis", "日本語のテキスト\n"),
    ])
    data = text.encode(encoding)
    return [maker.file(data=data, why=f"text in {encoding}")]


def _nul_text(maker):
    data = maker.text() + b"\x00" + maker.text()
    return [maker.file(data=data, why="NUL in text")]


def _nested(maker):
    inner_form = maker.rng.choice(["tar.gz", "zip"])
    inner = Archive(0, inner_form, tarfile.PAX_FORMAT, [maker.file()], [])
    name = maker.clean_path().replace(".txt", ".zip" if inner_form == "zip" else ".tar.gz")
    return [maker.file(name, data=inner.pack(), why=f"nested {inner_form}")]


def _over_cap(maker):
    """Text over the unpacked cap, in one member or split over a few."""
    total = maker.limits.max_files_size + maker.rng.randint(1, 64 * 1024)
    parts = maker.rng.randint(1, 4)
    size = -(-total // parts)
    letter = maker.rng.choice(b"abcxyz")
    return [maker.file(data=bytes([letter]) * size, why="over the unpacked cap") for _ in range(parts)]


def _bomb(maker):
    if maker.form == "tar":
        return _over_cap(maker)  # nothing compressed: megabytes past the request's limit
    size = maker.rng.randint(16, 24) * 1024 * 1024
    return [maker.file(data=b"a" * size, why=f"zip bomb ({size // 1024 // 1024} MiB of text)")]


def _too_many(maker):
    count = maker.limits.max_files_count + maker.rng.randint(1, 40)
    return [maker.file(data=b"x\n") for _ in range(count)]


def _huge(maker):
    data = maker.rng.randbytes(maker.limits.max_archive_size + maker.rng.randint(1, 4096))
    return [maker.file(data=data, why="over the packed cap (random bytes)")]


def _duplicate(maker):
    first = maker.file()
    second = maker.file(first.name, verdict=REFUSED, why="the same path twice")
    return [first, second]


def _file_and_folder(maker):
    first = maker.file()
    second = maker.file(first.name + "/" + maker.unique(), why="a file is also a folder")
    second.verdict = REFUSED
    return [first, second]


def _odd_text(maker):
    data = maker.rng.choice([
        b"", b"\xef\xbb\xbfwith a BOM\n", b"crlf\r\nlines\r\n", "🙂 emoji \U0010fffd\n".encode(),
        "line\u2028separator\n".encode(), b"\x01\x1b[31mescapes\x1b[0m\n", b"no newline at the end",
    ])
    return [maker.file(data=data, why="odd but valid text")]


def _none(maker):
    return []


#: The hazards, by name: each makes the members it plants.
HAZARDS = {
    "none": _none,
    "traversal": _traversal,
    "absolute": _absolute,
    "windows path": _windows,
    "long segment": _long_segment,
    "long path": _long_path,
    "deep": _deep,
    "control character": _control,
    "blank name": _blank,
    "NUL in name": _nul_name,
    "Latin-1 name": _latin1_name,
    "odd names": _odd_names,
    "symlink": _link("symlink"),
    "hardlink": _link("hardlink"),
    "fifo": _special("fifo"),
    "char device": _special("chardev"),
    "block device": _special("blockdev"),
    "binary": _binary,
    "other encoding": _encoded,
    "NUL in text": _nul_text,
    "nested archive": _nested,
    "over the cap": _over_cap,
    "zip bomb": _bomb,
    "too many files": _too_many,
    "duplicate path": _duplicate,
    "file and folder": _file_and_folder,
    "odd text": _odd_text,
    "over the packed cap": _huge,
}
#: Costly ones (megabytes, hundreds of members) are planted only as the main hazard.
_COSTLY = {"over the cap", "zip bomb", "too many files", "over the packed cap", "none"}
#: The order the main hazards take: every one in every form; "none" and the
#: valid oddities more often, so that enough archives pass.
_CYCLE = [name for name in HAZARDS if name != "over the packed cap"] + [
    "none", "none", "odd names", "odd text", "Latin-1 name", "NUL in name",
]


def generate(index, limits, seed):
    """Archive ``index`` of a run: its form and main hazard follow the index
    (each hazard in each form in turn), the rest comes from a
    ``random.Random`` of its own (``seed`` and ``index``)."""
    rng = random.Random(seed * 1_000_003 + index)
    form = FORMS[index % len(FORMS)]
    turn = index // len(FORMS)
    main = "over the packed cap" if turn % 50 == 7 else _CYCLE[turn % len(_CYCLE)]
    maker = _Maker(rng, form, limits)
    hazards = [main]
    if main not in _COSTLY and rng.random() < 0.25:
        hazards.append(rng.choice([name for name in HAZARDS if name not in _COSTLY]))
    members = [maker.file() for _ in range(rng.randint(1, 4))]
    members += [
        Member(maker.folder(rng.randint(1, 2)), "dir") for _ in range(rng.randint(0, 2))
    ]
    for name in hazards:
        members += HAZARDS[name](maker)
    rng.shuffle(members)
    return Archive(index, form, rng.choice(TAR_FORMATS), members, [h for h in hazards if h != "none"])


# -- packing ------------------------------------------------------------------------

_ZIP_MODES = {
    "file": stat.S_IFREG | 0o644,
    "dir": stat.S_IFDIR | 0o755,
    "symlink": stat.S_IFLNK | 0o777,
    "fifo": stat.S_IFIFO | 0o644,
    "chardev": stat.S_IFCHR | 0o644,
    "blockdev": stat.S_IFBLK | 0o644,
}
_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
}


def _zip(members):
    """A zip made on Unix (the mode's file type says what a member is);
    raw names are written under a placeholder of the same length, then put
    in its place in the local header and the central directory."""
    buffer = io.BytesIO()
    raw_names = {}
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # "Duplicate name": a path given twice is meant
        for number, member in enumerate(members):
            name = member.name
            if member.raw_name is not None:
                name = f"@{number}@".ljust(len(member.raw_name), "#")
                raw_names[name.encode("ascii")] = member.raw_name
            if member.kind == "dir" and not name.endswith("/"):
                name += "/"
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = _ZIP_MODES[member.kind] << 16
            if member.kind == "dir":
                info.external_attr |= 0x10  # MS-DOS directory flag
            # Megabytes of random bytes are stored: deflating them only costs time.
            noise = len(member.data) > 1024 * 1024 and text_verdict(member.data[:4096]) == REFUSED
            info.compress_type = zipfile.ZIP_STORED if noise else zipfile.ZIP_DEFLATED
            data = member.target.encode() if member.kind == "symlink" else member.data
            archive.writestr(info, data)
    packed = buffer.getvalue()
    for placeholder, raw in raw_names.items():
        assert packed.count(placeholder) == 2, placeholder  # local header + central directory
        packed = packed.replace(placeholder, raw)
    return packed


def _tar(members, tar_format):
    """A tar in ``tar_format``; PAX when a name does not fit that format."""
    try:
        return _tar_as(members, tar_format)
    except ValueError:  # a name or link too long for ustar
        return _tar_as(members, tarfile.PAX_FORMAT)


def _tar_as(members, tar_format):
    """The tar of ``members`` in ``tar_format`` (ValueError when a name does not fit it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format, encoding="utf-8") as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = _TAR_TYPES[member.kind]
            info.mode = 0o755 if member.kind == "dir" else 0o644
            info.mtime = 1_600_000_000
            if member.kind in ("symlink", "hardlink"):
                info.linkname = member.target
            if member.kind in ("chardev", "blockdev"):
                info.devmajor, info.devminor = 1, 3
            if member.kind == "file":
                info.size = len(member.data)
                archive.addfile(info, io.BytesIO(member.data))
            else:
                archive.addfile(info)
    return buffer.getvalue()
