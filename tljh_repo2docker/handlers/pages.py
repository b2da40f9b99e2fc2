"""Server-rendered HTML pages."""

import mimetypes
from pathlib import Path

from tornado import web

from ..db import store
from .base import BaseHandler, admin_only


class RootHandler(BaseHandler):
    # JupyterHub waits at its start for this URL to answer without a 5xx, and
    # does not start otherwise: it must answer while the database is away.
    needs_database = False

    @web.authenticated
    async def get(self):
        self.redirect(self.url("servers"))


class EnvironmentsPageHandler(BaseHandler):
    @web.authenticated
    @admin_only
    async def get(self):
        environments = await store.list_environments(self.sessions)
        positions = self.builds.positions()
        app = self.tljh_app
        self.finish(
            self.render_template(
                "environments.html",
                page="environments",
                environments=[store.as_dict(e, position=positions.get(e.uid)) for e in environments],
                machine_profiles=app.machine_profiles,
                node_selector=app.node_selector,
                default_memory_limit=app.default_memory_limit,
                default_cpu_limit=app.default_cpu_limit,
                providers=app.provider_choices,
                default_provider=app.default_provider,
                supports_credentials=app.builder.supports_credentials,
                supports_build_args=app.builder.supports_build_args,
            )
        )


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
