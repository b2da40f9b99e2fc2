"""The end of a build: its result, the end of its log and its version, stored together.

:class:`FinishingMixin` is the part of :class:`~.manager.BuildManager` that
records a build's final state. Every successful build is a version
(``keep_versions`` decides when old ones go); the backend makes the
version's own reference once the result is stored, off the build's path.

A build whose image failed its check (a ``failed`` event with a ``check``
and an ``image_id``) is a version too, marked failed and never current: the
backend kept it under its version reference itself, and the environment's
image and status are those of any failed build (the previous image stays,
a first build is failed).
"""

from ..db import store
from .base import BUILT, FAILED, files_hash


class FinishingMixin:
    """Finishing builds (part of ``BuildManager``): uses its ``builder``,
    ``sessions``, ``build_logs`` and its timeline and hook helpers."""

    async def _finish(self, uid, event, release=None):
        """Record the final state of a build, then tell subscribers.

        Waits for the database when it is unavailable: the result is written
        once it is back, never dropped. ``release()``, when given, starts
        once the result is stored and subscribers were sent the final event,
        and goes on in the background (see :meth:`_released`).
        """
        result = f"the result of build {uid}"
        env = await self.build_logs.until_stored(
            result, lambda: store.get_environment(self.sessions, uid)
        )
        fields = {"finished": store.now(), "status": event.phase}
        message = event.message
        version = None
        if env is not None and event.phase == BUILT:
            fields.update(
                image_name=event.image_name or env.image_name,
                image_id=event.image_id,
                size=event.size,
                commit=built_commit(env, event) or env.commit,
                error=None,
            )
            # Every build is a version; the previous image stays, as one
            # (keep_versions decides when it goes).
            version = self._new_version(env, event, fields)
        elif env is not None:
            fields["error"] = event.message
            if env.image_id and env.build_number > 1:
                message = f"{event.message}. The previous image is kept and still used."
                fields["error"] = message
            if failed_check(event):
                # Recorded (what it holds, why it failed), never current:
                # the environment keeps its image, as after any failure.
                version = self._new_version(
                    env, event,
                    {**fields, "image_name": env.image_name, "commit": built_commit(env, event)},
                )
        # The result, the final event and the lines not yet stored are
        # written in one transaction: a kill can never leave a result
        # without the end of its log (the restarted service would not
        # re-attach to a finished build). Subscribers hear of the end only
        # once it is stored (a client that saw it may ask for the
        # environment at once).
        log = self.build_logs.get(uid)
        stored = []
        if log is not None:
            log.add(event.phase, message)
            # flush() says itself when the database goes away and comes back.
            stored = await self.build_logs.until_stored(
                None,
                lambda: self.build_logs.flush(
                    uid, fields if env is not None else None, publish=False, version=version
                ),
            )
        elif env is not None:
            await self.build_logs.until_stored(
                result,
                lambda: store.update_environment(self.sessions, uid, version=version, **fields),
            )
        self._mark(uid, "result stored")
        if log is not None:
            log.publish(stored)
            self._mark(uid, "final event sent")
        if version is not None and event.phase == BUILT:
            self._run_hook(self._keep_version(uid, fields["image_name"], version))
        if release is not None:
            # Runs from the next turn of the loop, after subscribers had the end.
            self._release_later(uid, release)
        self.build_logs.end(uid)
        self.log.info("Build %s finished: %s", uid, event.phase)
        if release is None:
            timeline = self._timelines.pop(uid, None)
            if timeline is not None:
                self.log.debug("Build %s timeline: %s", uid, timeline.summary())

    def _new_version(self, env, event, fields):
        """The fields of the Version a build makes (stored with its result):
        a successful one, or one whose image failed its check.

        Its own reference is only named here; the backend makes it once the
        result is stored (:meth:`_keep_version`), off the build's path. Until
        the next build moves the environment's name, the environment's name
        keeps the image; a kill in between is made good at the next start
        (adoption.py gives a current version its missing reference).
        """
        image_name = fields["image_name"]
        duration = None
        if env.started is not None:
            duration = round((fields["finished"] - env.started).total_seconds(), 3)
        return {
            "number": env.build_number,
            "image_name": self.builder.version_name(image_name, env.build_number),
            "image_id": event.image_id or image_name,
            "commit": fields["commit"],
            "built_at": fields["finished"],
            "size": event.size,
            "duration": duration,
            "built_by": env.requested_by,
            "reason": env.build_reason or "request",
            "check": event.check,
            "inside": event.inside,
            "packages": event.packages,
            "builder_image": event.builder_image,
            "builder_image_id": event.builder_image_id,
            # An environment from files: the files it was built from (while
            # it builds, the environment's files cannot change).
            "files": dict(env.files or {}) if env.source == "files" else None,
        }

    async def _keep_version(self, uid, image_name, version):
        try:
            await self.builder.keep_version(image_name, version["image_id"], version["number"])
        except Exception as e:
            # The version stays usable for a rollback by its image id while
            # the environment's name keeps the image; the next start tries again.
            self.log.warning("Could not tag build %d of %s: %s", version["number"], uid, e)


def built_commit(env, event):
    """The commit a build of ``env`` made: for an environment from files, the
    content hash of its files (the same files, the same commit)."""
    if env.source == "files":
        return files_hash(env.files)
    return event.commit


def failed_check(event):
    """Whether ``event`` ends a build whose image was made but failed its check."""
    return (
        event.phase == FAILED
        and event.image_id is not None
        and (event.check or {}).get("status") == "failed"
    )
