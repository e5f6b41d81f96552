"""A home's own Dagster instance (patient_etl/instance.py): its dagster.yaml, and the SQLite event log that
keeps one engine per file. Runs recorded through it read back with Dagster's own storage (what `dagster
dev` of another version of this code would use), and the command line's process loads neither Great
Expectations nor pandas (each ~0.5 s or more of a small file's import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import dagster as dg
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from patient_etl.instance import (
    HEADER,
    KEPT_SHARDS,
    PooledSqliteEventLogStorage,
    home_config,
    write_home_config,
)
from patient_etl_tests.conftest import write_csv

HEADER_ROW = "Patient ID,First Name,Last Name,DOB,Sex"
IMPORT_TWICE = """
import json, sys
from patient_etl.cli import home_instance, import_batch
from patient_etl.resources import patient_etl_from_env
etl = patient_etl_from_env(resolve=True)
outcomes = [import_batch([path], etl)["status"] for path in sys.argv[1:]]
with home_instance(etl.home_dir()) as instance:
    storage = type(instance.event_log_storage).__name__
print(json.dumps({"outcomes": outcomes, "storage": storage,
                  "loaded": sorted({"pandas", "great_expectations", "pyarrow"} & set(sys.modules))}))
"""


def test_a_homes_runs_are_stored_by_the_pooled_event_log_and_read_back_by_dagsters_own(tmp_path, home):
    first = write_csv(tmp_path / "a.csv", HEADER_ROW, "P1,Ann,Lee,1980-01-01,F", "P2,Bob,Ray,1970-02-30,M")
    second = write_csv(tmp_path / "b.csv", HEADER_ROW, "P1,Ann,Lee,1980-01-01,F")
    env = {**os.environ, "PATIENT_ETL_HOME": str(home), "PATIENT_ETL_LINKAGE": "off"}
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([sys.executable, "-c", IMPORT_TWICE, str(first), str(second)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["outcomes"] == ["Finished with Errors", "Finished"]
    assert out["storage"] == "PooledSqliteEventLogStorage"
    # The run's process never imports pandas (nor GX, which runs in the validator); Arrow it needs.
    assert out["loaded"] == ["pyarrow"]

    # Dagster's own SQLite event log reads what the pooled one wrote: same files, same tables.
    plain = SqliteEventLogStorage(str(home / "dagster" / "history" / "runs"))
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_run_records()
        assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
        for record in runs:
            kinds = {e.dagster_event_type for e in plain.get_logs_for_run(record.dagster_run.run_id)
                     if e.is_dagster_event}
            assert {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.ASSET_MATERIALIZATION,
                    dg.DagsterEventType.ASSET_CHECK_EVALUATION, dg.DagsterEventType.RUN_SUCCESS} <= kinds
        # The index (cross-run asset records) too: both batches' partitions materialized `published_batch`.
        published = plain.get_latest_materialization_events([dg.AssetKey("published_batch")])
        assert published[dg.AssetKey("published_batch")] is not None
        assert len(instance.get_dynamic_partitions("batches")) == 2


def test_the_homes_dagster_yaml_is_written_kept_current_and_a_foreign_one_left_alone(tmp_path):
    folder = tmp_path / "dagster"
    folder.mkdir()
    write_home_config(folder)
    config = (folder / "dagster.yaml").read_text()
    assert config == home_config(folder) and str(folder / "history" / "runs") in config
    with dg.DagsterInstance.from_config(str(folder)) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)

    # A home written by an earlier version (the header, no event log) and a moved home are rewritten.
    (folder / "dagster.yaml").write_text(f"{HEADER} on first use: runs...\ntelemetry:\n  enabled: false\n")
    write_home_config(folder)
    assert (folder / "dagster.yaml").read_text() == home_config(folder)
    moved = tmp_path / "moved"
    folder.rename(moved)
    write_home_config(moved)
    assert str(moved / "history" / "runs") in (moved / "dagster.yaml").read_text()

    # One the user wrote (no header) is theirs.
    own = "telemetry:\n  enabled: false\n"
    (moved / "dagster.yaml").write_text(own)
    write_home_config(moved)
    assert (moved / "dagster.yaml").read_text() == own


def _entry(run_id: str, n: int) -> EventLogEntry:
    return EventLogEntry(error_info=None, level="INFO", user_message=f"message {n}", run_id=run_id,
                         timestamp=time.time())


def test_the_pooled_event_log_keeps_few_engines_and_survives_a_wipe(tmp_path):
    storage = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    run_ids = [f"run{n:02d}" for n in range(KEPT_SHARDS + 4)]
    for n, run_id in enumerate(run_ids):
        storage.store_event(_entry(run_id, n))
        storage.store_event(_entry(run_id, n + 100))
        assert len(storage._engines) <= KEPT_SHARDS
    for n, run_id in enumerate(run_ids):  # every run's file reads back, kept engine or not
        assert [e.user_message for e in storage.get_logs_for_run(run_id)] == [f"message {n}", f"message {n + 100}"]

    storage.wipe()
    assert not list((tmp_path / "runs").glob("run*.db"))
    storage.store_event(_entry("after", 1))
    assert [e.user_message for e in storage.get_logs_for_run("after")] == ["message 1"]
    storage.dispose()
    assert not storage._engines
