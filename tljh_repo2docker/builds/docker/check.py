"""Checking a built image before it becomes an environment's current version.

:class:`CheckMixin` is the part of
:class:`~tljh_repo2docker.builds.docker.DockerBuilder` that starts the image
built as a staging name the way the spawner would, and says whether servers
can start from it. It runs before the image gets the environment's name
(see :meth:`~.follow.FollowMixin._follow`), so an image that fails never
replaces the one servers start from.

**The built-in check** starts ``jupyterhub-singleuser`` in a container of
the image (its own user and entry point, the environment's memory and CPU
limits, ``network_mode: none``: nothing but its own loopback), with the
``JUPYTERHUB_*`` values a spawner gives a server. A single-user server asks
its hub's API once as it starts and exits when nobody answers, so the
container's command starts a stand-in first: a few lines of Python (the
interpreter of ``jupyterhub-singleuser`` itself) answering on the loopback
like the hub's API, with the hub's version. A probe ``docker exec``-ed in the
container then asks the server's ``/user/<name>/api`` until it answers or
``check_timeout`` passes, and reads the JupyterHub version the answer carries
(``X-JupyterHub-Version``, set by the single-user server itself).

**The owner's check** (the environment's ``check_command``) runs next, with
``sh -c`` in a fresh container of the image with the same limits and no
network, bounded by ``check_command_timeout``; exit code 0 passes.

The output of both goes to the build's log. The result is
``{"status": "passed" | "failed", "message": ...}``; a failed message says
what to change. Check containers carry :data:`CHECK_LABEL` (the build's
uid) and :data:`CHECK_ROLE_LABEL`, are removed once the check is done, also
when the build is cancelled or the service stops following it, and are
never taken for builds (they have no ``BUILD_LABEL``). A service killed
during a check leaves its server running: followed again after the restart,
the build takes that server over (:meth:`CheckMixin._take_over_checks`)
rather than starting another, so a service restarted often still gets to
the end of the check.
"""

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass

import aiodocker

from ...limits import LimitError, memory_bytes
from ..base import LOG, STATUS, BuildEvent
from . import credentials
from .engine import ENGINE_ERRORS, forget, shielded

#: Container label of a check's containers: the build's uid.
CHECK_LABEL = "tljh_repo2docker.check"
#: What a check container does: "server", "command" or "inside" (the listing).
CHECK_ROLE_LABEL = "tljh_repo2docker.check_role"

PASSED = "passed"
FAILED = "failed"
SKIPPED = "skipped"

#: The server's user name, port and the stand-in hub's port, all on the loopback.
CHECK_USER = "check"
SERVER_PORT = 8888
HUB_PORT = 8081
SERVER_PREFIX = f"/user/{CHECK_USER}/"
SERVER_API = f"http://127.0.0.1:{SERVER_PORT}{SERVER_PREFIX}api"

#: What the server's command prints when the image has no jupyterhub-singleuser.
_NO_SINGLEUSER = "tljh-repo2docker: no jupyterhub-singleuser on the PATH"
NO_SINGLEUSER_MESSAGE = (
    "the image has no jupyterhub-singleuser: add `jupyterhub` to requirements.txt "
    "(or environment.yml)"
)

# The interpreter jupyterhub-singleuser runs with (its "#!" line): the one
# that certainly has the Python standard library, whatever else is on the PATH.
_FIND_PYTHON = (
    'su=$(command -v jupyterhub-singleuser) || { echo "%s" >&2; exit 127; }; '
    'py=$(sed -n "1s/^#![[:space:]]*//p" "$su"); '
) % _NO_SINGLEUSER

# The container's command: the stand-in hub in the background, then the
# server in its place (as the spawner starts it). $1: the stand-in's source,
# $2: the hub's version. ${py} unquoted: a "#!/usr/bin/env python3" line is
# a command and its argument.
_SERVER_SCRIPT = _FIND_PYTHON + '${py:-python3} -c "$1" "$2" & exec jupyterhub-singleuser'

# The stand-in for the hub's API: every request gets a 200 with the hub's
# version, which is all a single-user server asks of its hub as it starts.
_HUB_STAND_IN = f"""
import http.server, sys

class Hub(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = ('{{"version": "%s"}}' % sys.argv[1]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", sys.argv[1])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", {HUB_PORT}), Hub).serve_forever()
"""

# The probe, exec-ed in the server's container: asks $1 every 0.1 s for up to
# $2 seconds; prints one JSON line (the answer's status, JupyterHub version
# and start of body, or the last error).
_PROBE = """
import json, sys, time, urllib.error, urllib.request

url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        response = urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as e:
        response = e
    except Exception as e:
        if time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        print(json.dumps({"error": str(e) or e.__class__.__name__}))
        break
    print(json.dumps({
        "status": response.getcode(),
        "jupyterhub": response.headers.get("X-JupyterHub-Version"),
        "body": response.read(1000).decode("utf-8", "replace"),
    }))
    break
"""
_PROBE_SCRIPT = _FIND_PYTHON + 'exec ${py:-python3} -c "$1" "$2" "$3"'

