"""Environments from an existing image: the reference's grammar, the registries
a reference may name (``allowed_image_registries``), the fields that cannot
apply, and what a re-pull compares (service/image_source.py)."""

from types import SimpleNamespace

import pytest

from tljh_repo2docker.builds.docker.imported import names_registry
from tljh_repo2docker.errors import FieldError
from tljh_repo2docker.service import image_source
from tljh_repo2docker.service.image_source import Reference, split

ID = "sha256:" + "ab" * 32


def app(registries=(), prefix="tljh-r2d/"):
    return SimpleNamespace(allowed_image_registries=list(registries), image_prefix=prefix)


BUILDER = SimpleNamespace(sources=("git", "files", "image"))


@pytest.mark.parametrize(
    "reference, parts",
    [
        ("myimage", Reference(None, "myimage", None, None)),
        ("myimage:1.0", Reference(None, "myimage", "1.0", None)),
        ("team/tools:latest", Reference(None, "team/tools", "latest", None)),
        ("127.0.0.1:5000/envs/x", Reference("127.0.0.1:5000", "envs/x", None, None)),
        ("localhost/x:y", Reference("localhost", "x", "y", None)),
        ("ghcr.io/org/img:v1@" + ID, Reference("ghcr.io", "org/img", "v1", ID)),
        ("docker.io/library/python:3.12", Reference("docker.io", "library/python", "3.12", None)),
        ("reg.example.org:443/a/b__c", Reference("reg.example.org:443", "a/b__c", None, None)),
    ],
)
def test_split(reference, parts):
    assert split(reference) == parts
    assert str(parts) == reference


@pytest.mark.parametrize(
    "reference, says",
    [
        ("", "is required"),
        ("-rm", "must not start with '-'"),
        ("my image", "spaces or control"),
        ("my\nimage", "spaces or control"),
        ("MyImage", "lowercase"),
        ("a//b", "lowercase"),
        ("img:", "is not an image tag"),
        ("img:-x", "is not an image tag"),
        ("img:" + "t" * 129, "is not an image tag"),
        ("img@sha256:xyz", "is not a digest"),
        ("img@a@b", "more than one"),
        ("a" * 256, "longer than 255"),
        ("x" * 600, "longer than 512"),
        (":tag", "has no name"),
        ("bad_host.:5000/x", "is not a registry host"),
        (42, "must be a string"),
    ],
)
def test_split_refuses(reference, says):
    with pytest.raises(ValueError, match=says):
        split(reference)


def test_default_allows_local_names_and_the_prefix_registry():
    local = app(prefix="tljh-r2d/")
    assert image_source.check_reference("myimage:tag", local) == "myimage:tag"
    with pytest.raises(FieldError) as e:
        image_source.check_reference("ghcr.io/org/img:1", local)
    assert e.value.field == "image"
    assert "ghcr.io" in e.value.reason and "allowed_image_registries" in e.value.reason
    assert "only the engine's own images are allowed" in e.value.reason

    cluster = app(prefix="127.0.0.1:5000/envs/")
    assert image_source.check_reference("127.0.0.1:5000/other/img:1", cluster)
    with pytest.raises(FieldError) as e:
        image_source.check_reference("docker.io/library/python:3.12", cluster)
    assert "docker.io" in e.value.reason and "127.0.0.1:5000 (image_prefix)" in e.value.reason


def test_configured_registries_and_any():
    configured = app(["ghcr.io", "Quay.io"])
    assert image_source.check_reference("ghcr.io/org/img:1", configured)
    assert image_source.check_reference("quay.io/org/img", configured)
    assert image_source.check_reference("local:1", configured)  # no registry: the engine's
    with pytest.raises(FieldError) as e:
        image_source.check_reference("docker.io/x", configured)
    assert "the allowed ones are: ghcr.io, quay.io" in e.value.reason
    assert image_source.check_reference("any.example.org/x", app(["*"]))


def test_the_hubs_own_images_are_refused():
    with pytest.raises(FieldError, match="one of this hub's environments") as e:
        image_source.check_reference("tljh-r2d/other-env:latest", app())
    assert e.value.field == "image"


def test_parse_gives_the_source_fields():
    body = {"image": " myimage:tag ", "name": "x", "memory": "1G", "check_command": "true"}
    assert image_source.parse(body, app(), BUILDER) == {
        "source": "image", "repo": "myimage:tag", "ref": ""
    }
    # empty values of fields that cannot apply are no request for them
    assert image_source.parse(
        {"image": "i", "ref": "", "buildargs": {}, "rebuild_on": "any", "username": None},
        app(), BUILDER,
    )["repo"] == "i"


@pytest.mark.parametrize(
    "field, value",
    [
        ("ref", "main"),
        ("username", "u"),
        ("password", "p"),
        ("buildargs", {"A": "1"}),
        ("build_args", "A=1"),
        ("builder_image", "quay.io/jupyterhub/repo2docker:x"),
        ("provider", "gh"),
        ("rebuild_on", "environment"),
    ],
)
def test_parse_refuses_fields_that_cannot_apply(field, value):
    with pytest.raises(FieldError) as e:
        image_source.parse({"image": "myimage", field: value}, app(), BUILDER)
    assert e.value.field == field


