"""Daily operation as data engineers live it: one Dagster instance per home, every failed run ends its
batch, row errors visible in the UI, quiet output, batches listed from the command line.

A batch that fails after staging and is left "Staged" never answers its partner and is retried every
night; an import that the UI cannot see, or a partition lost on restart, breaks backfills.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from patient_etl.batches import SourceFile
from patient_etl.cli import main
from patient_etl.definitions import build_defs
from patient_etl.failure import batch_failure_sensor
from patient_etl.partitions import batch_partitions_sensor
from patient_etl.resources import PatientEtl
from patient_etl.sources import Sources
from patient_etl_tests.conftest import read_results, write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex"
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:9/nowhere"  # the discard port: nothing listens


def _cli(args: list[str], home: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATIENT_ETL_HOME": str(home), **env}
    environment.pop("DAGSTER_HOME", None)
    return subprocess.run([sys.executable, "-m", "patient_etl.cli", *args], env=environment, capture_output=True,
                          text=True, timeout=300)


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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


@pytest.fixture
def _clean_home_env(monkeypatch, home):
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def test_a_cli_import_is_a_run_in_the_homes_instance_and_quiet(tmp_path, home):
    roster = write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F", "P2,Bob,Ray,1970-02-30,M")
    run = _cli(["import", str(roster), "--json"], home)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(run.stderr.encode()) < 4096, run.stderr[-2000:]
    outcome = json.loads(run.stdout)
    assert outcome["status"] == "Finished with Errors"

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.job_name == "import_job"
        assert record.dagster_run.tags["dagster/partition"] == outcome["batch_id"]
        assert outcome["batch_id"] in instance.get_dynamic_partitions("batches")
        materialized = instance.fetch_materializations(dg.AssetKey("published_batch"), limit=5).records
        assert [m.partition_key for m in materialized] == [outcome["batch_id"]]
        assert instance.fetch_materializations(dg.AssetKey("delivered_results"), limit=1).records == [], \
            "a command-line batch keeps its results in the home: no delivery is shown"
        # Row errors show as a failed (WARN) check on the entity, with counts by rule and no values.
        checks = instance.get_records_for_run(record.dagster_run.run_id,
                                              of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        evaluations = {r.event_log_entry.dagster_event.event_specific_data.check_name:
                       r.event_log_entry.dagster_event.event_specific_data for r in checks}
        member = evaluations["member_rows_pass_their_checks"]
        assert not member.passed and member.severity == dg.AssetCheckSeverity.WARN
        assert member.metadata["errored_rows"].value == 1
        assert "birth_date: is not a valid date" in member.metadata["by_rule"].value
        assert "1970-02-30" not in member.metadata["by_rule"].value

    listed = _cli(["batches", "--json"], home)
    (row,) = json.loads(listed.stdout)
    assert row["batch_id"] == outcome["batch_id"] and row["status"] == "Finished with Errors"
    assert row["counts"] == {"Created": 1, "Updated": 0, "Unchanged": 0, "Errored": 1}
    assert _cli(["batches", "--status", "Failed", "--json"], home).stdout.strip() == "[]"
    shown = json.loads(_cli(["show", outcome["batch_id"], "--json"], home).stdout)
    assert shown["results_file"] == outcome["results_file"] and shown["landed"][0]["size"] == roster.stat().st_size
    missing = _cli(["show", "no-such-batch"], home)
    assert missing.returncode == 2 and "no batch 'no-such-batch'" in missing.stderr


def test_an_import_runs_after_another_instance_was_left_current_and_collected(tmp_path, etl, run_import):
    """Dagster keeps the current instance's state storage in a context variable, which an instance
    that is not closed in order (a notebook, another test) can leave pointing at a collected one; the
    job is resolved against the run's own instance, not that one (a CI run failed on it once)."""
    import gc

    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with dg.instance_for_test() as stale:
        storage = stale.defs_state_storage
    left = set_defs_state_storage(storage)
    left.__enter__()  # left current, as an instance closed out of order leaves it
    try:
        del stale
        gc.collect()
        path = write_csv(tmp_path / "roster.csv", "Patient ID,First Name,Last Name,DOB,Gender",
                         "A1,Ann,Lee,1980-01-02,F")
        assert run_import(path, etl)["status"] == "Finished"
    finally:
        left.__exit__(None, None, None)


def test_partitions_lost_with_the_instance_come_back_and_a_backfill_runs(tmp_path, home, etl, _clean_home_env):
    roster = write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F")
    assert main(["import", str(roster), "--json"]) == 0
    (batch_id,) = etl.registry().ids()
    with dg.instance_for_test() as fresh:  # a restart with an empty instance
        assert batch_id not in fresh.get_dynamic_partitions("batches")
        with dg.build_sensor_context(instance=fresh, resources={"etl": etl, "sources": Sources()}) as context:
            result = batch_partitions_sensor(context)
        (request,) = result.dynamic_partitions_requests
        assert request.partition_keys == [batch_id]
        fresh.add_dynamic_partitions("batches", request.partition_keys)
        with dg.build_sensor_context(instance=fresh, resources={"etl": etl, "sources": Sources()}) as context:
            assert "all 1 batch partitions are present" in batch_partitions_sensor(context).skip_reason.skip_message
        job = build_defs({"etl": etl}).resolve_job_def("import_job")
        backfill = job.execute_in_process(instance=fresh, partition_key=batch_id, raise_on_error=False)
        assert backfill.success
    assert etl.registry().require(batch_id).counts["Unchanged"] == 1


