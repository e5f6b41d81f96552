"""Retention: the partners' raw files and their staging are kept only as long as they are useful.

The landed copy holds every value the partner sent (full SSNs included) and staging a working copy of it:
once a batch has ended, both go after PATIENT_ETL_RETENTION_DAYS (30 by default), by `patient-etl purge`
or the daily `retention_schedule`. Results files, the target's logs and the batch record stay, so the
outcome is still known; reprocessing a purged batch says why it cannot be done.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg

from patient_etl.batches import SourceFile
from patient_etl.cli import main, run_batch
from patient_etl.resources import PatientEtl
from patient_etl.schedules import retention_job
from patient_etl_tests.conftest import write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex"


def _age(etl: PatientEtl, batch_id: str, days: int) -> None:
    """Make a batch look as if it ended `days` ago."""
    registry = etl.registry()
    batch = registry.require(batch_id)
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).isoformat(timespec="seconds")
    batch.history[-1]["at"] = when
    registry.save(batch)


def test_purge_removes_landed_copies_and_staging_of_ended_batches_only(tmp_path, etl, run_import, instance,
                                                                        monkeypatch, capsys):
    old = run_import(write_csv(tmp_path / "old.csv", HEADER, "P1,Ann,Lee,1980-01-01,F"), etl)
    recent = run_import(write_csv(tmp_path / "recent.csv", HEADER, "P2,Bo,Lee,1981-01-01,M"), etl)
    pending = etl.registry().register("cli", [SourceFile("late.csv", str(tmp_path / "late.csv"), 1, 1)], "x",
                                      now=dt.datetime.now(dt.UTC) - dt.timedelta(days=90))
    _age(etl, old["batch_id"], 31)
    home = etl.home_dir()
    assert (home.batch_archive(old["batch_id"])).is_dir() and (home.batch_staging(old["batch_id"])).is_dir()

    monkeypatch.setenv("PATIENT_ETL_HOME", etl.home)
    assert main(["purge", "--older-than", "30", "--json"]) == 0
    purged = json.loads(capsys.readouterr().out)["purged"]
    assert [p["batch_id"] for p in purged] == [old["batch_id"]]

    assert not home.batch_archive(old["batch_id"]).exists() and not home.batch_staging(old["batch_id"]).exists()
    assert home.batch_archive(recent["batch_id"]).is_dir() and home.batch_staging(recent["batch_id"]).is_dir()
    record = etl.registry().require(old["batch_id"])
    assert record.status == "Finished" and record.purged_at and record.counts["Created"] == 1
    assert (tmp_path / "home" / "results" / old["results_file"].rsplit("/", 1)[-1]).exists()
    assert etl.registry().require(pending.batch_id).purged_at is None

    assert main(["show", old["batch_id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["purged_at"] == record.purged_at
    assert main(["purge", "--older-than", "30", "--json"]) == 0  # nothing left to purge
    assert json.loads(capsys.readouterr().out)["purged"] == []

    # Reprocessing a purged batch: the CLI refuses it; a backfill ends it Failed through the failure path.
    assert main(["rerun", old["batch_id"]]) == 2
    expected = f"landed copy purged on {record.purged_at[:10]}"
    assert expected in capsys.readouterr().err
    backfill = run_batch(old["batch_id"], etl, instance=instance)
    assert backfill["status"] == "Failed" and backfill["reason"].startswith(expected)
    with open(backfill["results_file"], encoding="utf-8") as handle:
        assert expected in handle.read()


def test_the_daily_retention_job_purges_past_the_setting(tmp_path, etl, run_import):
    done = run_import(write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F"), etl)
    _age(etl, done["batch_id"], 8)
    keep = PatientEtl(home=etl.home, retention_days=10)
    assert retention_job.execute_in_process(resources={"etl": keep}).success
    assert etl.registry().require(done["batch_id"]).purged_at is None
    short = PatientEtl(home=etl.home, retention_days=7)
    with dg.instance_for_test() as instance:
        result = retention_job.execute_in_process(resources={"etl": short}, instance=instance)
    assert result.success and result.output_for_node("purge_ended_batches") == 1
    assert etl.registry().require(done["batch_id"]).purged_at is not None
    assert not etl.home_dir().batch_archive(done["batch_id"]).exists()