def test_parse_refuses_a_backend_without_images():
    binderhub = SimpleNamespace(sources=("git",), display_name="BinderHub")
    with pytest.raises(FieldError, match="BinderHub cannot use existing images") as e:
        image_source.parse({"image": "myimage"}, app(), binderhub)
    assert e.value.field == "image"


def test_registry_setting_validation():
    from traitlets import TraitError

    from tljh_repo2docker.app import TljhRepo2Docker

    service = TljhRepo2Docker()
    service.allowed_image_registries = [" GHCR.io ", "ghcr.io", "127.0.0.1:5000", "*"]
    assert service.allowed_image_registries == ["ghcr.io", "127.0.0.1:5000", "*"]
    for bad in ("", "a b", "ghcr.io/org", "user@host"):
        with pytest.raises(TraitError, match="is not a registry host"):
            service.allowed_image_registries = [bad]


def test_names_registry():
    assert names_registry("ghcr.io/a/b:1")
    assert names_registry("docker.io/library/python")
    assert names_registry("localhost:5000/x")
    assert not names_registry("myimage:tag")
    assert not names_registry("team/tools")


def test_re_pull_comparison():
    assert image_source.same_content(ID, ID.upper())
    assert not image_source.same_content(ID, "sha256:" + "cd" * 32)
    assert not image_source.same_content(None, ID)
    message = image_source.unchanged_message("myimage:1", ID)
    assert "unchanged" in message and '"force": true' in message
    assert image_source.default_name("ghcr.io/org/tools:1") == "tools"


async def test_content_id_never_raises():
    class Failing:
        async def image_content_id(self, reference, image_name=None):
            raise RuntimeError("registry down")

    class Found:
        async def image_content_id(self, reference, image_name=None):
            return ID

    assert await image_source.content_id(Failing(), "x") is None
    assert await image_source.content_id(SimpleNamespace(), "x") is None
    assert await image_source.content_id(Found(), "x") == ID


# -- the ref poller on an image environment ------------------------------------


class _Lifecycle:
    def __init__(self, builder):
        self.build_manager = SimpleNamespace(builder=builder)
        self.queued = []

    async def queue_rebuild(self, env, **kwargs):
        self.queued.append((env.uid, kwargs))


class _Builder:
    def __init__(self, answer):
        self.answer = answer
        self.asked = []

    async def image_content_id(self, reference, image_name=None):
        self.asked.append((reference, image_name))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def _image_env(sessions):
    from tljh_repo2docker import contract
    from tljh_repo2docker.db import store

    uid = contract.new_uid()
    await store.create_environment(
        sessions, uid=uid, name=f"img-{uid[:8]}", image_name=f"p/img-{uid[:8]}:latest",
        repo="myimage:1", ref="", source="image", auto_rebuild=True,
    )
    await store.update_environment(sessions, uid, status=store.BUILT, image_id="sha256:" + "0" * 64, commit=ID)
    [env] = [e for e in await store.auto_rebuild_environments(sessions) if e.uid == uid]
    return env


@pytest.mark.parametrize(
    "answer, queued, remote_error",
    [
        (ID, False, None),
        ("sha256:" + "cd" * 32, True, None),
        (None, False, "the image myimage:1 is not on the Docker engine"),
        (RuntimeError("Cannot pull myimage:1: refused"), False, "Cannot pull myimage:1: refused"),
    ],
)
async def test_the_poller_pulls_image_environments_again(sqlite_sessions, answer, queued, remote_error):
    from tljh_repo2docker.db import store
    from tljh_repo2docker.service import lifecycle as rebuilds
    from tljh_repo2docker.service.ref_watcher import RefWatcher

    env = await _image_env(sqlite_sessions)
    builder = _Builder(answer)
    lifecycle = _Lifecycle(builder)
    await RefWatcher(sessions=sqlite_sessions, lifecycle=lifecycle).check(env)
    assert builder.asked == [("myimage:1", env.image_name)]
    assert bool(lifecycle.queued) is queued
    if queued:
        [(uid, kwargs)] = lifecycle.queued
        assert uid == env.uid and kwargs["reason"] == rebuilds.POLL
        assert kwargs["fields"]["remote_commit"] == answer
    seen = await store.get_environment(sqlite_sessions, env.uid)
    assert seen.remote_error == remote_error
    if answer and not isinstance(answer, Exception) and not queued:
        assert seen.remote_commit == answer


async def test_the_poller_says_when_the_backend_cannot_look_at_images(sqlite_sessions):
    from tljh_repo2docker.db import store
    from tljh_repo2docker.service.ref_watcher import NO_IMAGES, RefWatcher

    env = await _image_env(sqlite_sessions)
    lifecycle = _Lifecycle(SimpleNamespace())
    await RefWatcher(sessions=sqlite_sessions, lifecycle=lifecycle).check(env)
    assert not lifecycle.queued
    assert (await store.get_environment(sqlite_sessions, env.uid)).remote_error == NO_IMAGES
