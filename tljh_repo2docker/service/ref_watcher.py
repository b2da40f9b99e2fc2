"""Rebuilding environments whose ref moved: the ref poller.

Every ``TljhRepo2Docker.ref_poll_interval`` seconds (give or take a tenth,
so that many hubs do not ask one git host at once), each environment with
``auto_rebuild`` on, built at least once and not queued or building, has
its repository asked where its ref is (``git ls-remote``, a few at a time).
What it saw is recorded (``remote_commit``, ``remote_checked``,
``remote_error``); when the ref is at another commit than the one built,
a rebuild is queued (reason "poll") through service/lifecycle.py, like a user's.

Never in a loop: a rebuild that failed (or was cancelled) for a commit is
not tried again until the ref moves on to another one; ``remote_commit``
remembers the commit acted on.

Rebuild only what changed: a push that needs no build (the commit and
builder of the current version, or with ``rebuild_on: "environment"`` a
push that changes none of the files repo2docker reads:
Lifecycle.push_skip_reason) is skipped, logged, and recorded in
``remote_error`` as ``skipped: <why>``; it is not asked again until the ref
moves on.

An environment registered from an image (``source`` "image") has its
reference pulled again instead (through the builder's ``image_content_id``):
when it points at another image than the current version's, a rebuild
(a re-pull) is queued the same way; ``remote_commit`` holds the image id seen.

What is not polled: a ref that is a full commit id (it never moves);
private repositories (their credentials are never stored: the poller has
none, and refuses to guess); repositories that are not git URLs (BinderHub's
short specs such as ``gh`` ones).
"""

import asyncio
import random
import re
import shutil
import tempfile

from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from . import image_source
from . import lifecycle as rebuilds
from ..db import store
from ..errors import ServiceError
from .push_webhooks import is_full_sha
from .remote_git import RemoteGitError, git_environment, last_line, patterns, resolve, run_git

PRIVATE = (
    "not checked: the repository is private and its credentials are never stored; "
    "rebuild it by hand with the credentials"
)
NOT_A_URL = "not checked: only repositories given as git URLs can be checked"
NO_IMAGES = "not checked: this build backend cannot look at images"
#: How ``remote_error`` starts when a push was skipped (not an error: a note).
SKIPPED = "skipped: "
_ABBREVIATED = re.compile(r"^[0-9a-fA-F]{7,39}$")


class LsRemoteError(Exception):
    """``git ls-remote`` did not answer where the ref is; the message says why (for owners)."""


def same_commit(a, b):
    """Whether two commit ids (either may be abbreviated) name the same commit."""
    if not a or not b:
        return False
    a, b = a.lower(), b.lower()
    return a.startswith(b) or b.startswith(a)


def should_rebuild(env, remote):
    """Whether ``env`` should be rebuilt now that its ref is at ``remote``."""
    built = env.commit or env.remote_commit
    if not remote or not built or same_commit(remote, built):
        return False
    if env.status in (store.FAILED, store.CANCELLED) and same_commit(remote, env.remote_commit):
        return False  # already tried for this commit: wait until the ref moves on
    return True


