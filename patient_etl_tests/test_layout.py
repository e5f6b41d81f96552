"""The package reads as the flow: a stage imports only the stages before it and the shared layer, and
the shared layer imports no stage. An import that runs back up the flow is how one stage starts to know
another's internals (the review that led to the workspace found eight such imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "patient_etl"
FLOW = ("sources", "staging", "quality", "normalize", "publish", "linkage")
# Assemble the flow (the entry point, the command and its line, schedules) or end a batch from any stage.
# `command` starts the validator process of the quality stage before the rest is imported; `command_server`
# serves the command, and starts those processes first in its worker as `command` does.
ASSEMBLY = {"definitions", "command", "command_server", "cli", "schedules", "jobs"}
END_OF_ANY_STAGE = {"failure": {"sources"}}  # the failure path delivers results back to the source


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("patient_etl."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("patient_etl.")}
    return found


def test_imports_run_down_the_flow_or_into_the_shared_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        top = parts[0]
        for imported in _imports(path) - {top}:
            if imported not in FLOW:
                continue
            if top in FLOW:
                if FLOW.index(imported) > FLOW.index(top):
                    wrong.append(f"{'.'.join(parts)} imports the later stage {imported}")
            elif top not in ASSEMBLY and imported not in END_OF_ANY_STAGE.get(top, set()):
                wrong.append(f"shared module {'.'.join(parts)} imports the stage {imported}")
    assert wrong == []


def test_only_the_workspace_spells_a_stage_database():
    spelled = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name != "workspace.py" and any(name in p.read_text() for name in
                                                    ("staged.duckdb", "checks.duckdb", "publish.duckdb", "linkage.duckdb",
                                                     "row_outcome_", "checked_{"))]
    assert spelled == []
