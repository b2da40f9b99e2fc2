"""Server-rendered HTML pages."""

from tornado import web

from ..db import store
from .base import BaseHandler, admin_only


class RootHandler(BaseHandler):
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


default_handlers = [
    (r"", RootHandler),
    (r"environments", EnvironmentsPageHandler),
]
