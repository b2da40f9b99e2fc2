"""The check's rules without Docker: verdicts and their messages, versions,
labels read back after a restart, failed versions never current."""

from types import SimpleNamespace

import pytest

from tljh_repo2docker.builds.base import BUILT, FAILED, BuildEvent, BuildRequest
from tljh_repo2docker.builds.docker import DockerBuilder
from tljh_repo2docker.builds.docker.builder import _check_spec
from tljh_repo2docker.builds.docker.check import (
    NO_SINGLEUSER_MESSAGE,
    CheckSpec,
    server_verdict,
    version_below,
)
from tljh_repo2docker.builds.finishing import failed_check
from tljh_repo2docker.service import version_history


def verdict(probe, exit_code=None, output=(), minimum="2.0", hub="5.3.0"):
    return server_verdict(probe, exit_code, list(output), 60, minimum, hub)


def test_a_server_that_answers_passes():
    result = verdict({"status": 200, "jupyterhub": "5.2.1", "body": "{}"})
    assert result["status"] == "passed" and "JupyterHub 5.2.1" in result["message"]


def test_no_jupyterhub_singleuser_names_the_fix():
    output = ["tljh-repo2docker: no jupyterhub-singleuser on the PATH"]
    result = verdict(None, exit_code=127, output=output)
    assert result == {"status": "failed", "message": f"The check failed: {NO_SINGLEUSER_MESSAGE}"}
    assert "add `jupyterhub` to requirements.txt" in result["message"]


def test_an_old_jupyterhub_says_which_and_what_the_hub_runs():
    result = verdict({"status": 200, "jupyterhub": "1.5.0"}, hub="5.3.0")
    assert result["status"] == "failed"
    assert "JupyterHub 1.5.0 in the image, the hub runs 5.x" in result["message"]
    assert "jupyterhub>=2.0" in result["message"]
    # No minimum: any version passes.
    assert verdict({"status": 200, "jupyterhub": "1.5.0"}, minimum="")["status"] == "passed"


def test_a_server_that_exits_or_never_answers_is_quoted():
    result = verdict(None, exit_code=1, output=["", "ImportError: no module named x", ""])
    assert "exited with code 1" in result["message"] and "ImportError" in result["message"]
    result = verdict({"error": "Connection refused"}, exit_code=None)
    assert "did not answer" in result["message"] and "60 s" in result["message"]
    result = verdict({"status": 500, "jupyterhub": "5.0.0"})
    assert "HTTP 500" in result["message"]


@pytest.mark.parametrize(
    "version, minimum, below",
    [("1.5.0", "2.0", True), ("2.0", "2.0", False), ("2", "2.0.1", True), ("5.2.1", "5", False),
     ("6.0.0b1", "5.0", False), ("nonsense", "2.0", False)],
)
def test_version_below(version, minimum, below):
    assert version_below(version, minimum) is below


def test_what_the_check_needs_is_read_back_from_labels():
    builder = DockerBuilder()
    request = BuildRequest(
        uid="u", repo="r", ref="main", image_name="x:1",
        check_command="pytest -q tests", memory="512M", cpu=0.5, password="secret",
    )  # fmt: skip
    labels = builder._check_labels(request)
    assert "secret" not in repr(labels)
    assert _check_spec(labels) == CheckSpec(command="pytest -q tests", memory="512M", cpu=0.5)
    assert _check_spec({}) == CheckSpec()
    assert builder._builder_image(request) == builder.repo2docker_image
    pinned = BuildRequest(uid="u", repo="r", ref="m", image_name="x:1", builder_image="r2d:old")
    assert builder._builder_image(pinned) == "r2d:old"


def test_a_failed_check_with_an_image_is_a_version():
    check = {"status": "failed", "message": "no"}
    assert failed_check(BuildEvent(FAILED, "no", image_id="sha256:1", check=check))
    assert not failed_check(BuildEvent(FAILED, "no", check=check))  # no image kept
    assert not failed_check(BuildEvent(FAILED, "clone failed", image_id="sha256:1"))
    assert not failed_check(BuildEvent(BUILT, "ok", image_id="sha256:1", check=check))


def test_a_failed_version_is_never_current():
    env = SimpleNamespace(image_id="sha256:same")
    failed = SimpleNamespace(id=2, image_id="sha256:same", check={"status": "failed", "message": "x"})
    passed = SimpleNamespace(id=1, image_id="sha256:same", check={"status": "passed", "message": "ok"})
    assert version_history.current_version_id(env, [failed, passed]) == 1
    assert version_history.current_version_id(env, [failed]) is None


async def test_a_rollback_to_a_failed_version_is_refused(monkeypatch):
    version = SimpleNamespace(
        id=7, number=3, image_id="sha256:x", image_name="x:1--v3",
        check={"status": "failed", "message": "The check failed: no jupyterhub-singleuser"},
    )  # fmt: skip

    async def get_version(sessions, uid, version_id):
        return version

    monkeypatch.setattr(version_history.store, "get_version", get_version)
    with pytest.raises(version_history.RollbackError) as raised:
        await version_history.rollback(None, None, SimpleNamespace(uid="u"), 7)
    assert raised.value.status == 400
    assert raised.value.message.startswith("version: version 3 failed its check")
