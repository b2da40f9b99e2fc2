"""What a builder (a holder of the build scope who is not an admin) may ask for.

Admins are never limited. Each refusal is a JSON error whose ``field`` names
what to change: the quota's setting for counts and sizes, the request's
field (``memory``, ``cpu``, ``machine_profile``) for limits.
"""

import asyncio
import collections

from traitlets import Any, Integer, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..db import store
from ..errors import FieldError
from ..limits import LimitError, memory_bytes, parse_cpu, parse_memory


def _size_text(size):
    for unit, scale in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2)):
        if size >= scale:
            return f"{size / scale:.3g}{unit}"
    return f"{size}B"


class Quotas(LoggingConfigurable):
    """The quotas of builders, checked before anything is stored."""

    environments_per_user = Integer(
        10,
        help="""
        Most environments one builder may own (built or not, failed ones
        included); adding one more is refused with 403 (field
        ``environments_per_user``) until they delete one. 0: no limit.
        Admins are not limited. Default: 10.
        """,
    ).tag(config=True)

    builds_per_user = Integer(
        1,
        help="""
        Most builds of one builder queued or running at once; one more
        (adding or rebuilding) is refused with 429 (field
        ``builds_per_user``) until one ends. With this, one user cannot fill
        the build queue; the queue also takes owners in turn (round robin).
        0: no limit. Admins are not limited. Default: 1.
        """,
    ).tag(config=True)

    image_size_per_user = Unicode(
        "20G",
        allow_none=True,
        help="""
        Most disk space the built images of one builder may take together
        (the sizes of their environments' images, like ``20G`` or ``500M``;
        a bare number is GB). Once reached, adding or rebuilding is refused
        with 403 (field ``image_size_per_user``) until they delete
        environments. Empty or None: no limit. Admins are not limited.
        Default: ``20G``.
        """,
    ).tag(config=True)

    @validate("image_size_per_user")
    def _validate_size(self, proposal):
        try:
            return parse_memory(proposal.value, field="Quotas.image_size_per_user")
        except LimitError as e:
            raise TraitError(str(e)) from None

    max_memory = Unicode(
        "4G",
        allow_none=True,
        help="""
        The largest memory limit a builder may give their environments
        (``512M``, ``2G``; a bare number is GB). A larger one is refused with
        403 (field ``memory``); an environment added without one gets
        this. When ``machine_profiles`` are configured, they are a
        builder's only choice (the first when none is chosen). Empty or
        None: no limit. Default: ``4G``.
        """,
    ).tag(config=True)

    @validate("max_memory")
    def _validate_memory(self, proposal):
        try:
            return parse_memory(proposal.value, field="Quotas.max_memory")
        except LimitError as e:
            raise TraitError(str(e)) from None

    max_cpu = Any(
        2,
        allow_none=True,
        help="""
        The largest CPU limit (number of CPUs, may be fractional) a builder
        may give their environments. A larger one is refused with 403 (field
        ``cpu``); an environment added without one gets this. When
        ``machine_profiles`` are configured, they are a builder's only
        choice (the first when none is chosen). None: no limit. Default: 2.
        """,
    ).tag(config=True)

    @validate("max_cpu")
    def _validate_cpu(self, proposal):
        try:
            return parse_cpu(proposal.value, field="Quotas.max_cpu")
        except LimitError as e:
            raise TraitError(str(e)) from None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._locks = collections.defaultdict(asyncio.Lock)

    def lock(self, user):
        """The lock under which one user's usage is counted and changed."""
        if len(self._locks) > 10000:
            self._locks = collections.defaultdict(
                asyncio.Lock, {u: lock for u, lock in self._locks.items() if lock.locked()}
            )
        return self._locks[user]

    def check_request(self, fields, body):
        """The checked ``fields`` of a builder's new environment (limits capped
        where none was asked for); FieldError for a limit above the quota."""
        app = self.parent
        asked_memory = body.get("memory") not in (None, "")
        asked_cpu = body.get("cpu") not in (None, "")
        if app.machine_profiles and not fields.get("machine_profile") and (asked_memory or asked_cpu):
            raise FieldError(
                "machine_profile",
                "choose one of the machine profiles: "
                + ", ".join(p["label"] for p in app.machine_profiles),
                status=403,
            )
        if fields.get("machine_profile"):
            return fields  # profiles are what the admin offers: within the quota
        fields = dict(fields)
        if app.machine_profiles:  # none chosen: the first, as the Add dialog offers
            first = app.machine_profiles[0]
            fields.update(machine_profile=first["label"], memory=first["memory"], cpu=first["cpu"])
            return fields
        if self.max_memory:
            largest = memory_bytes(self.max_memory)
            if fields.get("memory") and memory_bytes(fields["memory"]) > largest:
                raise FieldError(
                    "memory",
                    f"{fields['memory']} is more than builders may ask for "
                    f"(the quota Quotas.max_memory is {self.max_memory})",
                    status=403,
                )
            if not fields.get("memory"):
                fields["memory"] = self.max_memory
        if self.max_cpu:
            if fields.get("cpu") and fields["cpu"] > self.max_cpu:
                raise FieldError(
                    "cpu",
                    f"{fields['cpu']:g} CPUs is more than builders may ask for "
                    f"(the quota Quotas.max_cpu is {self.max_cpu:g})",
                    status=403,
                )
            if not fields.get("cpu"):
                fields["cpu"] = self.max_cpu
        return fields

    async def check_usage(self, sessions, user, new=False):
        """Refuse one more build of ``user`` (and, when ``new``, one more environment)."""
        count, building, size = await store.owner_usage(sessions, user)
        if new and self.environments_per_user and count >= self.environments_per_user:
            raise FieldError(
                "environments_per_user",
                f"you own {count} environments, the most a user may have "
                f"(quota: {self.environments_per_user}): delete one first",
                status=403,
            )
        if self.builds_per_user and building >= self.builds_per_user:
            raise FieldError(
                "builds_per_user",
                f"you have {building} builds queued or running, the most a user may have "
                f"at once (quota: {self.builds_per_user}): wait until one ends",
                status=429,
            )
        if self.image_size_per_user and size >= memory_bytes(self.image_size_per_user):
            raise FieldError(
                "image_size_per_user",
                f"your environments' images take {_size_text(size)}, the most a user may have "
                f"(quota: {self.image_size_per_user}): delete environments first",
                status=403,
            )
