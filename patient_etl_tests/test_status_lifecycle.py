"""A batch's status is visible in the target as it moves through the stages, not only once it ends.

Data engineers and the partners' tools read the target: a batch stuck in staging or publishing must show
where it stopped (Received, Landed, Staged, Checked, Publishing), then how it ended (Finished, Finished
with Errors, Failed). The command line shows the same lifecycle from the batch registry.
"""

from __future__ import annotations

import json

from patient_etl.cli import main
from patient_etl_tests.conftest import query, write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex"
LIFECYCLE = ["Received", "Landed", "Staged", "Checked", "Publishing", "Finished"]


def test_each_stage_is_recorded_and_shown(tmp_path, etl, run_import, monkeypatch, capsys):
    outcome = run_import(write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F"), etl)
    batch = etl.registry().require(outcome["batch_id"])
    assert [h["status"] for h in batch.history] == LIFECYCLE
    row = query(etl.target(), "SELECT status, run_id, created, status_at IS NOT NULL FROM import_batch")
    assert row == [("Finished", outcome["run_id"], 1, True)]

    monkeypatch.setenv("PATIENT_ETL_HOME", etl.home)
    assert main(["batches", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["status"] == "Finished" and listed["counts"]["Created"] == 1
    assert main(["show", outcome["batch_id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [h["status"] for h in shown["history"]] == LIFECYCLE


def test_a_registered_batch_is_in_the_target_before_it_runs(tmp_path, etl):
    from patient_etl.batches import SourceFile

    batch = etl.registry().register("upload", [SourceFile("roster.csv", str(tmp_path / "roster.csv"), 10, 1)], "f")
    assert query(etl.target(), "SELECT batch_id, status, created FROM import_batch") == [(batch.batch_id, "Received", 0)]


def test_a_file_level_failure_ends_failed_in_the_target(tmp_path, etl, run_import):
    outcome = run_import(write_csv(tmp_path / "roster.csv", "Nothing,We,Know"), etl)
    assert outcome["status"] == "Failed"
    history = [h["status"] for h in etl.registry().require(outcome["batch_id"]).history]
    assert history == ["Received", "Landed", "Failed"]
    assert query(etl.target(), "SELECT status, run_id FROM import_batch") == [("Failed", outcome["run_id"])]
    assert query(etl.target(), "SELECT status FROM import_run") == [("Failed",)]
