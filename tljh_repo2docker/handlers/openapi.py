"""The OpenAPI description of the JSON API, as JSON."""

import functools
import json

import yaml
from tornado import web

from ..paths import OPENAPI
from .base import APIHandler


@functools.cache
def openapi_json():
    """``openapi.yaml`` (shipped in the package) as JSON text, read once."""
    return json.dumps(yaml.safe_load(OPENAPI.read_text(encoding="utf-8")))


class OpenAPIHandler(APIHandler):
    @web.authenticated
    async def get(self):
        self.finish(openapi_json())


default_handlers = [
    (r"api/openapi\.json", OpenAPIHandler),
]
