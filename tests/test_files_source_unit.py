"""Files and archives as hostile input (service/files_source.py): paths,
encodings, links, devices, bombs and limits; and the diff between two sets of files."""

import base64
import io
import stat
import tarfile
import zipfile

import pytest

from tljh_repo2docker.builds.base import files_hash
from tljh_repo2docker.builds.docker.container import files_tar
from tljh_repo2docker.errors import FieldError
from tljh_repo2docker.service import files_source as fs

LIMITS = {"max_count": 20, "max_size": 10_000}
ARCHIVE = {**LIMITS, "max_archive_size": 50_000}


def check(files, **limits):
    return fs.check_files(files, **{**LIMITS, **limits})


def refused(call, field="files"):
    with pytest.raises(FieldError) as info:
        call()
    assert info.value.field == field
    assert info.value.reason[:1].strip()  # a sentence, not empty
    return info.value.reason


def b64(data):
    return base64.b64encode(data).decode()


def tar_gz(members):
    """``members``: (TarInfo, bytes or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def file_member(name, data):
    return tarfile.TarInfo(name), data


def zip_of(entries, compression=zipfile.ZIP_DEFLATED):
    """``entries``: (name or ZipInfo, bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def unpack(raw, **limits):
    return fs.unpack_archive(b64(raw), **{**ARCHIVE, **limits})


# -- files given as a dict ----------------------------------------------------


def test_files_normalised_and_sorted():
    files = check({"b/./c.txt": "x", "./requirements.txt": "numpy\n", "a//d": "é"})
    assert files == {"a/d": "é", "b/c.txt": "x", "requirements.txt": "numpy\n"}
    assert list(files) == sorted(files)


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd", "a/../../b", "a/..", "..", "/etc/passwd", "//server/share",
        "a\\..\\b", "..\\x", "C:\\x", "c:x", "", "   ", ".", "./", "a/ /b",
        "a\x00b", "a\nb", "a\x7fb", "x" * 2000, "a/" + "b" * 300,
        "/".join(["d"] * 25),
    ],
)
def test_bad_paths_refused(path):
    refused(lambda: check({path: "text"}))


@pytest.mark.parametrize(
    "value", [None, [], "requirements.txt", {"a": 1}, {"a": None}, {"a": b"bytes"}, {1: "x"}, {}]
)
def test_not_files_refused(value):
    refused(lambda: check(value))


def test_text_rules():
    refused(lambda: check({"a": "nul\x00byte"}))
    refused(lambda: check({"a": "lone \ud800 surrogate"}))
    assert check({"a": "tabs\tand\r\nlines, ünïcødé ✓"})


def test_limits():
    assert check({f"f{i}": "" for i in range(20)})
    assert "21 files" in refused(lambda: check({f"f{i}": "" for i in range(21)}))
    assert check({"a": "x" * 10_000})
    refused(lambda: check({"a": "x" * 5000, "b": "x" * 5001}))
    # UTF-8 bytes count, not characters
    refused(lambda: check({"a": "é" * 5001}))


def test_duplicates_and_file_folder_clash():
    assert "twice" in refused(lambda: check({"a/b": "1", "a//b": "2"}))
    assert "both" in refused(lambda: check({"a": "1", "a/b": "2"}))


# -- archives -----------------------------------------------------------------


def test_tar_gz_and_zip_unpack():
    folder = tarfile.TarInfo("proj")
    folder.type = tarfile.DIRTYPE
    tgz = tar_gz(
        [(folder, None), file_member("proj/requirements.txt", b"numpy\n"),
         file_member("proj/binder/postBuild", "echo ✓\n".encode())]
    )
    files = unpack(tgz)
    # one top folder (a repository's download) is the tree itself
    assert files == {"binder/postBuild": "echo ✓\n", "requirements.txt": "numpy\n"}
    zipped = zip_of([("environment.yml", b"dependencies: []\n"), ("sub/", b""),
                     ("sub/x.txt", b"x")])
    assert unpack(zipped) == {"environment.yml": "dependencies: []\n", "sub/x.txt": "x"}


