"""Publishing into PostgreSQL: Created -> Unchanged -> Updated, dry runs, logs, atomicity, concurrency.

These are the promises a data engineer builds on: reprocessing is idempotent, a dry run writes
nothing, a publish that dies leaves the target as it was, and two batches can run side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from patient_etl.cli import run_batch
from patient_etl.target import KILL_BEFORE_COMMIT
from patient_etl_tests.conftest import query, read_results, write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex,City,Phone"
ROWS = ["P1,Ann,Lee,1980-01-01,F,,617-555-0101", "P2,Bob,Ray,1970-05-05,M,,", "P3,Cy,Moe,1990-02-02,U,,",
        "P4,Di,Fox,1985-12-31,F,,"]


def test_created_then_unchanged_then_updated(tmp_path, run_import, pg_etl):
    path = write_csv(tmp_path / "roster.csv", HEADER, *ROWS)
    first = run_import(path, pg_etl)
    assert first["status"] == "Finished" and first["counts"]["Created"] == 4

    again = run_import(path, pg_etl)
    assert again["counts"] == {"Created": 0, "Updated": 0, "Unchanged": 4, "Errored": 0}

    changed = write_csv(tmp_path / "roster2.csv", HEADER, "P1,Ann,Lee-Smith,1980-01-01,F,,617-555-0101",
                        "P2,Bob,Ray,1970-05-05,M,,508-555-0102", "P3,Cy,Moe,1990-02-02,U,,", "P5,Ed,Nye,1960-06-06,M,,")
    third = run_import(changed, pg_etl)
    assert third["counts"] == {"Created": 1, "Updated": 2, "Unchanged": 1, "Errored": 0}
    by_row = {r["row_number"]: r for r in read_results(third)}
    assert by_row["1"]["changed_fields"] == "last_name"
    assert by_row["2"]["changed_fields"] == "phones[1]"
    url = pg_etl.target_url
    assert query(url, "SELECT last_name FROM member WHERE member_id = 'P1'") == [("Lee-Smith",)]
    # An empty cell never erases what the target holds.
    assert query(url, "SELECT phones FROM member WHERE member_id = 'P1'") == [('["6175550101"]',)]
    assert query(url, "SELECT count(*) FROM member") == [(5,)]
    batches = query(url, "SELECT status, created, updated, unchanged, errored FROM import_batch ORDER BY finished_at")
    assert batches == [("Finished", 4, 0, 0, 0), ("Finished", 0, 0, 4, 0), ("Finished", 1, 2, 1, 0)]
    rows = query(url, "SELECT row_number, status, changed_fields FROM import_row WHERE batch_id = :b ORDER BY 1",
                 b=third["batch_id"])
    assert rows == [(1, "Updated", "last_name"), (2, "Updated", "phones[1]"), (3, "Unchanged", None),
                    (4, "Created", None)]
    created_batch, updated_batch = query(url, "SELECT created_batch_id, updated_batch_id FROM member "
                                              "WHERE member_id = 'P1'")[0]
    assert created_batch == first["batch_id"] and updated_batch == third["batch_id"]


def test_dry_run_writes_nothing(tmp_path, run_import, pg_etl):
    path = write_csv(tmp_path / "roster.csv", HEADER, *ROWS, "P9,Bad,Date,1990-02-30,F,,")
    outcome = run_import(path, pg_etl, dry_run=True)
    assert outcome["status"] == "Finished with Errors"
    assert outcome["counts"] == {"Created": 4, "Updated": 0, "Unchanged": 0, "Errored": 1}
    assert "dry-run" in Path(outcome["results_file"]).name
    tables = query(pg_etl.target_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    assert tables == []
    # A real run afterwards finds the same outcomes.
    assert run_import(path, pg_etl)["counts"] == outcome["counts"]


def test_results_files_are_dated_never_overwritten_and_formula_safe(tmp_path, run_import, etl):
    path = write_csv(tmp_path / "roster.csv", "Patient ID,First Name,Last Name,DOB,Sex",
                     "=HYPERLINK(1),Ann,Lee,1980-01-01,F", "@SUM,+Bob,-Ray,1970-05-05,M")
    first = run_import(path, etl)
    second = run_import(path, etl)
    one, two = Path(first["results_file"]), Path(second["results_file"])
    assert one != two and one.exists() and two.exists()
    assert one.name.endswith("_roster_results.csv") and one.name[:10].count("-") == 2
    assert two.name == one.name.replace("_results.csv", "_results-2.csv")
    header = one.read_text().splitlines()[0]
    assert header.startswith("row_number,entity,external_id,status,messages")
    external_ids = [r["external_id"] for r in read_results(first)]
    assert external_ids == ["'=HYPERLINK(1)", "'@SUM"]


def test_killed_publish_leaves_target_untouched_and_retry_completes(tmp_path, pg_etl, home):
    path = write_csv(tmp_path / "roster.csv", HEADER, *ROWS)
    env = {**os.environ, "PATIENT_ETL_HOME": str(home), "PATIENT_ETL_TARGET_URL": pg_etl.target_url,
           KILL_BEFORE_COMMIT: "1"}
    env.pop("DAGSTER_HOME", None)
    killed = subprocess.run([sys.executable, "-m", "patient_etl.cli", "import", str(path), "--json"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    url = pg_etl.target_url
    # Nothing of the publish remains; the batch's row in the target says where it stopped.
    assert query(url, "SELECT count(*) FROM member") == [(0,)]
    assert query(url, "SELECT count(*) FROM import_row") == [(0,)]
    assert query(url, "SELECT status FROM import_batch") == [("Publishing",)]
    (batch_id,) = [p.stem for p in (home / "batches").glob("*.json")]

    retried = run_batch(batch_id, pg_etl)
    assert retried["status"] == "Finished" and retried["counts"]["Created"] == 4
    assert query(url, "SELECT count(*) FROM member") == [(4,)]
    assert query(url, "SELECT count(*) FROM import_row WHERE batch_id = :b", b=batch_id) == [(4,)]


def test_two_batches_processed_concurrently(tmp_path, pg_etl, home):
    files = []
    for n in range(2):
        rows = [f"C{n}-{i},First{i},Last{i},1980-01-{i % 28 + 1:02d},F,," for i in range(300)]
        files.append(write_csv(tmp_path / f"roster{n}.csv", HEADER, *rows, *ROWS))  # ROWS shared by both
    env = {**os.environ, "PATIENT_ETL_HOME": str(home), "PATIENT_ETL_TARGET_URL": pg_etl.target_url}
    env.pop("DAGSTER_HOME", None)
    procs = [subprocess.Popen([sys.executable, "-m", "patient_etl.cli", "import", str(f), "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 1), err[-2000:]
        assert out.strip(), err[-3000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    batch_ids = {o["batch_id"] for o in outcomes}
    assert len(batch_ids) == 2
    # The shared rows may have lost a race on the first attempt; the retry policy replays the publish.
    assert [o["status"] for o in outcomes] == ["Finished", "Finished"], outcomes
    assert query(pg_etl.target_url, "SELECT count(*) FROM member") == [(604,)]
    created = sum(o["counts"]["Created"] for o in outcomes)
    assert created == 604
    assert sum(o["counts"]["Unchanged"] for o in outcomes) == 4
