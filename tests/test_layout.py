"""The shape of the package: rooms by concern, dependencies that point one way, no import cycle.

Read from the source with `ast`, so that every import counts, also one made inside a function
to keep start-up fast: a late import is still a dependency, and a cycle through one is still a
cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gradsweep"

# Each room's rank: a module may import its own room and the rooms of a lower rank, nothing
# else. Rooms of one rank know nothing of each other (the scan and the sweeps, the fixes, the
# data and the tracking).
RANKS = {
    "errors": 0,
    "config": 1,
    "files": 1,
    "signals": 1,
    "fixes": 2,
    "data": 2,
    "tracking": 2,
    "telemetry": 3,
    "run": 4,
    "scan": 5,
    "sweeps": 5,
    "cli": 6,
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The gradsweep modules `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from gradsweep.data import cache` imports a module
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    # The package's own __init__ is the public API: it names everything, lazily, by design.
    return {name: imports(path, known) for name, path in found.items() if name != "gradsweep"}


def room(module: str) -> str:
    return module.split(".")[1]


def test_every_module_sits_in_a_room_with_a_rank() -> None:
    assert {room(name) for name in graph() if name.count(".")} == set(RANKS)


def test_dependencies_point_one_way() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if room(target) != room(module) and RANKS[room(target)] >= RANKS[room(module)]
    )
    assert wrong == [], "imports against the layering (see RANKS):\n" + "\n".join(wrong)


def test_no_import_cycle() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # absent: not seen; "open": on the current path; "done"

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_errors_import_nothing_of_gradsweep() -> None:
    # So that any module, however light, can raise a user's error.
    assert graph()["gradsweep.errors"] == set()


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_small(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concern"


def test_the_layering_test_sees_a_wrong_import(tmp_path: Path) -> None:
    # The checks above read imports the way this finds them: a late import inside a function
    # of a low room, naming a module of a higher one, must show up.
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from gradsweep.run.training import train\n")
    assert imports(source, set(modules())) == {"gradsweep.run.training"}


@pytest.mark.slow  # a fresh interpreter
def test_import_gradsweep_loads_no_torch() -> None:
    code = "import sys, gradsweep; print(sorted({'torch', 'wandb', 'hydra'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
