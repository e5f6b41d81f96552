"""A batch's outcome survives a crash, and the target keeps every run's outcome and row log.

The outcome (counts and per-row statuses) is committed in the same transaction as the data. A process
that dies right after the commit used to leave a batch that, reprocessed, reported "all Unchanged" and
overwrote its true counts: the partner never learned which rows were created. Now the reprocess reports
what the commit did, and each processing run keeps its own row in `import_run` and rows in `import_run_row`.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import sqlalchemy as sa

from patient_etl.cli import run_batch
from patient_etl.entities import ENTITIES
from patient_etl.target import KILL_AFTER_COMMIT, open_target
from patient_etl_tests.conftest import query, read_results, write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex"
ROWS = ["P1,Ann,Lee,1980-01-01,F", "P2,Bob,Ray,1970-05-05,M", "P3,Cy,Moe,1990-02-02,U", "P4,Di,Fox,1985-12-31,X"]


def test_a_crash_right_after_the_commit_reports_what_the_commit_did(tmp_path, pg_etl, home):
    path = write_csv(tmp_path / "roster.csv", HEADER, *ROWS)
    env = {**os.environ, "PATIENT_ETL_HOME": str(home), "PATIENT_ETL_TARGET_URL": pg_etl.target_url,
           KILL_AFTER_COMMIT: "1"}
    env.pop("DAGSTER_HOME", None)
    killed = subprocess.run([sys.executable, "-m", "patient_etl.cli", "import", str(path), "--json"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    url = pg_etl.target_url
    (batch_id,) = [p.stem for p in (home / "batches").glob("*.json")]
    assert query(url, "SELECT count(*) FROM member") == [(3,)]
    assert query(url, "SELECT status, created, errored FROM import_run") == [("Finished with Errors", 3, 1)]
    assert pg_etl.registry().require(batch_id).status == "Publishing"  # the registry never heard of the commit
    assert [p.name for p in (home / "results").iterdir() if not p.name.startswith(".")] == []

    recovered = run_batch(batch_id, pg_etl)
    assert recovered["status"] == "Finished with Errors"
    assert recovered["counts"] == {"Created": 3, "Updated": 0, "Unchanged": 0, "Errored": 1}
    assert [(r["external_id"], r["status"]) for r in read_results(recovered)] == [
        ("P1", "Created"), ("P2", "Created"), ("P3", "Created"), ("P4", "Errored")]
    # Nothing was applied twice, and the history still holds the one run that published.
    assert query(url, "SELECT count(*) FROM import_run") == [(1,)]
    assert [p.name for p in (home / "results").iterdir() if p.name.endswith(".writing")] == []  # the dead one's

    again = run_batch(batch_id, pg_etl)  # a deliberate reprocess: now Unchanged, in a run of its own
    assert again["counts"] == {"Created": 0, "Updated": 0, "Unchanged": 3, "Errored": 1}
    runs = query(url, "SELECT run_id, created, unchanged FROM import_run ORDER BY finished_at")
    assert [(c, u) for _, c, u in runs] == [(3, 0), (0, 3)]
    assert runs[1][0] == again["run_id"]
    by_run = query(url, "SELECT run_id, count(*), sum(CASE WHEN status = 'Created' THEN 1 ELSE 0 END) "
                        "FROM import_run_row GROUP BY run_id ORDER BY 3 DESC")
    assert [(n, created) for _, n, created in by_run] == [(4, 3), (4, 0)]
    # The batch's latest row and row log are the last run's.
    assert query(url, "SELECT status, unchanged, run_id FROM import_batch") == [
        ("Finished with Errors", 3, again["run_id"])]
    assert query(url, "SELECT DISTINCT run_id FROM import_row") == [(again["run_id"],)]


def test_a_publish_that_fails_writing_its_logs_leaves_no_errors_files(tmp_path, pg_etl, home, run_import):
    # The errors files are written beside the logs' load: when that load fails, none is left behind
    # (neither linked into place nor half-written), and the reprocess writes them.
    url, results = pg_etl.target_url, home / "results"
    target = open_target(url)
    with target.begin() as conn:  # the target's tables, as a first import would create them
        target.migrate(conn, list(ENTITIES.values()))
    target.dispose()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:  # the target refuses the history's rows, as a full disk would
        conn.exec_driver_sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                             "$$ BEGIN RAISE EXCEPTION 'no space left on device'; END $$")
        conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON import_run_row "
                             "FOR EACH STATEMENT EXECUTE FUNCTION refuse()")
    rows = [*ROWS, "P5,Ed,Poe,1975-13-40,M"]
    failed = run_import(write_csv(tmp_path / "roster.csv", HEADER, *rows), pg_etl)
    assert failed["status"] == "Failed", failed
    assert query(url, "SELECT count(*) FROM member") == [(0,)]
    left = sorted(p.name for p in results.iterdir() if "roster" in p.name)
    assert [n for n in left if "errors" in n or n.endswith(".writing")] == [], left

    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse ON import_run_row")
    engine.dispose()
    again = run_batch(failed["batch_id"], pg_etl)
    assert again["status"] == "Finished with Errors"
    written = sorted(results.glob("*roster_errors*"))
    assert [p.suffix for p in written] == [".csv", ".xlsx"]
    assert [line.split(",")[0] for line in written[0].read_text().splitlines()[1:]] == ["P4", "P5"]
    assert not [p for p in results.iterdir() if p.name.endswith(".writing")]


def test_an_errors_file_that_cannot_be_written_fails_the_publish_before_its_commit(tmp_path, pg_etl, home,
                                                                                   run_import):
    # The files are written while the target writes; one that cannot be written (here a folder stands
    # where its workbook goes, as a full disk would refuse it) fails the publish before the commit, in
    # each of its attempts: nothing is applied, and the reprocess publishes and writes them all. (Before,
    # the files were awaited after the commit: the batch failed with its rows applied.)
    url, results = pg_etl.target_url, home / "results"
    results.mkdir(parents=True, exist_ok=True)
    days = {dt.datetime.now(dt.UTC).date(), (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).date()}
    blocked = [results / f".{day.isoformat()}_roster_errors.xlsx.0.{os.getpid()}.writing" for day in days]
    for path in blocked:
        path.mkdir()
    failed = run_import(write_csv(tmp_path / "roster.csv", HEADER, *ROWS), pg_etl)
    assert failed["status"] == "Failed", failed
    assert query(url, "SELECT count(*) FROM member") == [(0,)]
    assert query(url, "SELECT count(*) FROM import_run_row") == [(0,)]
    # No row's outcome, nothing half-written: the batch's failure, and the folders in the way.
    (report,) = [p for p in results.iterdir() if p not in blocked]
    assert report.read_text().splitlines()[1].startswith(",,,Failed,error: batch: publishing failed with "
                                                         "xlsxwriter.exceptions.FileCreateError")

    for path in blocked:
        path.rmdir()
    again = run_batch(failed["batch_id"], pg_etl)
    assert again["status"] == "Finished with Errors"
    assert again["counts"] == {"Created": 3, "Updated": 0, "Unchanged": 0, "Errored": 1}
    assert sorted(p.suffix for p in results.glob("*roster_errors*")) == [".csv", ".xlsx"]
    assert [p.name for p in results.iterdir() if p.name.startswith(".")] == []
