"""Who may see, use and manage an environment: the one rule, for the service and the spawners.

An environment has an ``owner`` (the user who added it) and a ``sharing``:
``{"everyone": bool, "users": [names], "groups": [JupyterHub group names]}``.

- A user **may use** an environment (see it listed, start servers from it)
  when they are an admin (a hub admin or a holder of the admin scope), own
  it, or it is shared with everyone, with them, or with a group they
  belong to.
- Its **owner and admins manage it** (rebuild, cancel, share, delete, read
  its build log).
- Everyone else is told it does not exist (404), so that names of private
  environments do not leak.

The service reads a user's groups from the hub (cached, see
``HubClient.groups_cache_seconds``); the spawners from the hub's own
database (``spawner.user.groups``). Both call :meth:`Access.allows`.
"""

from dataclasses import dataclass

from .errors import Forbidden, NotFound

#: What environments added by admins, converted from 3.x or adopted get.
EVERYONE = {"everyone": True, "users": [], "groups": []}
#: What environments added by builders (holders of the build scope) get.
PRIVATE = {"everyone": False, "users": [], "groups": []}

#: Most names in one environment's ``users`` or ``groups``.
MAX_NAMES = 1000
#: Longest user or group name (JupyterHub's columns are 255 characters).
MAX_NAME_LENGTH = 255


class SharingError(ValueError):
    """A ``sharing`` that cannot be stored; ``field`` names the part."""

    def __init__(self, field, reason):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_sharing(value, current=None):
    """A request's ``sharing`` as a clean dict (keys missing from it keep
    ``current``'s values, or the private default). Raises SharingError."""
    if not isinstance(value, dict):
        raise SharingError(
            "sharing", 'must be an object: {"everyone": false, "users": [...], "groups": [...]}'
        )
    unknown = sorted(set(value) - {"everyone", "users", "groups"})
    if unknown:
        raise SharingError(f"sharing.{unknown[0]}", "is not a known field (everyone, users, groups)")
    result = dict(normalise(current) if current is not None else PRIVATE)
    if "everyone" in value:
        if not isinstance(value["everyone"], bool):
            raise SharingError("sharing.everyone", "must be true or false")
        result["everyone"] = value["everyone"]
    for key in ("users", "groups"):
        if key not in value:
            continue
        names = value[key]
        if not isinstance(names, list):
            raise SharingError(f"sharing.{key}", "must be a list of names")
        if len(names) > MAX_NAMES:
            raise SharingError(f"sharing.{key}", f"has more than {MAX_NAMES} names")
        clean = set()
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise SharingError(f"sharing.{key}", "every name must be a non-empty string")
            name = name.strip()
            if len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in name):
                raise SharingError(
                    f"sharing.{key}",
                    f"{name[:40]!r} is not a valid name (at most {MAX_NAME_LENGTH} printable characters)",
                )
            clean.add(name)
        result[key] = sorted(clean)
    return result


def normalise(sharing):
    """A stored ``sharing`` as the API shows it. None (rows from before
    sharing existed: 3.x, adopted, admins' of 4.0) is shared with everyone."""
    if not isinstance(sharing, dict):
        return dict(EVERYONE)
    return {
        "everyone": bool(sharing.get("everyone")),
        "users": list(sharing.get("users") or []),
        "groups": list(sharing.get("groups") or []),
    }


@dataclass(frozen=True)
class Viewer:
    """Who asks: a user's name, the names of their groups, and whether they are an admin."""

    name: str
    groups: frozenset = frozenset()
    admin: bool = False


class Access:
    """The sharing of one environment, in the form that is cheap to check."""

    __slots__ = ("owner", "everyone", "users", "groups")

    def __init__(self, owner, sharing):
        sharing = normalise(sharing)
        self.owner = owner
        self.everyone = sharing["everyone"]
        self.users = frozenset(sharing["users"])
        self.groups = frozenset(sharing["groups"])

    def allows(self, viewer: Viewer) -> bool:
        """May ``viewer`` use (list, start) this environment?"""
        return (
            viewer.admin
            or self.everyone
            or (self.owner is not None and viewer.name == self.owner)
            or viewer.name in self.users
            or (bool(viewer.groups) and not self.groups.isdisjoint(viewer.groups))
        )

    def manages(self, viewer: Viewer) -> bool:
        """May ``viewer`` rebuild, cancel, share or delete it?"""
        return viewer.admin or (self.owner is not None and viewer.name == self.owner)

    def shows(self, viewer: Viewer, built: bool) -> bool:
        """Does the environment exist for ``viewer``? Owners and admins see it
        in every state; the others only once built, and when they may use it."""
        return self.manages(viewer) or (built and self.allows(viewer))


def environment_for(viewer: Viewer, env, uid, manage=False, action="change it"):
    """``env`` (a stored environment, or None) as ``viewer`` may reach it.

    The one 404-or-403 decision: NotFound when it does not exist for them
    (so that names of private environments do not leak), Forbidden when
    ``manage`` is asked and they are neither its owner nor an admin
    ("Only the environment's owner or an admin may <action>").
    """
    access = Access(env.owner, env.sharing) if env is not None else None
    if access is None or not access.shows(viewer, env.image_id is not None):
        raise NotFound(f"No environment with uid {uid!r}")
    if manage and not access.manages(viewer):
        raise Forbidden(f"Only the environment's owner or an admin may {action}")
    return env