# Lines of a failed check's output quoted in its message, at most.
_QUOTED_LINES = 3


@dataclass(frozen=True)
class CheckSpec:
    """What a build's check needs beyond the image: the owner's command and the
    environment's limits (from the request, or the build container's labels
    after a restart)."""

    command: str | None = None
    memory: str | None = None
    cpu: float | None = None

    def limits_text(self):
        parts = [self.memory or "no memory limit"]
        parts.append(f"{self.cpu:g} CPU" if self.cpu else "no CPU limit")
        return ", ".join(parts)


def result(status, message):
    return {"status": status, "message": message}


def parse_version(text):
    """``"5.2.1"`` -> ``(5, 2, 1)``; the leading numbers of a version, or None."""
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", text or "")
    if not match:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def version_below(version, minimum):
    """Whether version text ``version`` is older than ``minimum`` (both like ``"2.0"``)."""
    have, need = parse_version(version), parse_version(minimum)
    if have is None or need is None:
        return False
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) < need + (0,) * (width - len(need))


def major(version):
    parsed = parse_version(version)
    return f"{parsed[0]}.x" if parsed else version


def hub_version():
    """The JupyterHub this service runs with (the hub's, on the same machine), or None."""
    from importlib import metadata

    try:
        return metadata.version("jupyterhub")
    except metadata.PackageNotFoundError:
        return None


def server_verdict(probe, exit_code, output, timeout, minimum, hub):
    """The built-in check's result, from the probe's answer (a dict, or None when
    the container ended first), the container's exit code (None: still runs),
    its output lines, ``check_timeout``, the oldest JupyterHub allowed and the
    hub's version."""
    if probe is None or "error" in probe:
        if any(_NO_SINGLEUSER in line for line in output) or exit_code == 127:
            return result(FAILED, f"The check failed: {NO_SINGLEUSER_MESSAGE}")
        said = _quote(output)
        if exit_code is not None:
            return result(
                FAILED,
                f"The check failed: jupyterhub-singleuser exited with code {exit_code} "
                f"before it answered{said}",
            )
        return result(
            FAILED,
            f"The check failed: jupyterhub-singleuser did not answer on {SERVER_PREFIX}api "
            f"within {timeout:g} s{said}",
        )
    status = probe.get("status")
    if status != 200:
        return result(
            FAILED,
            f"The check failed: jupyterhub-singleuser answered {SERVER_PREFIX}api "
            f"with HTTP {status}{_quote(output)}",
        )
    version = probe.get("jupyterhub")
    if not version:
        return result(
            FAILED,
            "The check failed: the server that answered does not say its JupyterHub "
            "version (is jupyterhub-singleuser the JupyterHub one?): add `jupyterhub` "
            "to requirements.txt",
        )
    if minimum and version_below(version, minimum):
        runs = f", the hub runs {major(hub)}" if hub else ""
        return result(
            FAILED,
            f"The check failed: JupyterHub {version} in the image{runs} and needs "
            f"{minimum} or newer: add `jupyterhub>={minimum}` to requirements.txt",
        )
    return result(PASSED, f"jupyterhub-singleuser (JupyterHub {version}) started and answered")


def server_config(hub):
    """The container configuration of a check's server, its hub claiming version ``hub``."""
    env = [
        # Dummy values: nothing here reaches a hub, and no request the check
        # makes needs the token.
        "JUPYTERHUB_API_TOKEN=tljh-repo2docker-check",
        "JPY_API_TOKEN=tljh-repo2docker-check",
        f"JUPYTERHUB_CLIENT_ID=jupyterhub-user-{CHECK_USER}",
        f"JUPYTERHUB_API_URL=http://127.0.0.1:{HUB_PORT}/hub/api",
        "JUPYTERHUB_BASE_URL=/",
        f"JUPYTERHUB_SERVICE_PREFIX={SERVER_PREFIX}",
        f"JUPYTERHUB_SERVICE_URL=http://127.0.0.1:{SERVER_PORT}{SERVER_PREFIX}",
        f"JUPYTERHUB_OAUTH_CALLBACK_URL={SERVER_PREFIX}oauth_callback",
        f"JUPYTERHUB_USER={CHECK_USER}",
        "JUPYTERHUB_SERVER_NAME=",
        "JUPYTERHUB_HOST=",
    ]
    return {"Cmd": ["sh", "-c", _SERVER_SCRIPT, "check", _HUB_STAND_IN, hub], "Env": env}


