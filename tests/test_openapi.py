"""The OpenAPI description (tljh_repo2docker/openapi.yaml) stays in step with the handlers.

Every JSON route the service serves is described with exactly the methods its
handler implements, and nothing else is; the document is valid OpenAPI 3; the
Environment model has the fields of ``store.as_dict``; the service serves the
file as it is.
"""

import importlib
import pkgutil
import re
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
import yaml
from openapi_spec_validator import validate
from tornado import web

import tljh_repo2docker.handlers
from tljh_repo2docker.app import TljhRepo2Docker
from tljh_repo2docker.db import store
from tljh_repo2docker.handlers.base import APIHandler, NotFoundAPIHandler
from tljh_repo2docker.paths import OPENAPI

from .helpers.utils import SERVICE, assert_json_error

HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))


def implemented_methods(handler_class):
    """The HTTP methods a handler class overrides (Tornado answers 405 to the others)."""
    return {
        m for m in HTTP_METHODS if getattr(handler_class, m) is not getattr(web.RequestHandler, m)
    }


def spec_path(route):
    """``api/environments/([^/]+)/logs`` -> ``/api/environments/{}/logs``."""
    path = re.sub(r"\([^)]*\)", "{}", route.rstrip("$"))
    return "/" + path.replace("\\.", ".")


def normalised(path):
    """``/api/environments/{uid}`` -> ``/api/environments/{}``."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def served_routes():
    """``{spec path: handler class}`` of the routes the service really serves."""
    app = TljhRepo2Docker()
    app.sessions = app.build_manager = app.hub_client = None
    app.cookie_secret = b"not-used"
    app.init_webapp()
    routes = {}
    for rule in app.webapp.wildcard_router.rules:
        pattern = rule.matcher.regex.pattern
        if not pattern.startswith(app.base_url) or rule.target is NotFoundAPIHandler:
            continue
        routes[spec_path(pattern[len(app.base_url) :])] = rule.target
    return routes


def handler_modules():
    for info in pkgutil.iter_modules(tljh_repo2docker.handlers.__path__):
        module = importlib.import_module(f"tljh_repo2docker.handlers.{info.name}")
        if hasattr(module, "default_handlers"):
            yield module


def test_spec_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_handler_module_is_served():
    """No module's ``default_handlers`` is forgotten in ``init_webapp``."""
    served = served_routes()
    for module in handler_modules():
        for route, handler in module.default_handlers:
            assert served.get(spec_path(route)) is handler, (module.__name__, route)


def test_every_api_route_is_described_with_its_methods(spec):
    described = {normalised(path): item for path, item in spec["paths"].items()}
    missing, wrong = [], []
    for path, handler in served_routes().items():
        if not (path.startswith("/api/") or issubclass(handler, APIHandler)):
            continue  # HTML pages
        item = described.get(path)
        if item is None:
            missing.append(path)
            continue
        in_spec = {m for m in item if m in HTTP_METHODS}
        if in_spec != implemented_methods(handler):
            wrong.append(f"{path}: spec {sorted(in_spec)}, {handler.__name__} {sorted(implemented_methods(handler))}")
    assert not missing, f"routes missing from openapi.yaml: {missing}"
    assert not wrong, wrong


def test_every_described_path_is_served(spec):
    served = served_routes()
    extra = [path for path in spec["paths"] if normalised(path) not in served]
    assert not extra, f"openapi.yaml describes routes nobody serves: {extra}"


def test_path_parameters_are_declared(spec):
    for path, item in spec["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        declared = set()
        for params in [item.get("parameters", [])] + [
            op.get("parameters", []) for m, op in item.items() if m in HTTP_METHODS
        ]:
            for param in params:
                if "$ref" in param:
                    param = spec["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]]
                if param["in"] == "path":
                    declared.add(param["name"])
        assert names == declared, path


def test_every_error_answer_has_the_error_shape(spec):
    responses = spec["components"]["responses"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            for code, response in op["responses"].items():
                if int(code) < 400:
                    continue
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[-1]]
                schema = response["content"]["application/json"]["schema"]
                refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("allOf", [])]
                assert "#/components/schemas/Error" in refs, (path, method, code)


def _environment(source="git"):
    now = datetime.now(timezone.utc)
    fields = {
        column: None
        for column in (
            "uid name image_name repo ref provider status memory cpu machine_profile "
            "node_selector build_args owner commit size error started finished build_number sharing "
            "auto_rebuild remote_commit remote_checked remote_error webhook_secret_hash "
            "check_command builder_image rebuild_on files"
        ).split()
    }
    fields.update(created=now, node_selector={}, build_args={}, source=source)
    fields["image_id"] = None  # the current version's image
    return SimpleNamespace(**fields)


def test_environment_model_matches_the_store(spec):
    schema = spec["components"]["schemas"]["Environment"]
    # Fields of one source only: ``image`` (as_dict), ``files`` (the answer
    # for one environment from files, handlers/environments.py); ``phase``
    # while a build runs (service/environment_list.py).
    admin_fields = set(store.as_dict(_environment(), admin=True)) | {"files", "phase"}
    admin_fields |= set(store.as_dict(_environment("image"), admin=True))
    user_fields = set(store.as_dict(_environment(), admin=False))
    assert set(schema["properties"]) == admin_fields
    assert set(schema["required"]) == user_fields


def test_environment_request_fields_are_known_to_the_parser(spec):
    """Every field of the request schema passes ``parse_request``'s unknown-field check."""
    from tljh_repo2docker.service import fields as envs

    schema = spec["components"]["schemas"]["EnvironmentRequest"]
    assert schema["additionalProperties"] is False  # the parser refuses unknown fields
    app = SimpleNamespace(
        default_provider="git",
        provider_choices=["git"],
        allow_local_repos=False,
        machine_profiles=[],
        node_selector={},
        default_memory_limit=None,
        default_cpu_limit=None,
        image_prefix="test/",
        allowed_repo2docker_images=[],
    )
    builder = SimpleNamespace(
        supports_credentials=True, supports_build_args=True, repo2docker_image="r2d:test"
    )
    body = {field: None for field in schema["properties"]}
    body["repo"] = "https://git.example.invalid/owner/repo.git"
    fields, _ = envs.parse_request(body, app, builder)
    assert fields["name"] == "repo"


@pytest.mark.hub
@pytest.mark.docker
async def test_served_spec_is_the_file(hub, alice, spec):
    r = await alice.api("GET", "api/openapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == spec


@pytest.mark.hub
@pytest.mark.docker
async def test_spec_needs_a_login(hub):
    import httpx

    async with httpx.AsyncClient(base_url=hub.url) as client:
        r = await client.get(f"services/{SERVICE}/api/openapi.json")
    assert_json_error(r, 403)