class RefWatcher(LoggingConfigurable):
    """Checks the refs of auto-rebuilt environments and rebuilds the moved ones."""

    concurrency = Integer(
        4,
        help="""
        How many repositories are checked (``git ls-remote``) at once.
        Default: 4.
        """,
    ).tag(config=True)

    timeout = Float(
        30,
        help="""
        Seconds one ``git ls-remote`` may take before it is stopped and the
        check recorded as failed. Default: 30.
        """,
    ).tag(config=True)

    def __init__(self, *, sessions=None, lifecycle=None, ready=None, interval=300, **kwargs):
        """``sessions``: the database; ``lifecycle`` (service/lifecycle.py)
        queues the rebuilds; ``ready``: an asyncio.Event set once builds can
        be queued; ``interval``: seconds between rounds (``ref_poll_interval``)."""
        super().__init__(**kwargs)
        self.sessions = sessions
        self.lifecycle = lifecycle
        self.ready = ready
        self.interval = interval
        self._home = None

    def git_environment(self):
        """The environment of ``git ls-remote``: no secrets, no prompts."""
        if self._home is None:
            # git gets an empty home of its own: no user configuration,
            # credential helper or .netrc of the service's user is used.
            self._home = tempfile.mkdtemp(prefix="tljh-r2d-git-")
        return git_environment(self._home)

    async def ls_remote(self, repo, ref):
        """The commit ``ref`` of ``repo`` is at (None for an abbreviated commit
        id, which no ref is named); LsRemoteError when git cannot say."""
        try:
            code, out, err = await run_git(
                ["ls-remote", "--", repo, *patterns(ref)],
                env=self.git_environment(), timeout=self.timeout,
            )
        except RemoteGitError:
            raise LsRemoteError(f"git ls-remote took longer than {self.timeout:g}s") from None
        if code != 0:
            message = last_line(err)
            if "terminal prompts disabled" in message or "Authentication failed" in message:
                message = "the repository asks for credentials (it is private?)"
            raise LsRemoteError(f"git ls-remote failed: {message or code}")
        commit = resolve(out.decode("utf-8", "replace"), ref)
        if commit is None and _ABBREVIATED.match(ref):
            return None  # an abbreviated commit id: it never moves either
        if commit is None:
            raise LsRemoteError(f"the repository has no branch or tag {ref!r}")
        return commit

    def pollable(self, env):
        """Why ``env`` cannot be checked (None when it can)."""
        if env.private:
            return PRIVATE
        if env.provider != "git" and "://" not in env.repo:
            return NOT_A_URL
        return None

    async def check(self, env):
        """Check one environment; queue its rebuild when its ref moved."""
        if env.source == "image":
            await self.check_image(env)
            return
        if is_full_sha(env.ref):
            return  # a commit id never moves
        sessions = self.sessions
        problem = self.pollable(env)
        if problem:
            if env.remote_error != problem:
                await store.update_environment(
                    sessions, env.uid, remote_error=problem, remote_checked=store.now()
                )
            return
        try:
            remote = await self.ls_remote(env.repo, env.ref)
        except LsRemoteError as e:
            self.log.info("Checking the ref of %s: %s", env.uid, e)
            await store.update_environment(
                sessions, env.uid, remote_error=str(e), remote_checked=store.now()
            )
            return
        if remote is None:
            return
        seen = {"remote_commit": remote, "remote_checked": store.now(), "remote_error": None}
        if not should_rebuild(env, remote):
            await store.update_environment(sessions, env.uid, **seen)
            return
        if same_commit(remote, env.remote_commit) and (env.remote_error or "").startswith(SKIPPED):
            # skipped already for this commit: not asked again until the ref moves
            await store.update_environment(sessions, env.uid, remote_checked=store.now())
            return
        skip = await self.lifecycle.push_skip_reason(env, remote)
        if skip:
            self.log.info("The ref %s of %s moved to %s: not rebuilt, %s", env.ref, env.uid, remote[:12], skip)
            seen["remote_error"] = SKIPPED + skip
            await store.update_environment(sessions, env.uid, **seen)
            return
        self.log.info(
            "The ref %s of %s moved to %s: rebuilding", env.ref, env.uid, remote[:12]
        )
        try:
            await self.lifecycle.queue_rebuild(env, reason=rebuilds.POLL, fields=seen)
        except rebuilds.AlreadyBuilding:
            pass  # someone was quicker: that build takes the new commit
        except ServiceError as e:
            # a quota (try again at the next check) or the environment is gone
            seen["remote_error"] = f"the rebuild for {remote[:12]} was refused: {e.log_message}"
            self.log.info("Auto-rebuild of %s refused: %s", env.uid, e.log_message)
            await store.update_environment(sessions, env.uid, **seen)

    async def check_image(self, env):
        """Check an environment registered from an image: pull its reference
        again (through the builder) and queue a rebuild when it points at
        another image than the current version's."""
        sessions = self.sessions
        builder = self.lifecycle.build_manager.builder
        if getattr(builder, "image_content_id", None) is None:
            if env.remote_error != NO_IMAGES:
                await store.update_environment(
                    sessions, env.uid, remote_error=NO_IMAGES, remote_checked=store.now()
                )
            return
        try:
            remote = await asyncio.wait_for(
                builder.image_content_id(env.repo, image_name=env.image_name),
                image_source.LOOK_TIMEOUT,
            )
        except asyncio.TimeoutError:
            message = f"pulling {env.repo} took longer than {image_source.LOOK_TIMEOUT} s"
            self.log.info("Checking the image of %s: %s", env.uid, message)
            await store.update_environment(
                sessions, env.uid, remote_error=message, remote_checked=store.now()
            )
            return
        except Exception as e:  # noqa: BLE001 - recorded for the owner, tried again next round
            message = str(e) or e.__class__.__name__
            self.log.info("Checking the image of %s: %s", env.uid, message)
            await store.update_environment(
                sessions, env.uid, remote_error=message, remote_checked=store.now()
            )
            return
        if remote is None:
            await store.update_environment(
                sessions, env.uid, remote_checked=store.now(),
                remote_error=f"the image {env.repo} is not on the Docker engine",
            )
            return
        seen = {"remote_commit": remote, "remote_checked": store.now(), "remote_error": None}
        if not should_rebuild(env, remote):
            await store.update_environment(sessions, env.uid, **seen)
            return
        self.log.info("The image %s of %s is now %s: pulling it again", env.repo, env.uid, remote[:19])
        try:
            await self.lifecycle.queue_rebuild(env, reason=rebuilds.POLL, fields=seen)
        except rebuilds.AlreadyBuilding:
            pass
        except ServiceError as e:
            seen["remote_error"] = f"the re-pull for {remote[:19]} was refused: {e.log_message}"
            self.log.info("Auto-rebuild of %s refused: %s", env.uid, e.log_message)
            await store.update_environment(sessions, env.uid, **seen)

    async def check_all(self):
        """One round: every environment to check, ``concurrency`` at a time."""
        limit = asyncio.Semaphore(max(1, self.concurrency))

        async def one(env):
            async with limit:
                try:
                    await self.check(env)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.log.exception("Checking the ref of %s failed", env.uid)

        envs = await store.auto_rebuild_environments(self.sessions)
        await asyncio.gather(*(one(env) for env in envs))

    async def run(self):
        """Check every ``ref_poll_interval`` seconds, once builds can be queued."""
        await self.ready.wait()
        try:
            while True:
                interval = self.interval
                await asyncio.sleep(interval * random.uniform(0.9, 1.1))
                try:
                    await self.check_all()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.log.warning(
                        "Checking the refs of auto-rebuilt environments failed: %s: %s",
                        e.__class__.__name__, str(e).splitlines()[0] if str(e) else "",
                    )
        finally:
            if self._home is not None:
                shutil.rmtree(self._home, ignore_errors=True)
                self._home = None
