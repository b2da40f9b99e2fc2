"""Whether a server can start from an environment now, and if not, why: said truthfully.

An environment converted from tljh-repo2docker 3.x (``db/legacy.py``), or
made from an image the database did not know, is ``built`` before the
service knows its image: the image id comes with its adoption
(``builds/adoption.py``), which the build manager's recovery
(``builds/recovery.py``) runs at every start once the build backend answers.
A start in that window waits for the recovery, a few seconds at most, and
then reads the environment again; if the image is still not adopted, it is
told to try again (503 with ``Retry-After``), never that a built environment
is "not built yet".
"""

import asyncio

from ..db import store
from ..errors import FieldError

#: Seconds a start waits for the recovery of the builds and images of before
#: the service's start, when its environment's image is not adopted yet.
RECOVERY_WAIT = 10.0
#: ``Retry-After`` (seconds) when the image is still not adopted.
RETRY_AFTER = 5


def awaiting_adoption(env):
    """Built, but without the image id that its adoption gives."""
    return env.status == store.BUILT and env.image_id is None


def refusal(env, *, recovered=True, backend_problem=None, unstartable=None):
    """Why no server can start from ``env`` now, as a FieldError; None when one can.

    ``recovered``: the builds and images of before the start are recovered
    (adoption ran). ``backend_problem``: why the build backend cannot be
    used yet, if it cannot. ``unstartable(image_name)``: the backend's own
    reason (``Builder.unstartable``), or None.
    """
    if env.image_id is None:
        if env.status != store.BUILT:
            return FieldError(
                "environment", f"{env.name!r} is not built yet (status: {env.status})", status=409
            )
        if not recovered:
            why = (
                f"the build backend cannot be used yet: {backend_problem}"
                if backend_problem
                else "the service is recovering the builds and images of before its start"
            )
            return FieldError(
                "environment",
                f"{env.name!r} is being prepared: its image is not adopted yet ({why}); "
                "try again in a few seconds",
                status=503,
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        # Adoption ran and could not find or label the image (the service's
        # log says why); it runs again at the next start.
        return FieldError(
            "environment",
            f"{env.name!r} is built, but the service could not adopt its image "
            f"{env.image_name} (see the service's log): restart the service to try again, "
            "or rebuild the environment",
            status=409,
        )
    if unstartable is not None and (reason := unstartable(env.image_name)):
        return FieldError("environment", f"{env.name!r} cannot be started: {reason}", status=409)
    return None


async def startable(
    sessions, env, recovered=None, *, wait=RECOVERY_WAIT, backend_problem=None, unstartable=None
):
    """``env``, read again if it had to wait, once a server can start from it.

    ``recovered`` is the event set once the builds and images of before the
    start are recovered (``TljhRepo2Docker.builds_ready``; None: they are).
    An environment whose image awaits its adoption waits for it, up to
    ``wait`` seconds. ``backend_problem()`` says why the build backend
    cannot be used yet, if it cannot. Raises the :func:`refusal`.
    """
    if awaiting_adoption(env) and recovered is not None and not recovered.is_set():
        try:
            await asyncio.wait_for(recovered.wait(), wait)
        except asyncio.TimeoutError:
            pass
        again = await store.get_environment(sessions, env.uid)
        if again is None:  # removed meanwhile
            raise FieldError("environment", f"no environment named {env.name!r}", status=404)
        env = again
    done = recovered is None or recovered.is_set()
    error = refusal(
        env,
        recovered=done,
        backend_problem=None if done or backend_problem is None else backend_problem(),
        unstartable=unstartable,
    )
    if error is not None:
        raise error
    return env
