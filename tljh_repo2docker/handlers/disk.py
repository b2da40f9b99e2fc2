"""The engine's disk, for admins: the report, prune, and the page."""

from tornado import web

from ..builds.base import BuildError
from .base import APIHandler, BaseHandler, FieldError, admin_only


class DiskAPIHandler(APIHandler):
    builds_needed_for = ("GET",)

    @web.authenticated
    @admin_only
    async def get(self):
        try:
            self.write_json(await self.disk.report())
        except BuildError as e:
            raise web.HTTPError(503, e.message) from None


class DiskPruneAPIHandler(APIHandler):
    builds_needed_for = ("POST",)

    @web.authenticated
    @admin_only
    async def post(self):
        body = self.get_json_body()
        unknown = sorted(set(body) - {"dry_run"})
        if unknown:
            raise FieldError(unknown[0], "is not a field of a prune (only dry_run)")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise FieldError("dry_run", "must be true or false")
        try:
            answer = await self.disk.prune(dry_run=dry_run)
        except BuildError as e:
            raise web.HTTPError(503, e.message) from None
        if not dry_run:
            self.log.info(
                "%s pruned the disk: %d bytes freed", self.current_user["name"], answer["freed"]
            )
        self.write_json(answer)


class DiskPageHandler(BaseHandler):
    @web.authenticated
    @admin_only
    async def get(self):
        self.finish(self.render_template("disk.html", page="disk"))


default_handlers = [
    (r"disk", DiskPageHandler),
    (r"api/disk", DiskAPIHandler),
    (r"api/disk/prune", DiskPruneAPIHandler),
]