def test_only_a_single_top_folder_is_taken_off():
    two_tops = zip_of([("a/requirements.txt", b"x\n"), ("b/postBuild", b"y\n")])
    assert unpack(two_tops) == {"a/requirements.txt": "x\n", "b/postBuild": "y\n"}
    top_file = zip_of([("proj/requirements.txt", b"x\n"), ("README.md", b"r\n")])
    assert unpack(top_file) == {"proj/requirements.txt": "x\n", "README.md": "r\n"}
    dotted = zip_of([(".binder/requirements.txt", b"x\n")])
    assert unpack(dotted) == {"requirements.txt": "x\n"}


def test_data_url_and_whitespace_accepted():
    zipped = zip_of([("a.txt", b"a")])
    text = "data:application/zip;base64," + "\n".join(
        b64(zipped)[i:i + 60] for i in range(0, len(b64(zipped)), 60)
    )
    assert fs.unpack_archive(text, **ARCHIVE) == {"a.txt": "a"}


@pytest.mark.parametrize(
    "name", ["../evil", "a/../../evil", "/etc/cron.d/evil", "a\\..\\evil",
             "/".join(["d"] * 30) + "/f"]
)
def test_tar_traversal_absolute_nested_refused(name):
    refused(lambda: unpack(tar_gz([file_member(name, b"x")])), "archive")


@pytest.mark.parametrize("name", ["../evil", "/abs", "a\\b", "/".join(["d"] * 30) + "/f"])
def test_zip_traversal_absolute_nested_refused(name):
    refused(lambda: unpack(zip_of([(name, b"x")])), "archive")


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]
)
def test_tar_links_and_devices_refused(kind):
    info = tarfile.TarInfo("innocent")
    info.type = kind
    info.linkname = "/etc/passwd"
    reason = refused(lambda: unpack(tar_gz([file_member("ok", b"ok"), (info, None)])), "archive")
    assert "innocent" in reason


def test_zip_name_with_nul_refused_not_cut():
    """Python's zipfile cuts a member's name at its first NUL ("ok.txt"):
    the name as stored in the archive is the one checked."""
    placeholder = b"PLACEHOLDER-NAME"
    hostile = b"ok.txt\x00../../xyz"
    assert len(hostile) == len(placeholder)
    raw = zip_of([(placeholder.decode(), b"x")]).replace(placeholder, hostile)
    assert zipfile.ZipFile(io.BytesIO(raw)).namelist() == ["ok.txt"]
    assert "control characters" in refused(lambda: unpack(raw), "archive")


def test_zip_symlink_refused():
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert "link" in refused(lambda: unpack(zip_of([(info, b"/etc/passwd")])), "archive")
    device = zipfile.ZipInfo("dev")
    device.create_system = 3
    device.external_attr = (stat.S_IFCHR | 0o666) << 16
    refused(lambda: unpack(zip_of([(device, b"")])), "archive")


def test_zip_bomb_refused_before_read_whole():
    # 5 MB of zeros in a zip of a few kB: more than 500 times the cap
    bomb = zip_of([("zeros.txt", b"0" * 5_000_000)])
    assert len(bomb) < 50_000
    assert "unpacks to more" in refused(lambda: unpack(bomb), "archive")


def test_zip_bomb_with_lying_sizes_refused():
    """A member whose declared size is small but whose data is huge: reading
    is capped all the same (zipfile stops at the declared size, and the
    member fails its CRC check)."""
    bomb = bytearray(zip_of([("zeros.txt", b"0" * 2_000_000)], zipfile.ZIP_DEFLATED))
    # Patch both declared sizes (local header at 22, central directory) to 10.
    local = bomb.find(b"PK\x03\x04")
    bomb[local + 22:local + 26] = (10).to_bytes(4, "little")
    central = bomb.find(b"PK\x01\x02")
    bomb[central + 24:central + 28] = (10).to_bytes(4, "little")
    refused(lambda: unpack(bytes(bomb)), "archive")


