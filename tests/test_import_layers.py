"""The package's floors: no module imports from a floor above its own, and no circles.

Read from the source (every ``import``, lazy ones inside functions included),
so that a new arrow that runs back up fails here rather than in review. The
floors, lowest first, are drawn in docs/architecture.md.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tljh_repo2docker"

#: Each module's floor, by the first part of its name inside the package.
FLOORS = {
    # what everything may use: shared rules and data, no I/O
    "contract": 0, "errors": 0, "limits": 0, "access": 0, "paths": 0, "secret": 0,
    # the package's own name (``__version__``, the scopes): read by all
    "__init__": 0,
    # the database and the hub's REST API
    "db": 1, "hub_client": 1,
    # the build queue, its log and its backends
    "builds": 2,
    # the domain: no tornado
    "service": 3,
    # HTTP and the hub's side of servers
    "handlers": 4, "spawners": 4,
    # the service's own metrics (served by the health handlers)
    "metrics": 4,
    # the application that makes every component
    "app": 5,
    # the hub's configuration, the TLJH plugin, the entry point
    "tljh_config": 6, "hub_config": 6, "tljh_plugin": 6, "__main__": 6,
    # names kept for code written for tljh-repo2docker 3.x: thin re-exports
    "docker": 7, "spawner": 7,
}

#: Imports made on purpose against the floors: the package's lazy
#: ``__getattr__`` hands out the spawners and the TLJH hook by their 3.x names.
ALLOWED = {
    ("__init__", "spawners.docker"),
    ("__init__", "spawners.kube"),
    ("__init__", "spawners"),
    ("__init__", "tljh_plugin"),
}

#: Modules of the domain that must not know the web framework.
NO_TORNADO = ("service", "builds", "db", "contract", "errors", "limits", "access")


def module_name(path):
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name):
    base = PACKAGE.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports_of(path):
    """The package's modules that ``path`` imports, and the outside packages."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tljh_repo2docker."):
                    inside.add(alias.name.split(".", 1)[1])
                else:
                    outside.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("tljh_repo2docker"):
                target = node.module.partition(".")[2]
            else:
                outside.add((node.module or "").split(".")[0])
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if is_module(sub):
                    inside.add(sub)
                else:
                    inside.add(target or "__init__")
    return inside, outside


def graph():
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        edges[module_name(path)] = imports_of(path)
    return edges


def floor(name):
    return FLOORS[name.split(".")[0]]


def test_every_module_has_a_floor():
    missing = sorted(name for name in graph() if name.split(".")[0] not in FLOORS)
    assert not missing, f"modules with no floor in FLOORS (and docs/architecture.md): {missing}"


def test_no_module_imports_from_a_floor_above():
    upward = []
    for name, (inside, _) in graph().items():
        for target in inside:
            first = (name.split(".")[0], target)
            if (name, target) in ALLOWED or first in ALLOWED:
                continue
            if target.split(".")[0] != name.split(".")[0] and floor(target) > floor(name):
                upward.append(f"{name} (floor {floor(name)}) -> {target} (floor {floor(target)})")
    assert not upward, "imports that run back up:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    edges = {
        name: {t for t in inside if t in FLOORS or t.split(".")[0] in FLOORS}
        for name, (inside, _) in graph().items()
    }
    for name in edges:
        edges[name] = {
            t for t in edges[name] if (name, t) not in ALLOWED and (name.split(".")[0], t) not in ALLOWED
        }
    # Tarjan-free: a depth-first search that reports the first cycle it meets.
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            # a package's __init__ imports its own modules: not a circle with them
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("prefix", NO_TORNADO)
def test_the_domain_does_not_know_tornado(prefix):
    users = sorted(
        name
        for name, (_, outside) in graph().items()
        if name.split(".")[0] == prefix and "tornado" in outside
    )
    assert not users, f"modules of {prefix} that import tornado: {users}"
