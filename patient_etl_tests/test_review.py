"""Review before publish: a held batch previews its outcomes and waits; a person approves or rejects it.

Organisations hold the first files of a new partner (or every file of some partners) before they touch
the patient table. A held batch that leaks into the target, an approval that publishes other bytes
than the ones previewed, or a decision nobody can trace, would each defeat the point of holding it.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from patient_etl.batches import SourceFile
from patient_etl.cli import main, run_batch
from patient_etl.definitions import build_defs
from patient_etl.resources import PatientEtl
from patient_etl.schedules import nightly_import_schedule_for
from patient_etl.sources.resources import Sources
from patient_etl.sources.sensors import upload_folder_sensor
from patient_etl_tests.conftest import query, read_results, write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex"
ROWS = ("P1,Ann,Lee,1980-01-01,F", "P2,Bob,Ray,1970-05-05,M", "P3,Cy,Moe,1990-02-30,U")


@pytest.fixture
def receiver():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


@pytest.fixture
def cli_env(monkeypatch, home, pg_url, receiver):
    """The command line as an operator runs it: this home, PostgreSQL, a webhook."""
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    monkeypatch.setenv("PATIENT_ETL_TARGET_URL", pg_url)
    monkeypatch.setenv("PATIENT_ETL_WEBHOOK_URL", receiver[0])
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return PatientEtl(home=str(home), target_url=pg_url)


def cli(capsys, *args: str) -> tuple[int, dict | list | None, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip().startswith(("{", "[")) else None, err


def tables(url: str) -> list[tuple]:
    return query(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")


def test_a_held_batch_writes_nothing_then_approval_publishes_it_and_records_who(tmp_path, capsys, cli_env,
                                                                                 receiver):
    url, (_, received) = cli_env.target_url, receiver
    roster = write_csv(tmp_path / "roster.csv", HEADER, *ROWS)
    code, held, _ = cli(capsys, "import", str(roster), "--review", "--json")
    assert code == 0 and held["status"] == "Awaiting approval"
    assert held["counts"] == {"Created": 2, "Updated": 0, "Unchanged": 0, "Errored": 1}
    # Nothing of the batch is published: no entity row, no row log; only its status row in the batch log.
    assert query(url, "SELECT count(*) FROM member") == [(0,)]
    assert query(url, "SELECT count(*) FROM import_row") == [(0,)]
    preview = Path(held["results_file"])
    assert preview.name.endswith("_roster_preview_results.csv")
    assert [r["status"] for r in read_results(held)] == ["Created", "Created", "Errored"]
    assert list(preview.parent.glob("*_roster_preview_errors.csv"))
    batch = cli_env.registry().require(held["batch_id"])
    assert batch.review["held"] == "it was imported with --review" and not batch.is_pending
    assert [r["status"] for r in received] == ["Awaiting approval"]

    code, waiting, _ = cli(capsys, "batches", "--status", "Awaiting approval", "--json")
    assert [r["batch_id"] for r in waiting] == [held["batch_id"]]
    # The nightly run leaves it alone.
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, resources={"etl": cli_env},
                                            scheduled_execution_time=dt.datetime.now(dt.UTC))
        assert nightly_import_schedule_for("UTC")(context).skip_message == "no batch is pending"

    code, approved, _ = cli(capsys, "approve", held["batch_id"], "--json")
    assert code == 0, approved
    assert approved["status"] == "Finished with Errors" and approved["counts"] == held["counts"]
    assert approved["decided_by"] == getpass.getuser() and approved["changed_since_preview"] == {}
    assert query(url, "SELECT member_id FROM member ORDER BY 1") == [("P1",), ("P2",)]
    (row,) = query(url, "SELECT status, held_reason, decided_by, decided_at IS NOT NULL FROM import_batch")
    assert row == ("Finished with Errors", "it was imported with --review", getpass.getuser(), True)
    assert not Path(approved["results_file"]).name.count("preview")
    assert [r["status"] for r in received] == ["Awaiting approval", "Finished with Errors"]
    code, shown, _ = cli(capsys, "show", held["batch_id"], "--json")
    assert shown["decided_by"] == getpass.getuser() and shown["decision"] == "approved"

    # Approved once is decided: a second approval is refused, and so is a rejection.
    code, _, err = cli(capsys, "approve", held["batch_id"])
    assert code == 2 and "already approved" in err
    with dg.DagsterInstance.from_config(str(cli_env.home_dir().dagster)) as instance:
        (materialization,) = instance.fetch_materializations(dg.AssetKey("published_batch"), limit=1).records
        metadata = materialization.asset_materialization.metadata
        assert metadata["decided_by"].value == getpass.getuser() and metadata["status"].value == "Finished with Errors"


def test_a_target_change_between_preview_and_approval_is_reported(tmp_path, capsys, cli_env):
    held_file = write_csv(tmp_path / "roster.csv", HEADER, *ROWS[:2])
    code, held, _ = cli(capsys, "import", str(held_file), "--review", "--json")
    assert held["counts"]["Created"] == 2
    meanwhile = write_csv(tmp_path / "other.csv", HEADER, "P1,Ann,Lee,1980-01-01,F")
    assert cli(capsys, "import", str(meanwhile), "--json")[1]["counts"]["Created"] == 1

    code, approved, _ = cli(capsys, "approve", held["batch_id"], "--as", "Dana Reviewer", "--json")
    assert code == 0 and approved["decided_by"] == "Dana Reviewer"
    assert approved["counts"] == {"Created": 1, "Updated": 0, "Unchanged": 1, "Errored": 0}
    assert approved["changed_since_preview"] == {"Created -> Unchanged": 1}
    rows = read_results(approved)
    assert [(r["row_number"], r["status"], r["since_preview"]) for r in rows] == [
        ("1", "Unchanged", "Created in the preview"), ("2", "Created", "")]


def test_rejection_ends_the_batch_with_its_reason_and_it_cannot_be_approved(tmp_path, capsys, cli_env, receiver):
    url, (_, received) = cli_env.target_url, receiver
    roster = write_csv(tmp_path / "roster.csv", HEADER, *ROWS)
    held = cli(capsys, "import", str(roster), "--review", "--json")[1]
    code, rejected, _ = cli(capsys, "reject", held["batch_id"], "--reason", "wrong clinic's file", "--json")
    assert code == 0 and rejected["status"] == "Rejected" and rejected["decided_by"] == getpass.getuser()
    (row,) = read_results(rejected)
    assert row["status"] == "Rejected" and "wrong clinic's file" in row["messages"]
    assert query(url, "SELECT count(*) FROM member") == [(0,)]
    assert query(url, "SELECT status, decided_by FROM import_batch") == [("Rejected", getpass.getuser())]
    assert [(r["status"], r["reason"]) for r in received][-1] == ("Rejected", "rejected in review: wrong clinic's file")

    code, _, err = cli(capsys, "approve", held["batch_id"])
    assert code == 2 and "already rejected" in err and "new upload" in err
    code, _, err = cli(capsys, "rerun", held["batch_id"])
    assert code == 2 and "never published" in err
    # Nor does a backfill of its partition publish it.
    outcome = run_batch(held["batch_id"], cli_env)
    assert outcome["run_failure"] and "already rejected" in outcome["run_failure"]
    assert query(url, "SELECT count(*) FROM member") == [(0,)]
    assert cli_env.registry().require(held["batch_id"]).status == "Rejected"


def test_only_listed_approvers_decide(tmp_path, capsys, cli_env, monkeypatch, instance):
    roster = write_csv(tmp_path / "roster.csv", HEADER, *ROWS[:1])
    held = cli(capsys, "import", str(roster), "--review", "--json")[1]
    monkeypatch.setenv("PATIENT_ETL_APPROVERS", "alice, bob")
    code, _, err = cli(capsys, "approve", held["batch_id"])
    assert code == 2 and f"{getpass.getuser()!r} may not approve or reject batches (PATIENT_ETL_APPROVERS)" in err
    code, _, err = cli(capsys, "reject", held["batch_id"], "--reason", "x", "--as", "alice")
    assert code == 2, "--as names the decider; the user running the command must be an approver too"
    assert cli_env.registry().require(held["batch_id"]).status == "Awaiting approval"

    # From the UI: the run's user (Dagster+ sets it) must be an approver.
    etl = PatientEtl(home=cli_env.home, target_url=cli_env.target_url, approvers="alice,bob")
    instance.add_dynamic_partitions("batches", [held["batch_id"]])
    job = build_defs({"etl": etl}).resolve_job_def("approve_batch_job")
    refused = job.execute_in_process(instance=instance, partition_key=held["batch_id"], raise_on_error=False,
                                     tags={"dagster/user": "mallory"})
    assert not refused.success
    assert etl.registry().require(held["batch_id"]).status == "Awaiting approval", "a refusal changes nothing"
    approved = job.execute_in_process(instance=instance, partition_key=held["batch_id"],
                                      tags={"dagster/user": "alice"})
    assert approved.success
    batch = etl.registry().require(held["batch_id"])
    assert batch.status == "Finished" and batch.review["decided_by"] == "alice"


def test_a_held_batch_expires_by_the_nightly_schedule(tmp_path, home, pg_url, receiver, instance):
    url, received = receiver
    etl = PatientEtl(home=str(home), target_url=pg_url, webhook_url=url, review="required", review_expires_days=0)
    roster = write_csv(tmp_path / "roster.csv", HEADER, *ROWS[:2])
    stat = roster.stat()
    batch = etl.registry().register("cli", [SourceFile(roster.name, str(roster), stat.st_size, stat.st_mtime_ns)], "x")
    assert run_batch(batch.batch_id, etl, instance=instance)["status"] == "Awaiting approval"
    checks = instance.get_records_for_run(
        instance.get_run_records()[0].dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    held_check = next(r.event_log_entry.dagster_event.event_specific_data for r in checks
                      if r.event_log_entry.dagster_event.event_specific_data.check_name == "published_batch_was_not_held")
    assert not held_check.passed and held_check.severity == dg.AssetCheckSeverity.WARN

    context = dg.build_schedule_context(instance=instance, resources={"etl": etl},
                                        scheduled_execution_time=dt.datetime.now(dt.UTC))
    (request,) = nightly_import_schedule_for("UTC")(context)
    assert request.partition_key == batch.batch_id
    job = build_defs({"etl": etl}).resolve_job_def("import_job")
    result = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                    run_config=request.run_config, asset_selection=request.asset_selection)
    assert result.success
    ended = etl.registry().require(batch.batch_id)
    assert ended.status == "Expired" and ended.review["decided_by"] == "nightly schedule"
    (row,) = read_results({"results_file": ended.results_file})
    assert row["status"] == "Expired" and "not approved within 0 days" in row["messages"]
    assert [r["status"] for r in received] == ["Awaiting approval", "Expired"]
    assert query(pg_url, "SELECT status FROM import_batch") == [("Expired",)]
    assert query(pg_url, "SELECT count(*) FROM member") == [(0,)]


def test_rules_hold_a_batch_by_its_outcomes_or_as_a_sources_first(tmp_path, home, pg_url, run_import):
    errors = PatientEtl(home=str(home), target_url=pg_url, review_max_errored_percent=20)
    clean = write_csv(tmp_path / "clean.csv", HEADER, *ROWS[:2])
    assert run_import(clean, errors)["status"] == "Finished", "no errored rows: published"
    bad = write_csv(tmp_path / "bad.csv", HEADER, *ROWS)
    held = run_import(bad, errors)
    assert held["status"] == "Awaiting approval"
    assert "33% of its rows errored" in errors.registry().require(held["batch_id"]).review["held"]

    updates = PatientEtl(home=str(home), target_url=pg_url, review_max_updates=0)
    changed = write_csv(tmp_path / "changed.csv", HEADER, "P1,Ann,Lee-Smith,1980-01-01,F")
    assert run_import(changed, updates)["status"] == "Awaiting approval"
    assert query(pg_url, "SELECT last_name FROM member WHERE member_id = 'P1'") == [("Lee",)]

    first = PatientEtl(home=str(tmp_path / "other_home"), target_url=pg_url, review="first")
    held = run_import(clean, first)
    assert held["status"] == "Awaiting approval"
    assert "first batch from its source" in first.registry().require(held["batch_id"]).review["held"]


def test_a_source_can_require_review(tmp_path, home, pg_url, instance, monkeypatch):
    etl = PatientEtl(home=str(home), target_url=pg_url)
    review_folder = home / "inbox" / "review"
    review_folder.mkdir(parents=True)
    write_csv(review_folder / "roster.csv", HEADER, *ROWS[:1])
    resources = {"etl": etl, "sources": Sources(quiet_seconds=0)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        first = upload_folder_sensor(context)
    with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources) as context:
        (request,) = upload_folder_sensor(context).run_requests
    instance.add_dynamic_partitions("batches", [request.partition_key])
    job = build_defs({"etl": etl, "sources": Sources()}).resolve_job_def("import_job")
    assert job.execute_in_process(instance=instance, partition_key=request.partition_key).success
    batch = etl.registry().require(request.partition_key)
    assert batch.status == "Awaiting approval" and "review/ sub-folder" in batch.review["held"]
    assert review_folder.is_dir() and not list(review_folder.iterdir()), "the review folder stays, its file leaves"
    assert query(pg_url, "SELECT count(*) FROM member") == [(0,)], "held: nothing of it published"

    monkeypatch.setenv("PATIENT_ETL_SFTP_REVIEW", "required")
    monkeypatch.setenv("PATIENT_ETL_S3_REVIEW", "required")
    monkeypatch.setenv("PATIENT_ETL_S3_BUCKET", "partner-drop")
    from patient_etl.sources.resources import sources_from_env

    configured = sources_from_env(resolve=True)
    assert configured.of("sftp").review_reason(etl.home_dir(), batch) == "the SFTP server requires review"
    assert configured.of("s3").review_reason(etl.home_dir(), batch) == "the object store requires review"
    assert configured.of("upload").review_reason(etl.home_dir(), batch) is not None


def test_approval_refuses_a_landed_copy_other_than_the_one_previewed(tmp_path, etl, run_import, instance):
    roster = write_csv(tmp_path / "roster.csv", HEADER, *ROWS[:1])
    held = run_import(roster, PatientEtl(home=etl.home, review="required"))
    batch = etl.registry().require(held["batch_id"])
    (etl.home_dir().root / batch.landed[0]["path"]).write_text(HEADER + "\nP9,Eve,Nye,1980-01-01,F\n")
    outcome = run_batch(batch.batch_id, etl, instance=instance, job_name="approve_batch_job",
                        publish={"decision": "approve", "decided_by": "alice"})
    assert "not the one previewed (its sha256 differs)" in outcome["run_failure"]
    assert "P9" not in outcome["run_failure"] and outcome["status"] == "Awaiting approval"
    assert query(etl.target(), "SELECT count(*) FROM member") == [(0,)], "nothing published"


def test_an_existing_target_gains_the_review_columns(tmp_path, home, etl, run_import, instance):
    """A target created by the previous release (its import_batch without the review columns)."""
    import sqlalchemy as sa

    engine = sa.create_engine(etl.target())
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE import_batch (batch_id TEXT PRIMARY KEY, source TEXT NOT NULL, "
                             "file_names TEXT NOT NULL, sha256 TEXT, status TEXT NOT NULL, reason TEXT, "
                             "rows_total BIGINT NOT NULL DEFAULT 0, created BIGINT NOT NULL DEFAULT 0, "
                             "updated BIGINT NOT NULL DEFAULT 0, unchanged BIGINT NOT NULL DEFAULT 0, "
                             "errored BIGINT NOT NULL DEFAULT 0, results_file TEXT, registered_at TIMESTAMP, "
                             "finished_at TIMESTAMP)")
        conn.exec_driver_sql("INSERT INTO import_batch (batch_id, source, file_names, status) "
                             "VALUES ('old-batch', 'cli', '[]', 'Finished')")
    engine.dispose()
    roster = write_csv(tmp_path / "roster.csv", HEADER, *ROWS[:1])
    held = run_import(roster, PatientEtl(home=str(home), review="required"))
    run_batch(held["batch_id"], etl, instance=instance, job_name="reject_batch_job",
              publish={"decision": "reject", "reason": "not ours", "decided_by": "alice"})
    rows = query(etl.target(), "SELECT batch_id, status, decided_by FROM import_batch ORDER BY 1")
    assert rows == [(held["batch_id"], "Rejected", "alice"), ("old-batch", "Finished", None)]
