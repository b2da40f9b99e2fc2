"""The tests' own layout: no test module imports from another test module.

What tests share lives in ``tests/helpers/`` (listed in its ``__init__.py``).
Read from the source of every file under ``tests/`` and ``ui-tests/`` (lazy
imports inside functions included), so that a helper imported from a
``tests.test_*`` module fails here rather than in review.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("tests", "ui-tests")


def package_of(path):
    """The dotted package a file under the repository belongs to, for relative imports."""
    parts = list(path.relative_to(ROOT).parent.parts)
    return parts if parts and (path.parent / "__init__.py").exists() else []


def imported_modules(source, package=()):
    """``(line, module)`` of every module an import in ``source`` names.

    ``from X import a, b`` names ``X`` and ``X.a``, ``X.b`` (either may be a
    module); relative imports are resolved against ``package``.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package)[: len(package) - (node.level - 1)] if node.level <= len(package) else []
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}" if module else alias.name) for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def is_test_module(module):
    parts = module.split(".")
    return len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_")


def imports_of_test_modules(source, package=()):
    """``(line, "tests.test_x")`` of every import of a test module in ``source``."""
    return sorted(
        {
            (line, ".".join(module.split(".")[:2]))
            for line, module in imported_modules(source, package)
            if is_test_module(module)
        }
    )


def python_files():
    return sorted(
        path
        for folder in FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def test_no_file_of_the_tests_imports_from_a_test_module():
    files = python_files()
    assert any(path.name.startswith("test_") for path in files), "no test files found"
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in files
        for line, module in imports_of_test_modules(path.read_text(), package_of(path))
    ]
    assert not bad, (
        "test modules import from each other; move what they share to tests/helpers/:\n"
        + "\n".join(bad)
    )


@pytest.mark.parametrize(
    "source, package",
    [
        ("from tests.test_servers import wait_server\n", []),
        ("import tests.test_servers\n", []),
        ("import tests.test_servers as s\n", []),
        ("from tests import test_docker_builder as t\n", []),
        ("def f():\n    from tests.test_databases import _server_db\n", []),
        ("from .test_servers import wait_server\n", ["tests"]),
        ("from . import test_servers\n", ["tests"]),
        ("from ..test_servers import wait_server\n", ["tests", "helpers"]),
        ("import importlib\nimportlib.import_module('tests.test_servers')\n", []),
    ],
)
def test_the_check_sees_each_way_of_importing_a_test_module(source, package):
    assert imports_of_test_modules(source, package)


@pytest.mark.parametrize(
    "source, package",
    [
        ("from tests.helpers.servers import wait_server\n", []),
        ("from tests.helpers import fixtures\n", []),
        ("from .helpers.utils import SERVICE\n", ["tests"]),
        ("from tljh_repo2docker.spawner import Repo2DockerSpawner\n", []),
        ("import test_servers_of_another_project\n", []),
        ("from ui_helpers import shot\n", []),
    ],
)
def test_the_check_lets_helpers_and_the_package_be_imported(source, package):
    assert not imports_of_test_modules(source, package)
