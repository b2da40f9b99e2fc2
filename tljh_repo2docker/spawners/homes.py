"""Moving home directories on a Docker engine, with docker-py's blocking client.

They block: :func:`home_owner` (quick) runs in ``DockerSpawner.executor``
like DockerSpawner's own calls; the long ones (copy, chown, adding files) in
a thread of their own (``SpawnerMixin.in_homes_thread``), so that they never
hold up the Docker calls of the other servers, which share that executor.

- :func:`copy_home` copies the home directory of a container that has none
  mounted (made by tljh-repo2docker 3.x, or with ``home_scope = "none"``)
  into the user's home, so that replacing the container loses nothing;
- :func:`home_owner` reads who owns a home, from the first entry of its
  archive (cheap: a few hundred bytes, whatever the home holds);
- :func:`chown_home` gives a home to the image's user (after ``user_id``
  changed);
- :func:`add_image_files` adds what a new image has in its home directory
  (a repository's new files) without overwriting anything;
- :func:`pull_content` pulls a start's content into a home, and
  :func:`pull_content_into` into a server that has none (a copy of its
  folder, pulled in the puller's own container and copied back).

Both copy and chown go through a short-lived helper container that mounts
the home: Docker's archive API writes into a container's mounts, and the
helper works for named volumes and host directories alike.
"""

import io
import posixpath
import tarfile
import time
from tempfile import SpooledTemporaryFile

import docker.errors

#: Label of the helper containers (to find leftovers).
HELPER_LABEL = "tljh_repo2docker.home.helper"
#: Archives up to this size stay in memory; larger ones spill to a temporary file.
_SPOOL_BYTES = 64 * 1024**2


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (a streamed HTTP body)."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _binds(home):
    return {home.source: {"bind": home.path, "mode": "rw"}}


def _helper(client, image, home, **kwargs):
    return client.create_container(
        image,
        host_config=client.create_host_config(binds=_binds(home)),
        network_disabled=True,
        labels={HELPER_LABEL: "1"},
        **kwargs,
    )["Id"]


def retarget(source, destination, new_root, owner=None):
    """Copy the tar archive ``source`` to ``destination`` with its top directory renamed ``new_root``.

    With ``owner`` (a uid), every entry is given to it (and the group of the
    same id): Docker's archive API keeps the ids an archive says.
    """
    with tarfile.open(fileobj=source, mode="r|") as tar_in, tarfile.open(
        fileobj=destination, mode="w|", format=tarfile.PAX_FORMAT
    ) as tar_out:
        for member in tar_in:
            member.name = _renamed(member.name, new_root)
            if member.islnk():
                member.linkname = _renamed(member.linkname, new_root)
            if owner is not None:
                _own(member, owner)
            tar_out.addfile(member, tar_in.extractfile(member) if member.isreg() else None)


def _own(member, uid):
    member.uid = member.gid = uid
    member.uname = member.gname = ""


def _renamed(name, new_root):
    _top, _, rest = name.partition("/")
    return f"{new_root}/{rest}" if rest else new_root


def copy_home(client, container_id, path, image, home, destination, new_root):
    """Copy ``path`` of ``container_id`` into ``home``, as ``destination/new_root``.

    Owners, modes and times are kept. Returns False when the container has no
    such directory (nothing to copy).
    """
    helper = _helper(client, image, home, command=["true"])
    try:
        return _copy(client, container_id, path, helper, destination, new_root, owner=None)
    finally:
        client.remove_container(helper, v=True, force=True)


def home_owner(client, container_id, path):
    """The uid owning ``path`` in the (created or running) container, or None."""
    response = client._get(
        client._url("/containers/{0}/archive", container_id), params={"path": path}, stream=True
    )
    try:
        if response.status_code == 404:
            return None
        client._raise_for_status(response)
        reader = io.BufferedReader(_ChunkReader(response.iter_content(16384)))
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            first = tar.next()
        return first.uid if first is not None else None
    finally:
        response.close()  # the rest of the home is never read


#: Where helpers mount a home when the image's own home directory must stay visible.
_HOME_MOUNT = "/tljh-r2d-home"


def add_image_files(client, image, home, timeout=600):
    """Copy the files of ``image``'s home directory that ``home`` lacks into it.

    ``cp -an`` as root in a helper that sees both: owners, modes and times
    are kept, nothing in the home is overwritten. A failure is logged by the
    caller's exception, the home is left as it was.
    """
    helper = client.create_container(
        image,
        entrypoint=["cp", "-an", f"{home.path}/.", f"{_HOME_MOUNT}/"],
        user="0",
        host_config=client.create_host_config(
            binds={home.source: {"bind": _HOME_MOUNT, "mode": "rw"}}
        ),
        network_disabled=True,
        labels={HELPER_LABEL: "1"},
    )["Id"]
    try:
        client.start(helper)
        status = client.wait(helper, timeout=timeout)["StatusCode"]
        if status != 0:  # e.g. a file the home has (cp -n may say so); the rest is copied
            logs = client.logs(helper, tail=5).decode("utf-8", "replace").strip()
            return f"cp exited with {status}: {logs}"
        return ""
    finally:
        client.remove_container(helper, v=True, force=True)


