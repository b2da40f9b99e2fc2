"""Server-rendered HTML pages."""

import mimetypes
from pathlib import Path

from tornado import web

from ..access import Access
from ..db import store
from ..hub_client import HubError
from ..service.environment_list import build_phases, summaries
from .base import BaseHandler, builders_only


class RootHandler(BaseHandler):
    # JupyterHub waits at its start for this URL to answer without a 5xx, and
    # does not start otherwise: it must answer while the database is away.
    needs_database = False

    @web.authenticated
    async def get(self):
        self.redirect(self.url("servers"))


class EnvironmentsPageHandler(BaseHandler):
    @web.authenticated
    @builders_only
    async def get(self):
        """Admins: every environment (filter by owner with ``?owner=``);
        builders: their own and those shared with them."""
        viewer = self.viewer
        owner = self.get_argument("owner", "") if self.is_admin else ""
        environments = []
        for env in await store.list_environments(self.sessions):
            access = Access(env.owner, env.sharing)
            if not access.shows(viewer, env.image_id is not None):
                continue
            if owner and env.owner != owner:
                continue
            environments.append((env, access.manages(viewer)))
        positions = self.builds.positions()
        try:
            groups = await self.hub.groups()
        except HubError as e:
            self.log.warning("Cannot list the hub's groups (give the service list:groups): %s", e.message)
            groups = []
        # The one-line summary of each current version, as api/environments gives it.
        lines = await summaries(self.sessions, [e.uid for e, _ in environments])
        # The phase of the running builds (building, checking, pushing...), as the list gives it.
        phases = build_phases(
            self.builds, [e.uid for e, manages in environments if manages and e.status == store.BUILDING]
        )
        app = self.tljh_app
        limits = {
            name: getattr(app, name, None)
            for name in ("max_files_count", "max_files_size", "max_archive_size")
        }
        self.finish(
            self.render_template(
                "environments.html",
                page="environments",
                environments=[
                    {
                        **store.as_dict(
                            e, position=positions.get(e.uid), admin=manages, summary=lines.get(e.uid)
                        ),
                        "manages": manages,
                        **({"phase": phases[e.uid]} if e.uid in phases else {}),
                    }
                    for e, manages in environments
                ],
                hub_groups=groups,
                owner_filter=owner,
                owners=sorted({e.owner for e, _ in environments if e.owner}),
                machine_profiles=app.machine_profiles,
                node_selector=app.node_selector,
                default_memory_limit=app.default_memory_limit,
                default_cpu_limit=app.default_cpu_limit,
                providers=app.provider_choices,
                default_provider=app.default_provider,
                supports_credentials=app.builder.supports_credentials,
                supports_build_args=app.builder.supports_build_args,
                # the default builder first; a choice is offered when there is one
                builder_images=app.builder_choices,
                max_files_count=limits["max_files_count"],
                max_files_size=_size_text(limits["max_files_size"]),
                max_archive_size=_size_text(limits["max_archive_size"]),
                max_archive_bytes=_size_bytes(limits["max_archive_size"]),
            )
        )


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size_bytes(value):
    """Bytes of a size setting (an int, or text like "5M"), or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "")
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        return None


def _size_text(value):
    """A size setting for people: "5 MB" (from 5M or 5242880), or None."""
    size = _size_bytes(value)
    if not size:
        return None
    for unit in ("GB", "MB", "KB"):
        scale = {"GB": 1024**3, "MB": 1024**2, "KB": 1024}[unit]
        if size >= scale:
            amount = size / scale
            return f"{amount:.0f} {unit}" if amount == int(amount) else f"{amount:.1f} {unit}"
    return f"{size} bytes"


class LogoHandler(web.RequestHandler):
    """The image of ``logo_file``, shown in the navigation bar (no login needed)."""

    def get(self):
        path = Path(self.settings["tljh_app"].logo_file)
        try:
            data = path.read_bytes()
        except OSError:
            raise web.HTTPError(404) from None
        kind, _ = mimetypes.guess_type(path.name)
        self.set_header("Content-Type", kind or "application/octet-stream")
        self.set_header("Cache-Control", "max-age=3600")
        self.finish(data)


default_handlers = [
    (r"", RootHandler),
    (r"environments", EnvironmentsPageHandler),
]
