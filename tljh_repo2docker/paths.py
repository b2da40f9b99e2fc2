"""Where the service finds its templates, static files and migrations.

In a wheel they sit inside the package (``force-include`` in pyproject.toml);
in a source checkout (editable install) they are the top-level folders.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    inside = _PACKAGE / name
    if inside.is_dir():
        return inside
    return _PACKAGE.parent / name


TEMPLATES = _data_dir("templates")
STATIC = _data_dir("static")
ALEMBIC = _data_dir("alembic")
#: The OpenAPI description of the JSON API (a module file, in either layout).
OPENAPI = _PACKAGE / "openapi.yaml"
