"""The Dagster side as data engineers run it: the upload sensor, the job, the nightly schedule, backfills.

A sensor that picks up a half-written file imports half a roster; a schedule that misses a pending
batch leaves a partner waiting a day; a backfill that duplicates rows corrupts the target.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import dagster as dg
import pytest

from patient_etl.batches import Registry
from patient_etl.definitions import build_defs
from patient_etl.resources import PatientEtl
from patient_etl.schedules import nightly_import_schedule_for
from patient_etl.sources.resources import Sources
from patient_etl.sources.sensors import upload_folder_sensor
from patient_etl_tests.conftest import DATA, query, read_results

HEADER = "Patient ID,First Name,Last Name,DOB,Sex\n"


@pytest.fixture
def env_home(home, pg_url, monkeypatch):
    """The code location as deployed: settings from the environment, resolved at run time."""
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    monkeypatch.setenv("PATIENT_ETL_TARGET_URL", pg_url)
    return PatientEtl(home=str(home), target_url=pg_url)


def tick(instance, etl, cursor=None, quiet_seconds=0):
    resources = {"etl": etl, "sources": Sources(quiet_seconds=quiet_seconds)}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return upload_folder_sensor(context)


def run_partition(instance, key: str) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("batches", [key])
    job = build_defs().resolve_job_def("import_job")
    return job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)


def test_sensor_waits_for_a_complete_file_then_runs_it(instance, env_home, home):
    inbox = home / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "roster.csv.part").write_text(HEADER + "P1,Ann,Lee,1980-01-01,F\n")
    growing = inbox / "roster.csv"
    growing.write_text(HEADER + "P1,Ann,Lee,1980-01-01,F\n")

    first = tick(instance, env_home)
    assert not first.run_requests and "waiting to settle" in first.skip_reason.skip_message

    with growing.open("a") as handle:  # still being written between the two looks
        handle.write("P2,Bob,Ray,1970-05-05,M\n")
    second = tick(instance, env_home, first.cursor)
    assert not second.run_requests

    third = tick(instance, env_home, second.cursor)
    (request,) = third.run_requests
    (add,) = third.dynamic_partitions_requests
    assert add.partition_keys == [request.partition_key] and request.run_key == request.partition_key
    assert ".." not in request.partition_key and "/" not in request.partition_key

    # The next tick does not register it again.
    assert not tick(instance, env_home, third.cursor).run_requests

    result = run_partition(instance, request.partition_key)
    assert result.success
    assert not growing.exists(), "the file leaves the inbox once landed"
    assert (inbox / "roster.csv.part").exists(), "temporary names are never picked up"
    batch = Registry(env_home.home_dir()).require(request.partition_key)
    assert batch.status == "Finished" and batch.counts["Created"] == 2
    assert len(batch.landed[0]["sha256"]) == 64 and batch.landed[0]["size"] == len(HEADER) + 48
    assert (home / batch.landed[0]["path"]).exists()
    assert query(env_home.target_url, "SELECT count(*) FROM member") == [(2,)]
    materialization = result.asset_materializations_for_node("published_batch")[0]
    assert materialization.metadata["created"].value == 2
    assert "Created **2**" in materialization.metadata["summary"].value


def test_sensor_settle_time_and_many_files(instance, home):
    etl = PatientEtl(home=str(home))
    inbox = home / "inbox"
    inbox.mkdir(exist_ok=True)
    for n in range(300):
        (inbox / f"r{n}.csv").write_text(HEADER)
    first = tick(instance, etl, quiet_seconds=3600)
    second = tick(instance, etl, first.cursor, quiet_seconds=3600)
    assert not second.run_requests, "files younger than the quiet period wait"
    old = time.time() - 7200
    for path in inbox.iterdir():
        os.utime(path, (old, old))
    again = tick(instance, etl, second.cursor, quiet_seconds=3600)
    third = tick(instance, etl, again.cursor, quiet_seconds=3600)
    assert len(third.run_requests) == 200, "at most 200 new batches per tick"
    fourth = tick(instance, etl, third.cursor, quiet_seconds=3600)
    assert len(fourth.run_requests) == 100


def test_nightly_schedule_runs_every_pending_batch_and_backfill_is_idempotent(instance, env_home, home, tmp_path):
    etl = PatientEtl(home=str(home), target_url=env_home.target_url, process_on_arrival=False)
    inbox = home / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "a.csv").write_text(HEADER + "P1,Ann,Lee,1980-01-01,F\n")
    (inbox / "b.csv").write_text(HEADER + "P2,Bob,Ray,1970-05-05,M\nP3,Bad,Date,1970-02-30,M\n")
    registered = tick(instance, etl, tick(instance, etl).cursor)
    assert not registered.run_requests and len(registered.dynamic_partitions_requests[0].partition_keys) == 2

    schedule = nightly_import_schedule_for("America/New_York")
    assert schedule.execution_timezone == "America/New_York" and schedule.cron_schedule == "0 0 * * *"
    midnight = dt.datetime(2026, 11, 22, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=midnight, resources={"etl": etl})
    requests = schedule(context)
    keys = sorted(r.partition_key for r in requests)
    assert keys == sorted(registered.dynamic_partitions_requests[0].partition_keys)
    for key in keys:
        assert run_partition(instance, key).success

    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=midnight, resources={"etl": etl})
    assert schedule(context).skip_message == "no batch is pending"

    # A backfill of a finished batch: same input, same target state, no duplicates.
    url = env_home.target_url
    before = query(url, "SELECT member_id, first_name, birth_date, sex FROM member ORDER BY 1")
    b_key = next(k for k in keys if "-b-" in k)
    assert run_partition(instance, b_key).success
    batch = Registry(etl.home_dir()).require(b_key)
    assert batch.counts == {"Created": 0, "Updated": 0, "Unchanged": 1, "Errored": 1}
    assert query(url, "SELECT member_id, first_name, birth_date, sex FROM member ORDER BY 1") == before
    assert query(url, "SELECT count(*) FROM import_row WHERE batch_id = :b", b=b_key) == [(2,)]
    assert query(url, "SELECT count(*) FROM import_batch") == [(2,)]
    assert [r["status"] for r in read_results({"results_file": batch.results_file})] == ["Unchanged", "Errored"]


def test_a_folder_closed_by_its_manifest_is_one_batch(instance, env_home, home):
    folder = home / "inbox" / "export 2026-11"
    folder.mkdir(parents=True)
    for path in (DATA / "six").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    first = tick(instance, env_home)
    assert not tick(instance, env_home, first.cursor).run_requests, "no manifest yet: the folder is still open"
    (folder / "_READY").write_text("")
    settled = tick(instance, env_home, tick(instance, env_home).cursor)
    (request,) = settled.run_requests
    batch = Registry(env_home.home_dir()).require(request.partition_key)
    assert sorted(f.name for f in batch.files) == sorted(p.name for p in (DATA / "six").iterdir())
    assert run_partition(instance, request.partition_key).success
    assert not folder.exists(), "the closed folder leaves the inbox with its files"
    batch = Registry(env_home.home_dir()).require(request.partition_key)
    assert batch.status == "Finished with Errors" and batch.counts["Created"] == 9


def test_a_template_folder_applies_its_template(instance, env_home, home):
    folder = home / "inbox" / "acme_ehr"
    folder.mkdir(parents=True)
    (folder / "acme_patients.csv").write_text("PatID,PatFirst,PatLast,DOB,SexCode\nA1,Ann,Lee,31.12.1980,2\n")
    (request,) = tick(instance, env_home, tick(instance, env_home).cursor).run_requests
    assert Registry(env_home.home_dir()).require(request.partition_key).mapping == "acme_ehr"
    assert run_partition(instance, request.partition_key).success
    assert query(env_home.target_url, "SELECT birth_date, sex FROM member") == [(dt.date(1980, 12, 31), "F")]
    assert folder.exists() and not list(folder.iterdir()), "the template folder stays, its file leaves"