def _quote(lines):
    """The last meaningful lines of some output, as the end of a message."""
    meaningful = [line.strip() for line in lines if line.strip()]
    if not meaningful:
        return ""
    return ": " + " / ".join(meaningful[-_QUOTED_LINES:])


def _lines(chunks):
    """Text chunks (as aiodocker gives a log) as lines, without line ends."""
    text = "".join(chunks)
    return [line.rstrip("\r") for line in text.split("\n")][: -1 if text.endswith("\n") else None]


class CheckMixin:
    """Checks of built images (part of ``DockerBuilder``): uses its ``docker``
    client, ``log`` and its ``check_*`` settings."""

    def _check_host_config(self, spec):
        host_config = {"NetworkMode": "none", "AutoRemove": False}
        try:
            if spec.memory:
                host_config["Memory"] = memory_bytes(spec.memory)
        except LimitError:
            self.log.warning("Ignoring the memory limit %r for a check", spec.memory)
        if spec.cpu:
            host_config["NanoCpus"] = int(spec.cpu * 1e9)
        return host_config

    async def _start_check_container(self, uid, image, spec, config, role):
        config = {
            "Image": image,
            "Labels": {CHECK_LABEL: uid, CHECK_ROLE_LABEL: role},
            "Tty": False,
            "AttachStdin": False,
            "OpenStdin": False,
            "HostConfig": self._check_host_config(spec),
            **config,
        }
        container = await self.docker.containers.create(config)
        try:
            await container.start()
        except BaseException:
            await shielded(self._remove_check_container(container, uid))
            raise
        return container

    async def _remove_check_container(self, container, uid):
        try:
            await container.delete(force=True)
        except aiodocker.DockerError as e:
            if e.status not in (404, 409):
                self.log.warning("Could not remove a check container of build %s: %s", uid, e)
        except ENGINE_ERRORS as e:
            self.log.warning("Could not remove a check container of build %s: %s", uid, e)

    async def _remove_checks(self, uid):
        """Remove the check containers of build ``uid`` (left by a service that
        stopped during a check, or running while the build is cancelled)."""
        try:
            containers = await self.docker.containers.list(
                all=True, filters={"label": [f"{CHECK_LABEL}={uid}"]}
            )
        except ENGINE_ERRORS as e:
            self.log.warning("Could not look for the check containers of build %s: %s", uid, e)
            return
        for container in containers:
            await self._remove_check_container(container, uid)
        # A removal already in progress (cancel() and the build's own clean-up
        # at once) is answered at once: wait until they are gone, as the
        # image they hold may be removed next.
        for _ in range(50):
            try:
                left = await self.docker.containers.list(
                    all=True, filters={"label": [f"{CHECK_LABEL}={uid}"]}
                )
            except ENGINE_ERRORS:
                return
            if not left:
                return
            await asyncio.sleep(0.2)

    async def _take_over_checks(self, uid, image_id):
        """The check server of build ``uid`` left running for image ``image_id``
        by a service that stopped during the check, or None; every other
        check container of ``uid`` is removed."""
        found = None
        containers = await self.docker.containers.list(
            all=True, filters={"label": [f"{CHECK_LABEL}={uid}"]}
        )
        for container in containers:
            info = container._container  # the list entry (aiodocker keeps it there)
            if (
                found is None
                and self.check_images
                and (info.get("Labels") or {}).get(CHECK_ROLE_LABEL) == "server"
                and info.get("ImageID") == image_id
                and info.get("State") == "running"
            ):
                found = container
            else:
                await self._remove_check_container(container, uid)
        return found

    async def _check_image(self, uid, image, spec, secrets, outcome, server=None):
        """Check ``image`` (a built image, by any name); yield its output as log
        events, and set ``outcome["check"]`` to the result. ``server``: a
        check server of this image to take over (see :meth:`_take_over_checks`).

        Errors of the engine are raised: an engine that goes away says
        nothing about the image.
        """
        checked = []
        if self.check_images:
            running, server = server, None
            async for event in self._check_server(uid, image, spec, secrets, running):
                if isinstance(event, dict):
                    server = event
                else:
                    yield event
            if server["status"] != PASSED:
                outcome["check"] = server
                return
            checked.append(server["message"])
        if spec.command and self.check_images:
            command = None
            async for event in self._check_command(uid, image, spec, secrets):
                if isinstance(event, dict):
                    command = event
                else:
                    yield event
            if command["status"] != PASSED:
                outcome["check"] = command
                return
            checked.append(command["message"])
        if checked:
            outcome["check"] = result(PASSED, "; ".join(checked))

    async def _check_server(self, uid, image, spec, secrets, container=None):
        """The built-in check: yields log events, then its result (a dict).
        ``container``: the check's server, already started before a restart."""
        timeout = self.check_timeout
        if container is None:
            yield BuildEvent(
                STATUS,
                f"checking the image: starting jupyterhub-singleuser without network "
                f"({spec.limits_text()}), waiting up to {timeout:g} s for it to answer",
            )
        else:
            yield BuildEvent(
                STATUS, "checking the image: its jupyterhub-singleuser runs since before the restart"
            )
        hub = hub_version() or ""
        config = server_config(hub or "5.0.0")
        if container is None:
            container = await self._start_check_container(uid, image, spec, config, "server")
        try:
            probe = await self._probe(container, timeout)
            info = await container.show()
            state = info.get("State") or {}
            exit_code = None if state.get("Running") else state.get("ExitCode")
            output = [
                credentials.scrub(line, secrets)
                for line in _lines(await container.log(stdout=True, stderr=True))
            ]
        finally:
            await shielded(self._remove_check_container(container, uid))
        for line in output:
            yield BuildEvent(LOG, line)
        verdict = server_verdict(
            probe, exit_code, output, timeout, self.check_jupyterhub_min_version, hub
        )
        yield BuildEvent(STATUS, f"check: {verdict['message']}")
        yield verdict

    async def _probe(self, container, timeout):
        """The probe's answer (a dict), or None when the container ended first
        (an image without jupyterhub-singleuser exits at once, maybe between
        the exec's creation and its start: its exit code and output say why)."""
        try:
            return await self._run_probe(container, timeout)
        except ENGINE_ERRORS:
            state = ((await container.show()).get("State")) or {}
            if not state.get("Running"):
                return None
            raise

    async def _run_probe(self, container, timeout):
        try:
            run = await container.exec(
                ["sh", "-c", _PROBE_SCRIPT, "probe", _PROBE, SERVER_API, f"{timeout:g}"],
                stdout=True,
                stderr=True,
            )
        except aiodocker.DockerError as e:
            if e.status == 409:  # the container is not running any more
                return None
            raise
        chunks = []

        async def read():
            async with run.start(detach=False) as stream:
                while True:
                    message = await stream.read_out()
                    if message is None:
                        return
                    if message.stream == 1:
                        chunks.append(message.data.decode("utf-8", "replace"))

        # The probe stops itself at the timeout; the margin covers its start.
        try:
            await asyncio.wait_for(read(), timeout + 15)
        except asyncio.TimeoutError:
            return {"error": "the probe did not end"}
        except aiodocker.DockerError as e:
            if e.status == 409:  # the server ended between the exec's creation and its start
                return None
            raise
        for line in reversed(_lines(chunks) or ["".join(chunks)]):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    break
        return None

    async def _check_command(self, uid, image, spec, secrets):
        """The owner's check: yields log events as the command prints, then its result."""
        timeout = self.check_command_timeout
        yield BuildEvent(
            STATUS,
            f"checking the image: running the environment's check command without network "
            f"({spec.limits_text()}, up to {timeout:g} s): {spec.command}",
        )
        config = {"Cmd": ["sh", "-c", spec.command]}
        container = await self._start_check_container(uid, image, spec, config, "command")
        output = []
        lines = asyncio.Queue()

        async def read():
            pending = ""
            async for chunk in container.log(stdout=True, stderr=True, follow=True):
                pending += chunk
                *complete, pending = pending.split("\n")
                for line in complete:
                    lines.put_nowait(line.rstrip("\r"))
            if pending:
                lines.put_nowait(pending)

        reader = asyncio.ensure_future(read())
        timed_out = False
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                getter = asyncio.ensure_future(lines.get())
                try:
                    done, _ = await asyncio.wait(
                        {getter, reader},
                        timeout=max(deadline - loop.time(), 0),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    forget(getter)
                if getter in done:
                    line = credentials.scrub(getter.result(), secrets)
                    output.append(line)
                    yield BuildEvent(LOG, line)
                    continue
                if reader in done and lines.empty():
                    reader.result()  # an engine error is raised
                    break
                if not done:
                    timed_out = True
                    break
            code = None
            if not timed_out:
                with contextlib.suppress(asyncio.TimeoutError):
                    code = (await asyncio.wait_for(container.wait(), 30)).get("StatusCode")
        finally:
            forget(reader)
            await shielded(self._remove_check_container(container, uid))
        if timed_out:
            verdict = result(
                FAILED,
                f"The check command did not finish within {timeout:g} s "
                "(DockerBuilder.check_command_timeout)",
            )
        elif code == 0:
            verdict = result(PASSED, "the check command passed")
        else:
            verdict = result(
                FAILED, f"The check command exited with code {code}{_quote(output)}"
            )
        yield BuildEvent(STATUS, f"check: {verdict['message']}")
        yield verdict
