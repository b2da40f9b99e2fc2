"""What is inside a built image: its build pack, Python and R, and its packages.

:class:`InsideMixin` is the part of
:class:`~tljh_repo2docker.builds.docker.DockerBuilder` that describes an
image once it is built, for the version's ``inside`` and ``packages``:

- the build pack repo2docker chose, from the line it prints in the build's
  log (``Using PythonBuildPack builder``; :func:`build_pack_of`);
- the repo2docker version, from the ``repo2docker.version`` label it puts on
  every image (else the builder image's);
- the Python and R versions and the packages, from one short container of
  the image without network running :data:`_INSIDE` with the image's
  ``python3``: the Python distributions (``importlib.metadata``, what
  ``pip list`` shows), the conda packages of that Python's environment (its
  ``conda-meta`` records, what ``conda list`` reads, without starting
  conda), and R's ``installed.packages()`` when ``Rscript`` is there.

A package installed by conda is listed once, as ``conda``. An image
without Python or a shell is described as far as it can be (None for what
is unknown); describing never fails a build.
"""

import asyncio
import json
import re

from .engine import ENGINE_ERRORS, shielded

#: The line repo2docker prints once it has chosen how to build.
_BUILD_PACK_RE = re.compile(r"^Using (\w+) builder\s*$")
#: What the describing script's line of JSON starts with (its output may hold others).
_MARKER = "TLJH-R2D-INSIDE "

# Runs with the image's python3 (else python); prints one line: the marker
# and {"python", "r", "packages": [{"name", "version", "manager"}]}.
_INSIDE = r"""
import glob, json, os, platform, shutil, subprocess, sys

packages = {}
for path in glob.glob(os.path.join(sys.prefix, "conda-meta", "*.json")):
    try:
        with open(path) as f:
            meta = json.load(f)
        packages[("conda", meta["name"].lower())] = {
            "name": meta["name"], "version": str(meta["version"]), "manager": "conda"}
    except Exception:
        pass
try:
    from importlib import metadata
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or (dist.read_text("INSTALLER") or "").strip() == "conda":
            continue
        key = ("pip", name.lower().replace("_", "-"))
        packages.setdefault(key, {"name": name, "version": dist.version, "manager": "pip"})
except Exception:
    pass
r_version = None
rscript = shutil.which("Rscript")
if rscript:
    code = (
        'cat(sprintf("R-VERSION\\t%s.%s\\n", R.version$major, R.version$minor)); '
        'p <- installed.packages()[, c("Package", "Version"), drop = FALSE]; '
        'cat(sprintf("%s\\t%s\\n", p[, 1], p[, 2]), sep = "")'
    )
    try:
        out = subprocess.run([rscript, "-e", code], capture_output=True, text=True, timeout=60).stdout
    except Exception:
        out = ""
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) != 2:
            continue
        if parts[0] == "R-VERSION":
            r_version = parts[1]
        else:
            packages.setdefault(("r", parts[0].lower()),
                                {"name": parts[0], "version": parts[1], "manager": "r"})
print("@MARKER@" + json.dumps({
    "python": platform.python_version(),
    "r": r_version,
    "packages": sorted(packages.values(), key=lambda p: (p["manager"], p["name"].lower())),
}))
""".replace("@MARKER@", _MARKER)

# The image's entry point is left out (repo2docker's runs the repository's
# ``start`` script, which has nothing to do with listing packages).
_INSIDE_SCRIPT = (
    'py=$(command -v python3 || command -v python) || exit 0; exec "$py" -c "$1"'
)


def build_pack_of(line):
    """The build pack a line of repo2docker's log names, or None."""
    match = _BUILD_PACK_RE.match(line)
    return match.group(1) if match else None


def parse_inside(output):
    """The describing script's result from its output, or None."""
    for line in reversed(output.splitlines()):
        if line.startswith(_MARKER):
            try:
                found = json.loads(line[len(_MARKER):])
            except json.JSONDecodeError:
                return None
            return found if isinstance(found, dict) else None
    return None


class InsideMixin:
    """What built images hold (part of ``DockerBuilder``): uses its ``docker``
    client, ``log``, ``check_timeout`` and the check containers (see
    :mod:`.check`)."""

    async def _describe(self, uid, image, build_pack, builder_image_id, spec):
        """``(inside, packages)`` of ``image``: ``inside`` is ``{"build_pack",
        "python", "r", "repo2docker"}``, ``packages`` a list or None when the
        image could not be listed. Never raises for the image; logs why."""
        inside = {"build_pack": build_pack, "python": None, "r": None, "repo2docker": None}
        packages = None
        try:
            labels = (await self.docker.images.inspect(image))["Config"].get("Labels") or {}
            inside["repo2docker"] = labels.get("repo2docker.version")
            if inside["repo2docker"] is None and builder_image_id:
                builder = await self.docker.images.inspect(builder_image_id)
                builder_labels = builder["Config"].get("Labels") or {}
                inside["repo2docker"] = builder_labels.get("repo2docker.version")
            found = await self._list_inside(uid, image, spec)
        except ENGINE_ERRORS as e:
            self.log.warning("Build %s: cannot tell what %s holds: %s", uid, image, e)
            return inside, None
        if found is not None:
            inside["python"] = found.get("python")
            inside["r"] = found.get("r")
            packages = found.get("packages")
        return inside, packages

    async def _list_inside(self, uid, image, spec):
        config = {
            "Entrypoint": ["sh", "-c"],
            "Cmd": [_INSIDE_SCRIPT, "inside", _INSIDE],
        }
        try:
            container = await self._start_check_container(uid, image, spec, config, "inside")
        except ENGINE_ERRORS as e:
            # No shell in the image (a container that cannot start): nothing to list.
            self.log.info("Build %s: cannot list what %s holds: %s", uid, image, e)
            return None
        try:
            try:
                await asyncio.wait_for(container.wait(), self.check_timeout)
            except asyncio.TimeoutError:
                self.log.warning("Build %s: listing what %s holds took too long", uid, image)
                return None
            output = "".join(await container.log(stdout=True, stderr=False))
        finally:
            await shielded(self._remove_check_container(container, uid))
        found = parse_inside(output)
        if found is None:
            self.log.info("Build %s: %s has no Python to list its packages with", uid, image)
        return found
