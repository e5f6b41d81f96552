"""The code location loads as `dagster dev` loads it, the asset graph reads as the flow, and a real
job runs on an instance whose storage is the machine's PostgreSQL (the production dagster.yaml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from patient_etl.cli import import_batch
from patient_etl_tests.conftest import query, write_csv

ROOT = Path(__file__).resolve().parents[1]


def test_workspace_loads_the_code_location(tmp_path):
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["python_module"]["module_name"] == "patient_etl.definitions"
    dagster = shutil.which("dagster") or str(Path(sys.executable).parent / "dagster")
    # A DAGSTER_HOME of its own: in the repo root, Dagster would take the production dagster.yaml.
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    checked = subprocess.run([dagster, "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=180)
    assert checked.returncode == 0, checked.stderr[-3000:]


def test_asset_graph_reads_as_the_flow():
    from patient_etl.definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["landed_batch"] == "ingest" and groups["staged_rows"] == "stage"
    assert groups["row_checks"] == "validate" and groups["member"] == "normalize"
    assert groups["published_batch"] == "publish"
    parents = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
               for key in graph.get_all_asset_keys()}
    assert parents["staged_rows"] == {"landed_batch"} and parents["row_checks"] == {"staged_rows"}
    assert "row_checks" in parents["member"] and "member" in parents["published_batch"]
    # The six entities, each after the entities it references.
    assert {"family", "member", "provider", "care", "claim", "eop"} <= {k for k, g in groups.items() if g == "normalize"}
    assert parents["member"] == {"row_checks", "family"}
    assert parents["care"] == {"row_checks", "member", "provider"}
    assert parents["claim"] == {"row_checks", "member", "provider", "care"}
    assert parents["eop"] == {"row_checks", "claim"}
    # Linkage follows publishing and never gates it; delivery waits for its warnings.
    assert groups["possible_duplicates"] == "linkage"
    assert parents["possible_duplicates"] == {"published_batch"}
    assert parents["delivered_results"] == {"published_batch", "possible_duplicates"}
    assert all(isinstance(graph.get(k).partitions_def, dg.DynamicPartitionsDefinition)
               for k in graph.get_all_asset_keys())
    assert {s.name for s in defs.sensors} >= {"upload_folder_sensor"}
    assert {s.name for s in defs.schedules} == {"nightly_import_schedule", "retention_schedule"}
    assert defs.resolve_job_def("import_job") is not None


def test_a_real_job_on_a_postgres_backed_instance(tmp_path, monkeypatch, pg_url, etl):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("DAGSTER_PG_URL", pg_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    path = write_csv(tmp_path / "roster.csv", "id,First Name,Last Name,dob,Sex", "1,Ann,Lee,1980-01-01,F")
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        outcome = import_batch([str(path)], etl, instance=instance)
    assert outcome["status"] == "Finished"
    runs = query(pg_url, "SELECT status FROM runs")
    assert runs == [("SUCCESS",)]
    assert query(pg_url, "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")[0][0] >= 5
