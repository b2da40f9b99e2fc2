"""Operations endpoints: the health check and Prometheus metrics."""

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from .. import metrics
from ..builds.base import BuildError
from ..db import store
from .base import APIHandler

#: The scope that lets a token read the metrics, as for JupyterHub's own /metrics.
METRICS_SCOPE = "read:metrics"


async def _bounded(coro, timeout):
    """Await ``coro`` at most ``timeout`` seconds; raise TimeoutError after that.

    Not ``asyncio.wait_for``: store queries finish even when cancelled (see
    ``store._uncancellable``), so a hung database would hang the check too.
    The abandoned task goes on alone and its result is dropped.
    """
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise TimeoutError(f"no answer in {timeout:g}s")
    return task.result()


class HealthHandler(APIHandler):
    """Unauthenticated: can the service use its database and its build backend?

    200 ``{"status": "ok", "database": "ok", "builder": "<backend>"}``, or 503
    in the API's error shape with the failing part's reason in its field.
    Reasons are the exception's class or the backend's user-safe message:
    never a URL with credentials, never a traceback.
    """

    async def prepare(self):
        # No authentication: a load balancer or an orchestrator asks, without
        # a token, and the answer must not depend on the hub being up.
        pass

    async def get(self):
        app = self.tljh_app
        timeout = app.health_check_timeout
        result = {"database": "ok", "builder": None}
        failed = []
        if app.not_ready():
            # Not upgraded (or not reachable) yet: the start-up retries.
            result["database"] = f"failed: {app.db_problem_public or 'starting'}"
            failed.append("database")
        else:
            try:
                await _bounded(store.ping(self.sessions), timeout)
            except Exception as e:
                reason = _reason(e)
                self.log.warning("Health check: the database failed: %s", reason)
                result["database"] = f"failed: {reason}"
                failed.append("database")
        try:
            result["builder"] = str(await _bounded(app.builder.check(), timeout))
            if app.not_ready(needs_builds=True):
                # Reachable, but the builds of before the start are not recovered yet.
                result["builder"] = "failed: recovering the builds and images of before the start"
                failed.append("builder")
        except Exception as e:
            reason = e.message if isinstance(e, BuildError) else _reason(e)
            self.log.warning("Health check: the build backend failed: %s", reason)
            result["builder"] = f"failed: {reason}"
            failed.append("builder")
        secret_problem = getattr(app, "secret_problem", None)
        if secret_problem:
            result["cookie_secret"] = "failed: the cookie secret file cannot be used (see the log)"
            failed.append("cookie_secret")
        if failed:
            message = "; ".join(f"{part}: {result[part][len('failed: '):]}" for part in failed)
            self.write_json({"status": 503, "message": message, **result}, status=503)
        else:
            self.write_json({"status": "ok", **result})


def _reason(exc):
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    # The class only: driver messages can carry host names, SQL or paths.
    return exc.__class__.__name__


class MetricsHandler(APIHandler):
    """Prometheus metrics, in the text exposition format.

    With ``authenticate_prometheus`` (the default), like JupyterHub's own
    /metrics: for admins of the service, and for tokens holding ``read:metrics``.
    """

    async def get(self):
        if self.tljh_app.authenticate_prometheus:
            user = self.current_user
            if not user:
                raise web.HTTPError(
                    403,
                    "Metrics need a JupyterHub API token with the read:metrics scope "
                    "(or set authenticate_prometheus to False)",
                )
            if not (self.is_admin or METRICS_SCOPE in user.get("scopes", ())):
                raise web.HTTPError(403, "Metrics need the read:metrics scope or admin rights")
        await metrics.update_gauges(self.builds, self.sessions)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(metrics.REGISTRY))


default_handlers = [
    (r"health", HealthHandler),
    (r"metrics", MetricsHandler),
]