def test_a_publish_failure_from_the_cli_ends_the_batch_failed(tmp_path, home, receiver, monkeypatch,
                                                               _clean_home_env):
    url, received = receiver
    monkeypatch.setenv("PATIENT_ETL_TARGET_URL", UNREACHABLE_PG)
    monkeypatch.setenv("PATIENT_ETL_WEBHOOK_URL", url)
    roster = write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F")
    assert main(["import", str(roster), "--json"]) == 1, "an internal error, not the partner's file"
    (batch,) = PatientEtl(home=str(home)).registry().all()
    assert batch.status == "Failed" and batch.failure == "run"
    assert "publishing failed with sqlalchemy.exc.OperationalError" in batch.reason
    (row,) = read_results({"results_file": batch.results_file})
    assert row["status"] == "Failed" and "publishing failed" in row["messages"]
    assert [(r["batch_id"], r["status"]) for r in received] == [(batch.batch_id, "Failed")]
    # The nightly schedule does not pick a Failed batch up again; `rerun` does, once the target is back.
    assert PatientEtl(home=str(home)).registry().pending() == []
    monkeypatch.delenv("PATIENT_ETL_TARGET_URL")
    assert main(["rerun", batch.batch_id, "--json"]) == 0
    assert PatientEtl(home=str(home)).registry().require(batch.batch_id).status == "Finished"


def test_a_failed_run_launched_by_dagster_is_ended_by_the_failure_sensor(tmp_path, home, receiver, instance):
    url, received = receiver
    etl = PatientEtl(home=str(home), target_url=UNREACHABLE_PG, webhook_url=url)
    roster = write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F")
    stat = roster.stat()
    batch = etl.registry().register("cli", [SourceFile(roster.name, str(roster), stat.st_size, stat.st_mtime_ns)], "x")
    instance.add_dynamic_partitions("batches", [batch.batch_id])
    job = build_defs({"etl": etl}).resolve_job_def("import_job")
    result = job.execute_in_process(instance=instance, partition_key=batch.batch_id, raise_on_error=False)
    assert not result.success
    assert etl.registry().require(batch.batch_id).status == "Publishing", "nothing ended it yet"
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    with dg.build_run_status_sensor_context(sensor_name="batch_failure_sensor", dagster_instance=instance,
                                           dagster_run=result.dagster_run, dagster_event=failure,
                                           resources={"etl": etl, "sources": Sources()}) as context:
        batch_failure_sensor(context.for_run_failure())
    ended = etl.registry().require(batch.batch_id)
    assert ended.status == "Failed" and "publishing failed" in ended.reason
    assert Path(ended.results_file).exists() and [r["status"] for r in received] == ["Failed"]
    # A second look at the same run changes nothing (the batch already ended).
    with dg.build_run_status_sensor_context(sensor_name="batch_failure_sensor", dagster_instance=instance,
                                           dagster_run=result.dagster_run, dagster_event=failure,
                                           resources={"etl": etl, "sources": Sources()}) as context:
        batch_failure_sensor(context.for_run_failure())
    assert len(received) == 1


def test_the_cli_honours_the_size_limit_and_the_webhook_settings(tmp_path, home, receiver, _clean_home_env,
                                                                  monkeypatch):
    url, received = receiver
    monkeypatch.setenv("PATIENT_ETL_WEBHOOK_URL", url)
    monkeypatch.setenv("PATIENT_ETL_MAX_FILE_BYTES", "20")
    roster = write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F")
    assert main(["import", str(roster), "--json"]) == 2
    assert [r["status"] for r in received] == ["Failed"]
    assert "the limit is 20" in received[0]["reason"]


def test_loading_the_code_location_is_cheap_and_every_launch_runs_in_one_process():
    probe = "import sys, patient_etl.definitions as d; " \
            "print(sorted(m for m in ('great_expectations', 'scipy', 'pandas', 'splink', 'pyspark') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stderr[-2000:]
    from patient_etl.definitions import defs

    assert defs.resolve_job_def("import_job").executor_def.name == "in_process"
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_patient_etl_ui_serves_this_homes_instance_on_loopback(home):
    port = _free_port()
    env = {**os.environ, "PATIENT_ETL_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    ui = subprocess.Popen([sys.executable, "-m", "patient_etl.cli", "ui", "--port", str(port)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        answer = None
        while time.monotonic() < deadline and answer is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as response:
                    answer = json.loads(response.read())
            except OSError:
                assert ui.poll() is None, ui.stdout.read().decode()[-3000:]
                time.sleep(1)
        assert answer is not None, "the UI did not answer within 120 s"
        assert "dagster_webserver_version" in answer
        assert (home / "dagster" / "dagster.yaml").exists()
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=60)
