"""The push webhook of an environment: enabled by its owner, called by GitHub or GitLab.

``PUT`` and ``DELETE`` (owner or admin, logged in) enable and disable it;
``PUT`` answers the secret once. ``POST`` is the one route reachable
without a hub login: it is authenticated by the secret alone (see
webhooks.py), sets no cookie, never redirects, and answers every request
it does not accept with the same 403, so that nothing tells an uid that
exists from one that does not, or a webhook that is off from a bad
signature. It is rate limited per client address and per environment.

A push that needs no build (Lifecycle.push_skip_reason: the commit and
builder already current, or with ``rebuild_on: "environment"`` no file that
repo2docker reads changed) is answered ``{"queued": false, "reason": ...}``,
logged and recorded in ``remote_error`` (``skipped: ...``). Git hosts wait
about 10 s for an answer: when that check takes longer than
SKIP_CHECK_SECONDS, the push is built.
"""

import asyncio
import json

from tornado import web

from ..service import lifecycle as rebuilds
from ..service import push_webhooks as webhooks
from ..service.ref_watcher import SKIPPED
from ..db import store
from .base import APIHandler
from .environments import EnvironmentAPIMixin

#: The one answer to every refused webhook call.
REFUSED = json.dumps({"status": 403, "message": "Forbidden"})
#: Seconds the webhook waits to know whether a push needs a build (then builds).
SKIP_CHECK_SECONDS = 8


class WebhookAPIHandler(EnvironmentAPIMixin, APIHandler):
    builds_needed_for = ("POST",)

    async def prepare(self):
        if self.request.method != "POST":
            await super().prepare()
            return
        # No hub login here: the signature is the authentication.
        reason = self.tljh_app.not_ready(True)
        if reason:
            self.set_header("Retry-After", "5")
            raise web.HTTPError(503, reason)
        limit = self.tljh_app.max_body_size
        if len(self.request.body or b"") > limit:
            raise web.HTTPError(413, f"The request body is larger than {limit} bytes")
        wait = self.limits("address").take(self.client_address())
        uid = self.path_args[0] if self.path_args else ""
        wait = max(wait, self.limits("environment").take(uid))
        if wait:
            # answered here: raising would clear the headers (Retry-After)
            self.set_status(429)
            self.set_header("Retry-After", str(int(wait) + 1))
            self.finish(json.dumps({"status": 429, "message": "Too many webhook calls: try again later"}))

    def limits(self, kind):
        """The token buckets of ``kind`` ("address" or "environment"), one set per service."""
        key = f"webhook_limits_{kind}"
        if key not in self.settings:
            self.settings[key] = webhooks.TokenBuckets(self.tljh_app.webhook_rate_limit)
        return self.settings[key]

    def client_address(self):
        # Behind configurable-http-proxy the last X-Forwarded-For entry is
        # the address the proxy saw; X-Real-IP (which Tornado would take) is
        # whatever the client says.
        forwarded = self.request.headers.get("X-Forwarded-For")
        if forwarded:
            return forwarded.split(",")[-1].strip()
        return self.request.remote_ip

    def get_current_user(self):
        if self.request.method == "POST":
            return None  # never the hub's cookie: this route is called by git hosts
        return super().get_current_user()

    def refuse(self):
        self.set_status(403)
        self.finish(REFUSED)

    async def post(self, uid):
        body = self.request.body or b""
        env = await store.get_environment(self.sessions, uid)
        secret = webhooks.secret_of(
            self.tljh_app.cookie_secret, uid, env.webhook_secret_hash if env else None
        )
        try:
            sender = webhooks.check_signature(secret, body, self.request.headers)
            push = webhooks.parse_event(sender, self.request.headers, body)
        except webhooks.WebhookRefused:
            return self.refuse()
        if env is None:  # cannot be (the secret matched), but never answer about no one
            return self.refuse()
        if push is None:  # a ping, or an event that is not a push
            return self.write_json({"queued": False})
        if push.deleted or not webhooks.ref_matches(env.ref, push.ref, push.default_branch):
            return self.write_json({"queued": False})
        if self.builds.is_active(env.uid):
            return self.write_json({"queued": False, "reason": "a build is in progress"}, 202)
        seen = {"remote_checked": store.now(), "remote_error": None}
        if push.after and not push.deleted:
            seen["remote_commit"] = push.after.lower()[:64]
        skip = await self.skip_reason(env, push)
        if skip:
            self.log.info("Push to %s at %s not rebuilt: %s", env.uid, push.after[:12], skip)
            seen["remote_error"] = SKIPPED + skip
            await store.update_environment(self.sessions, env.uid, **seen)
            return self.write_json({"queued": False, "reason": f"not rebuilt: {skip}"})
        try:
            await self.tljh_app.lifecycle.queue_rebuild(
                env, reason=rebuilds.WEBHOOK, fields=seen
            )
        except rebuilds.AlreadyBuilding:
            return self.write_json({"queued": False, "reason": "a build is in progress"}, 202)
        except rebuilds.NeedsCredentials:
            raise web.HTTPError(
                409, "The repository is private: the service cannot rebuild it without credentials"
            ) from None
        self.write_json({"queued": True}, 202)

    async def skip_reason(self, env, push):
        """Why ``push`` needs no build, or None (build): see Lifecycle.push_skip_reason."""
        commit = (push.after or "").lower()
        if not webhooks.is_full_sha(commit):
            return None
        try:
            return await asyncio.wait_for(
                self.tljh_app.lifecycle.push_skip_reason(env, commit), SKIP_CHECK_SECONDS
            )
        except asyncio.TimeoutError:
            self.log.info(
                "Push to %s: which files changed is not known within %ss: building",
                env.uid, SKIP_CHECK_SECONDS,
            )
            return None

    @web.authenticated
    async def put(self, uid):
        """Enable the webhook (or give it a new secret): the secret is shown this once."""
        env = await self.get_env(uid, manage=True)
        if env.private:
            raise web.HTTPError(
                409,
                "The repository is private: its credentials are never stored, so a "
                "webhook could not rebuild it. Rebuild it with the credentials instead",
            )
        if getattr(self.tljh_app, "secret_problem", None):
            raise web.HTTPError(
                503,
                "The service uses a temporary key (its cookie secret file cannot be read): "
                "a webhook secret made now would stop working at the next restart",
            )
        secret, stored = webhooks.new_secret(self.tljh_app.cookie_secret, env.uid)
        await store.update_environment(self.sessions, env.uid, webhook_secret_hash=stored)
        self.log.info("%s enabled the webhook of environment %s", self.current_user["name"], env.uid)
        url = f"{self.request.protocol}://{self.request.host}" + self.url(
            "api/environments", env.uid, "webhook"
        )
        self.write_json({"secret": secret, "url": url}, 201)

    @web.authenticated
    async def delete(self, uid):
        env = await self.get_env(uid, manage=True)
        await store.update_environment(self.sessions, env.uid, webhook_secret_hash=None)
        self.log.info("%s disabled the webhook of environment %s", self.current_user["name"], env.uid)
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"api/environments/([^/]+)/webhook", WebhookAPIHandler),
]