def chown_home(client, image, home, uid, timeout=600):
    """Give every file of ``home`` to ``uid`` (and the group of the same id)."""
    helper = _helper(
        client, image, home, entrypoint=["chown", "-R", f"{uid}:{uid}", home.path], user="0"
    )
    try:
        client.start(helper)
        status = client.wait(helper, timeout=timeout)["StatusCode"]
        if status != 0:
            logs = client.logs(helper, tail=5).decode("utf-8", "replace").strip()
            raise RuntimeError(f"chown of the home {home.source} exited with {status}: {logs}")
    finally:
        client.remove_container(helper, v=True, force=True)


def _ensure_image(client, image):
    """Pull ``image`` when the engine lacks it. Returns "" or why it cannot be had."""
    try:
        client.inspect_image(image)
    except docker.errors.NotFound:
        try:
            client.pull(image)
        except docker.errors.APIError as e:
            return f"the image {image} could not be pulled: {e.explanation or e}"
    return ""


def _run_puller(client, helper, timeout):
    """Start the puller ``helper`` and wait for it. Returns "" when it pulled,
    else why not, in one line (the last lines the script wrote)."""
    import requests.exceptions

    client.start(helper)
    try:
        status = client.wait(helper, timeout=timeout)["StatusCode"]
    except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout):
        return f"it took longer than {timeout} seconds"
    if status != 0:
        logs = client.logs(helper, tail=5).decode("utf-8", "replace").strip().splitlines()
        return ": ".join(logs[-2:]) if logs else f"the puller exited with {status}"
    return ""


def pull_content(client, image, home, *, user, network, environment, command, timeout=300):
    """Run the content puller (spawners/content.py) in a helper: ``image``
    as ``user``, ``home`` mounted, on ``network``. Returns "" when it pulled,
    else why not, in one line. A missing image is pulled first."""
    problem = _ensure_image(client, image)
    if problem:
        return problem
    helper = client.create_container(
        image,
        entrypoint=command,
        user=str(user),
        environment=environment,
        working_dir=home.path,
        host_config=client.create_host_config(binds=_binds(home), network_mode=network or None),
        labels={HELPER_LABEL: "1"},
    )["Id"]
    try:
        return _run_puller(client, helper, timeout)
    finally:
        client.remove_container(helper, v=True, force=True)


#: Where the puller of a server with no home works on its copy of the
#: server's folder: its ``CONTENT_HOME``, in the puller's own container.
CONTENT_WORKDIR = "/tmp/tljh-r2d-content"


def pull_content_into(
    client, container_id, path, image, *, user, network, environment, command, timeout=300
):
    """Pull content into the folder ``path`` (``~/<dir>``) of ``container_id``,
    a server with no home, created and not started yet.

    The puller works on a copy: the folder is copied out of the server's
    container (an absent folder is an empty start) into
    ``CONTENT_WORKDIR/<dir>`` of the puller's own container, the puller runs
    (``environment`` has ``CONTENT_HOME = CONTENT_WORKDIR``), and the result
    is copied back into ``path``, owned by ``user``. Only Docker's archive
    API moves the files: nothing is mounted from the machine the hub runs
    on, so this works when the hub itself runs in a container; the copy
    lives in the puller's container and goes with it, whatever happens.

    The copy back adds and overwrites files, it never deletes: a file
    deleted upstream stays in a kept container (``remove = False``).
    Returns "" when it pulled, else why not, in one line.
    """
    problem = _ensure_image(client, image)
    if problem:
        return problem
    folder = posixpath.basename(path)
    work_root, work_name = posixpath.split(CONTENT_WORKDIR)
    helper = client.create_container(
        image,
        entrypoint=command,
        user=str(user),
        environment=environment,
        working_dir=work_root,
        host_config=client.create_host_config(network_mode=network or None),
        labels={HELPER_LABEL: "1"},
    )["Id"]
    try:
        copy_in = posixpath.join(work_name, folder)
        if not _copy(client, container_id, path, helper, work_root, copy_in, user):
            _put_empty_folder(client, helper, work_root, copy_in, user)
        problem = _run_puller(client, helper, timeout)
        if problem:
            return problem
        pulled = posixpath.join(CONTENT_WORKDIR, folder)
        try:
            _copy(client, helper, pulled, container_id, posixpath.dirname(path), folder, user)
        except docker.errors.APIError as e:
            return f"it could not be copied into the server: {e.explanation or e}"
        return ""
    finally:
        client.remove_container(helper, v=True, force=True)


def _copy(client, source, source_path, destination, destination_path, new_root, owner):
    """Copy the folder ``source_path`` of container ``source`` into the folder
    ``destination_path`` of container ``destination``, as ``new_root`` (a
    relative path), every file owned by ``owner`` (None: owners kept). False
    when ``source`` has no such folder (nothing copied)."""
    try:
        stream, _stat = client.get_archive(source, source_path)
    except docker.errors.NotFound:
        return False
    with SpooledTemporaryFile(_SPOOL_BYTES) as raw, SpooledTemporaryFile(_SPOOL_BYTES) as archive:
        for chunk in stream:
            raw.write(chunk)
        raw.seek(0)
        retarget(raw, archive, new_root, owner=owner)
        archive.seek(0)
        client.put_archive(destination, destination_path, archive)
    return True


def _put_empty_folder(client, container_id, path, name, owner):
    """Create the empty folder ``path/name`` in ``container_id``, owned by ``owner``."""
    entry = tarfile.TarInfo(name)
    entry.type = tarfile.DIRTYPE
    entry.mode = 0o755
    entry.mtime = int(time.time())
    _own(entry, owner)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(entry)
    client.put_archive(container_id, path, archive.getvalue())
