"""The package's rooms and the way between them: imports point one way, down the data flow.

Run as a script (`python tests/test_layers.py`) it prints the import graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "incremental_bench"
# Bottom to top: a module may import only modules before it.
ORDER = [
    "config",
    "clock",
    "archive",
    "deflate",
    "blocks",
    "parse",
    "transform",
    "pg",
    "databases",
    "store",
    "pipelines",
    "parity",
    "peers",
    "worker",
    "worker_entry",
    "harness",
    "fleet",
    "results",
    "report",
    "fleet_report",
    "chart",
    "cli",
]
# What the report may not know: it formats the record, nothing else.
NOT_IN_REPORT = {"polars", "sqlite3", "pandas", "duckdb", "time", "statistics", "os", "pathlib"}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (top-level names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    """Each module of the package and the modules of the package it imports."""
    return {
        path.stem: {
            name.removeprefix("incremental_bench.")
            for name in imports(path)
            if name.startswith("incremental_bench.")
        }
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__init__"
    }


def test_every_module_is_placed_and_imports_only_those_below_it():
    edges = graph()
    assert sorted(edges) == sorted(ORDER)
    upward = [(a, b) for a, deps in edges.items() for b in deps if ORDER.index(b) >= ORDER.index(a)]
    assert upward == []  # and so no cycle either


def test_the_report_imports_no_engine_no_database_and_no_clock():
    for module in ("report", "chart"):
        outside = {name.split(".")[0] for name in imports(PACKAGE / f"{module}.py")}
        assert not outside & NOT_IN_REPORT - ({"os", "pathlib"} if module == "chart" else set())
        assert graph()[module] <= {"config"}


def test_the_pipelines_reach_the_database_through_the_store_interface_alone():
    # A second database is then a second implementation of ClientState, not a change
    # to every pipeline.
    narrow = {"ClientState", "Checkpoint", "Connection", "connect", "sales_rows"}
    for module in ("pipelines", "peers"):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        taken = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "incremental_bench.store"
            for alias in node.names
        }
        assert taken <= narrow, (module, taken - narrow)
        assert "sqlite3" not in imports(PACKAGE / f"{module}.py")


def test_main_tells_the_story_in_the_words_of_the_first_plan():
    tree = ast.parse((ROOT / "main.py").read_text())
    named = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    named |= {
        a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names
    }
    for word in (
        "process_transactions",
        "run_baseline_benchmark",
        "run_optimized_benchmark",
        "populate_historical_data",
        "PipelineArtifacts",
        "generate_report",
        "main",
    ):
        assert word in named, word


def test_rooms_a_newcomer_can_hold():
    # Each module opens with what it owns; no module or function grows past a screenful
    # or two.
    for path in [*PACKAGE.glob("*.py"), ROOT / "main.py"]:
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), path
        assert len(path.read_text().splitlines()) <= 620, path
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 60, f"{path.name}: {node.name}"


if __name__ == "__main__":
    for module, deps in sorted(graph().items(), key=lambda item: ORDER.index(item[0])):
        below = sorted(deps, key=ORDER.index, reverse=True)
        print(f"{module:10s} -> {', '.join(below) or '(nothing of the package)'}")
    sys.exit(0)
