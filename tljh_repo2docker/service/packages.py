"""What a version holds: its packages, the change between two versions, a one-line summary.

The builder records on each version what is inside its image (``inside``:
``{"build_pack", "python", "r", "repo2docker"}``) and its packages
(``packages``: ``[{"name", "version", "manager"}]``); either is None when
not known (versions built before, or a backend that does not look). Pure
functions of those: the handlers (handlers/versions.py) and the environment
list (environment_list.py) call them.
"""

import re

_PIP_SEPARATORS = re.compile(r"[-_.]+")

#: Why a version has no package list, for the user.
UNKNOWN = (
    "The packages of this version are not known: it was built before packages "
    "were recorded, or by a backend that does not record them"
)


def normalised_name(name, manager):
    """The name packages are compared by: case-insensitive, and for pip and
    conda with ``-``, ``_`` and ``.`` alike (PEP 503)."""
    name = str(name).strip().lower()
    if manager in ("pip", "conda"):
        name = _PIP_SEPARATORS.sub("-", name)
    return name


def clean_packages(packages):
    """The well-formed entries of a stored package list, as
    ``{"name", "version", "manager"}`` (text or None), sorted by manager and
    name; None when the list is not known."""
    if not isinstance(packages, list):
        return None
    cleaned = []
    for item in packages:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            continue
        version = item.get("version")
        manager = item.get("manager")
        cleaned.append(
            {
                "name": item["name"],
                "version": None if version is None else str(version),
                "manager": None if manager is None else str(manager),
            }
        )
    cleaned.sort(key=lambda p: (p["manager"] or "", normalised_name(p["name"], p["manager"])))
    return cleaned


def packages_answer(version):
    """The answer of ``GET .../versions/{id}/packages`` for a stored Version."""
    packages = clean_packages(version.packages)
    if packages is None:
        return {"packages": [], "known": False, "message": UNKNOWN}
    return {"packages": packages, "known": True}


def _keyed(packages):
    return {(p["manager"] or "", normalised_name(p["name"], p["manager"])): p for p in packages}


def diff(old_packages, new_packages):
    """What changed from ``old_packages`` to ``new_packages`` (stored lists):
    ``{"added": [...], "removed": [...], "changed": [{"name", "manager",
    "from", "to"}]}``, packages matched by manager and normalised name.
    A list that is not known counts as empty."""
    old = _keyed(clean_packages(old_packages) or [])
    new = _keyed(clean_packages(new_packages) or [])
    added = [new[key] for key in sorted(new.keys() - old.keys())]
    removed = [old[key] for key in sorted(old.keys() - new.keys())]
    changed = [
        {
            "name": new[key]["name"],
            "manager": new[key]["manager"],
            "from": old[key]["version"],
            "to": new[key]["version"],
        }
        for key in sorted(old.keys() & new.keys())
        if old[key]["version"] != new[key]["version"]
    ]
    return {"added": added, "removed": removed, "changed": changed}


def diff_answer(old_version, new_version):
    """The answer of ``GET .../versions/{id}/diff?from={other}``: the change
    from ``old_version`` to ``new_version`` (stored Versions), with whether
    both lists are known (an unknown list counts as empty)."""
    answer = diff(old_version.packages, new_version.packages)
    known = clean_packages(old_version.packages) is not None and (
        clean_packages(new_version.packages) is not None
    )
    answer["known"] = known
    if not known:
        answer["message"] = UNKNOWN.replace("this version", "one of these versions")
    return answer


def _short_version(value):
    """``3.12`` of ``3.12.4`` (major.minor), or the text as it is."""
    if not isinstance(value, str) or not value.strip():
        return None
    match = re.match(r"^\s*(\d+)\.(\d+)", value)
    return f"{match.group(1)}.{match.group(2)}" if match else value.strip()[:20]


def summary(inside, package_count):
    """One line on a version, e.g. ``"Python 3.12 · 143 packages"``; None
    when nothing is known. ``inside``: the version's stored ``inside``;
    ``package_count``: how many packages it has (None: not known)."""
    parts = []
    if isinstance(inside, dict):
        python = _short_version(inside.get("python"))
        r = _short_version(inside.get("r"))
        if python:
            parts.append(f"Python {python}")
        if r:
            parts.append(f"R {r}")
        build_pack = inside.get("build_pack")
        if not parts and isinstance(build_pack, str) and build_pack.strip():
            parts.append(build_pack.strip()[:40])
    if isinstance(package_count, int) and not isinstance(package_count, bool):
        parts.append(f"{package_count} package{'' if package_count == 1 else 's'}")
    return " · ".join(parts) or None


def summary_of(version):
    """:func:`summary` of a stored Version (None for no version)."""
    if version is None:
        return None
    packages = version.packages
    return summary(version.inside, len(packages) if isinstance(packages, list) else None)
