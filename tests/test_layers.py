"""The package's floors: every import (module level, inside functions, under ``TYPE_CHECKING``) goes to the same
floor or one below, and no two units import each other, directly or round a longer loop.

The floors are the table :data:`FLOORS`, lowest first. A unit is a top-level module or subpackage of
``scaleprompt`` (``engine`` = ``scaleprompt/engine/**``), or a module the table names on its own (``report.schema``): every module belongs to the longest name of the table it starts with. A module the table does not
place fails the test: a new package is put on a floor when it is written. Imports by ``importlib`` are not seen.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scaleprompt"

# floor -> the units on it, lowest first. A unit may import its own floor and the floors below, never above.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # errors, logging, the pure functions, file locks, crash points, figures; the run identity (what a resume may
    # change), below both the engine (which checks it) and the reports (which group runs by it); the plug-ins'
    # entry points (found and loaded here, registered by the method and dataset registries above)
    (
        "ground",
        ("errors", "logs", "losses", "failpoints", "locks", "plots", "identity", "promptfile", "plugins"),
    ),
    # typed configs and recipes; the results schema (written by the engine, read by the reports); the
    # micro-world (its world and the micro CLIP's word tokenizer, which the backbone registry loads)
    ("config", ("config", "recipes", "report.schema", "microworld")),
    ("backbone", ("backbone",)),
    ("data and encoders", ("data", "encoders")),
    ("methods", ("methods", "report", "plan", "predict")),
    ("engine", ("engine",)),
    # what runs engines or reads many runs: sweeps, analyses, the micro CLIP's pretraining
    ("tools", ("search", "analysis", "pretrain")),
    # entry points: the command line and the launchable files
    ("entry points", ("cli", "commands", "train", "evaluate", "api", "__init__")),
)
FLOOR_OF = {unit: level for level, (_, units) in enumerate(FLOORS) for unit in units}
FLOOR_NAMES = [name for name, _ in FLOORS]

# (importer, imported): pairs the floors would allow that the design rules out
FORBIDDEN = {
    # the engine writes a run's results (report.schema); tabulating runs is the reports', above it
    ("engine", "report"): "the engine may import the results schema (report.schema) only",
}


def module_name(path: Path) -> str:
    """``scaleprompt/engine/run.py`` -> ``engine.run``; ``scaleprompt/engine/__init__.py`` -> ``engine``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    """The longest unit of :data:`FLOORS` that ``module`` is or lies under (``""``: none)."""
    best = ""
    for unit in FLOOR_OF:
        if (module == unit or module.startswith(unit + ".")) and len(unit) > len(best):
            best = unit
    return best


def imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported module of the package, line) for every import statement of ``module``, wherever it stands."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                where = ".".join(["scaleprompt", *base, *([node.module] if node.module else [])])
            else:
                where = node.module or ""
            # "from scaleprompt.report import schema" imports the module report.schema
            targets = [
                f"{where}.{a.name}" if f"{where}.{a.name}"[12:] in MODULES else where for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == "scaleprompt" or target.startswith("scaleprompt."):
                yield target[12:] or "__init__", node.lineno


@functools.cache
def unit_graph() -> dict[tuple[str, str], list[str]]:
    """(importer unit, imported unit) -> where (``engine/run.py:12 imports data.cache``), between units only."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module in MODULES:
        here = unit_of(module)
        for target, line in imports(module):
            there = unit_of(target)
            if there and there != here:
                where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
                edges.setdefault((here, there), []).append(where)
    return edges


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one unit (Tarjan), each sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_on_a_floor():
    unplaced = sorted(m for m in MODULES if not unit_of(m))
    assert not unplaced, (
        f"modules on no floor (add their package to FLOORS in {Path(__file__).name}): {unplaced}"
    )


def test_every_unit_of_the_table_exists():
    missing = [u for u in FLOOR_OF if u not in MODULES]
    assert not missing, f"units of FLOORS that are not modules of scaleprompt: {missing}"


def test_no_import_runs_up_a_floor():
    edges = unit_graph()
    up = [
        f"{here} ({FLOOR_NAMES[FLOOR_OF[here]]}) -> {there} ({FLOOR_NAMES[FLOOR_OF[there]]}): {', '.join(where)}"
        for (here, there), where in sorted(edges.items())
        if FLOOR_OF[there] > FLOOR_OF[here]
    ]
    assert not up, "imports running up a floor:\n" + "\n".join(up)
    ruled_out = [
        f"{pair}: {why}: {', '.join(edges[pair])}" for pair, why in FORBIDDEN.items() if pair in edges
    ]
    assert not ruled_out, "\n".join(ruled_out)


def test_no_loop_between_units():
    edges = unit_graph()
    loops = []
    for group in cycles(edges):
        inside = [
            f"  {where}"
            for (a, b), wheres in sorted(edges.items())
            if a in group and b in group
            for where in wheres
        ]
        loops.append(f"{' <-> '.join(group)}:\n" + "\n".join(inside))
    assert not loops, "import loops between units:\n" + "\n".join(loops)


def test_the_checker_sees_a_loop_and_function_level_imports():
    """The checker itself: a loop of three is found; an import inside a function counts."""
    assert cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == [["a", "b", "c"]]
    assert cycles({("a", "b"): [], ("b", "c"): []}) == []
    inside_functions = {t for t, _ in imports("analysis.variance")}  # imports report.tables inside a function
    assert any(unit_of(t) == "report" for t in inside_functions)
    assert unit_of("report.schema") == "report.schema" and unit_of("report.tables") == "report"
    assert unit_of("engine.trainer") == "engine" and unit_of("data.microworld") == "data"