def test_tar_bomb_refused():
    bomb = tar_gz([file_member("zeros.txt", b"0" * 5_000_000)])
    assert len(bomb) < 50_000
    refused(lambda: unpack(bomb), "archive")
    # Many small members adding up past the cap
    many = tar_gz([file_member(f"f{i}", b"0" * 900) for i in range(15)])
    refused(lambda: unpack(many), "archive")


def test_tar_huge_pax_header_refused():
    """A pax header claiming megabytes is read capped, never whole."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("a")
        info.pax_headers = {"comment": "x" * 3_000_000}
        info.size = 1
        archive.addfile(info, io.BytesIO(b"a"))
    refused(lambda: unpack(buffer.getvalue()), "archive")


def test_too_many_members_refused():
    refused(lambda: unpack(tar_gz([file_member(f"f{i}", b"") for i in range(21)])), "archive")
    refused(lambda: unpack(zip_of([(f"f{i}", b"") for i in range(21)])), "archive")
    # Folders alone, many of them
    refused(lambda: unpack(zip_of([(f"d{i}/", b"") for i in range(500)])), "archive")


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # a binary blob
        bytes(range(256)),
        "café".encode("latin-1"),  # another encoding
        "日本".encode("shift_jis"),
        "text".encode("utf-16"),
        b"text\x00with nul",
    ],
)
def test_binary_and_odd_encodings_refused(data):
    refused(lambda: unpack(tar_gz([file_member("data.txt", data)])), "archive")
    refused(lambda: unpack(zip_of([("data.txt", data)])), "archive")


def test_not_archives_refused():
    for text in ["", "not base64!!", b64(b"just text"), b64(b"PK\x03\x04garbage"),
                 b64(b"\x1f\x8bgarbage"), 12, None]:
        refused(lambda: fs.unpack_archive(text, **ARCHIVE), "archive")
    refused(lambda: unpack(zip_of([])), "archive")


def test_huge_base64_refused_by_its_length():
    huge = "A" * 10_000_000
    reason = refused(lambda: fs.unpack_archive(huge, **ARCHIVE), "archive")
    assert "larger" in reason
    # Just over the packed limit
    raw = zip_of([("a", b"a")]) + b"\x00" * 60_000
    refused(lambda: unpack(raw), "archive")


def test_encrypted_zip_member_refused():
    raw = bytearray(zip_of([("a.txt", b"a")], zipfile.ZIP_STORED))
    local = raw.find(b"PK\x03\x04")
    raw[local + 6] |= 1
    central = raw.find(b"PK\x01\x02")
    raw[central + 8] |= 1
    refused(lambda: unpack(bytes(raw)), "archive")


# -- the diff, the hash and the tar given to the build ---------------------------


def test_diff_files():
    old = {"requirements.txt": "numpy\npandas\n", "gone.txt": "x", "same": "s"}
    new = {"requirements.txt": "numpy\npolars\n", "new.txt": "y", "same": "s"}
    diff = fs.diff_files(old, new)
    assert diff["added"] == ["new.txt"]
    assert diff["removed"] == ["gone.txt"]
    assert [c["path"] for c in diff["changed"]] == ["requirements.txt"]
    text = diff["changed"][0]["diff"]
    assert "-pandas\n" in text and "+polars\n" in text and "a/requirements.txt" in text
    assert fs.diff_files(None, {"a": "1"}) == {"added": ["a"], "removed": [], "changed": []}
    # A last line without a newline still ends its line in the diff
    assert fs.diff_files({"a": "x"}, {"a": "y"})["changed"][0]["diff"].endswith("+y\n")


def test_files_hash():
    assert files_hash({"a": "1", "b": "2"}) == files_hash({"b": "2", "a": "1"})
    assert files_hash({"a": "1"}) != files_hash({"a": "1 "})
    # path and text cannot be shifted into each other
    assert files_hash({"ab": "c"}) != files_hash({"a": "bc"})
    assert len(files_hash({"a": "1"})) == 40


def test_files_tar():
    raw = files_tar({"requirements.txt": "numpy\n", "binder/postBuild": "echo ✓\n"}, "src")
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        names = {m.name: m for m in archive.getmembers()}
        assert set(names) == {"src", "src/binder", "src/requirements.txt", "src/binder/postBuild"}
        assert names["src/binder"].isdir()
        assert archive.extractfile("src/binder/postBuild").read() == "echo ✓\n".encode()
        assert names["src/binder/postBuild"].mode & 0o100


# -- the request's fields (service/fields.py) and the body limit ----------------


def _app(**more):
    from types import SimpleNamespace

    return SimpleNamespace(
        default_provider="git", provider_choices=["git"], allow_local_repos=False,
        machine_profiles=[], node_selector={}, default_memory_limit=None,
        default_cpu_limit=None, image_prefix="test/", allowed_repo2docker_images=[],
        max_files_count=20, max_files_size=10_000, max_archive_size=50_000,
        max_body_size=1024 * 1024, **more,
    )


def _builder(sources=("git", "files", "image"), **more):
    from types import SimpleNamespace

    return SimpleNamespace(
        supports_credentials=True, supports_build_args=True, repo2docker_image="r2d:test",
        sources=sources, display_name="BinderHub", **more,
    )


def test_parse_request_sources():
    from tljh_repo2docker.service.fields import parse_request

    fields, credentials = parse_request(
        {"files": {"requirements.txt": "numpy\n"}, "buildargs": {"A": "1"}}, _app(), _builder()
    )
    assert fields["source"] == "files" and fields["repo"] == "" and fields["ref"] == ""
    assert fields["files"] == {"requirements.txt": "numpy\n"}
    assert fields["name"] == "requirements-txt"
    assert fields["image_name"] == "test/requirements-txt:latest"
    assert fields["build_args"] == {"A": "1"} and credentials == (None, None)
    archive = b64(zip_of([("environment.yml", b"dependencies: []\n"), ("postBuild", b"true")]))
    fields, _ = parse_request({"archive": archive, "name": "Course"}, _app(), _builder())
    assert fields["source"] == "files" and set(fields["files"]) == {"environment.yml", "postBuild"}
    assert fields["image_name"] == "test/course:latest"

    for body, field in [
        ({}, "repo"),
        ({"name": "x"}, "repo"),
        ({"repo": "https://h.example/r.git", "files": {"a": "b"}}, "files"),
        ({"files": {"a": "b"}, "archive": "xx"}, "archive"),
        ({"files": {"a": "b"}, "ref": "main"}, "ref"),
        ({"files": {"a": "b"}, "username": "u"}, "username"),
        ({"files": {"a": "b"}, "password": "p"}, "password"),
        ({"files": {"a": "b"}, "auto_rebuild": True}, "auto_rebuild"),
        ({"files": {"../a": "b"}}, "files"),
        ({"archive": "!!"}, "archive"),
        ({"files": {}}, "files"),
    ]:
        with pytest.raises(FieldError) as info:
            parse_request(body, _app(), _builder())
        assert info.value.field == field, (body, info.value)
    binderhub = _builder(sources=("git",))
    for body, field in [({"files": {"a": "b"}}, "files"), ({"archive": "xx"}, "archive"),
                        ({"image": "x:1"}, "image")]:
        with pytest.raises(FieldError) as info:
            parse_request(body, _app(), binderhub)
        assert info.value.field == field and "BinderHub" in info.value.reason


def test_body_limit():
    from tljh_repo2docker.handlers.bodylimit import body_limit

    app = _app()
    app.max_archive_size = 5 * 1024 * 1024
    app.max_files_size = 1024 * 1024
    base = "/services/tljh_repo2docker/api/environments"
    assert body_limit(app, "GET", base) == app.max_body_size
    assert body_limit(app, "POST", f"{base}/abc/rebuild") == app.max_body_size
    for method, path in [("POST", base), ("PATCH", f"{base}/abc"), ("POST", f"{base}?x=1")]:
        limit = body_limit(app, method, path)
        assert limit >= len(base64.b64encode(b"\0" * app.max_archive_size)) + 1000
