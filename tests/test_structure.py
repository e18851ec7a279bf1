"""The floors of the house, read from the imports (every import: top-level, function-local and
under TYPE_CHECKING), so the structure the README draws stays true:

    flows        composition: the dataflow, the CLI, config, reports     (floor 3)
    operators    the stages                                               (floor 2)
    judges sinks the judges; the adapters to outside systems              (floor 1)
    core         records, metrics, ports, the failure vocabulary          (floor 0)

    simulators   the embedded stand-ins (a wing): may use floors 0-1; only `flows` may use them

An import may only go down a floor, never up or sideways between packages of one floor, and no
module imports itself round a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = {"core": 0, "judges": 1, "sinks": 1, "operators": 2, "flows": 3}
WING = {"simulators": 1}  # the floor a wing stands on: it may import below it
WING_USERS = {"flows"}


def imports_of(path: Path) -> set[str]:
    """The judgeflow modules `path` imports, as `package.module` (anywhere in the file)."""
    packages = FLOOR.keys() | WING.keys()
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] in packages and len(parts) > 1 and (ROOT / parts[0] / f"{parts[1]}.py").exists():
                out.add(".".join(parts[:2]))
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for package in FLOOR.keys() | WING.keys():
        for f in sorted((ROOT / package).glob("*.py")):
            graph[f"{package}.{f.stem}"] = imports_of(f)
    return graph


def wrong_way(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import that goes up a floor, sideways between packages, or into a wing from outside."""
    bad = []
    for mod, targets in graph.items():
        src = mod.split(".")[0]
        for target in targets:
            dst = target.split(".")[0]
            if src == dst:
                continue
            if dst in WING:
                ok = src in WING_USERS
            elif src in WING:
                ok = FLOOR[dst] <= WING[src]
            else:
                ok = FLOOR[dst] < FLOOR[src]
            if not ok:
                bad.append(f"{mod} -> {target}")
    return sorted(bad)


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(group) > 1 or v in graph.get(v, ()):
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_only_go_down_a_floor():
    graph = import_graph()
    assert len(graph) > 60 and "core.records" in graph["operators.sample"]
    assert wrong_way(graph) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_production_never_imports_the_simulators():
    graph = import_graph()
    production = [m for m in graph if m.split(".")[0] in ("core", "judges", "sinks", "operators")]
    assert not [m for m in production if any(t.startswith("simulators.") for t in graph[m])]


def test_the_checks_see_what_they_forbid():
    """Each rule on a made-up graph, so a broken reader cannot pass silently."""
    graph = {
        "core.records": {"operators.sample"},  # up
        "judges.rules": {"sinks.kafka"},  # sideways
        "operators.sample": {"simulators.traffic", "core.records"},  # into the wing
        "simulators.traffic": {"operators.price"},  # the wing above its floor
        "flows.demo": {"simulators.traffic", "operators.sample"},  # allowed
        "flows.a": {"flows.b"},
        "flows.b": {"flows.a"},
    }
    assert wrong_way(graph) == [
        "core.records -> operators.sample",
        "judges.rules -> sinks.kafka",
        "operators.sample -> simulators.traffic",
        "simulators.traffic -> operators.price",
    ]
    assert cycles(graph) == [["core.records", "operators.sample"], ["flows.a", "flows.b"]]
    assert imports_of(ROOT / "flows" / "report.py") >= {"flows.report_format", "flows.report_queries"}
