"""Partners see two SFTP folders: they drop files in one and find dated results in the other.

Through a real OpenSSH server: the sensor picks up only complete files, the run lands, processes and
retires the file, the results file appears (never overwriting an earlier one), a server that is
down gives a skip rather than a crash, and a backfill of an SFTP batch never needs the server.
"""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg
import pytest

from patient_etl.batches import Registry
from patient_etl.definitions import build_defs
from patient_etl.resources import PatientEtl
from patient_etl.sources.resources import Sources
from patient_etl.sources.sensors import sftp_sensor
from patient_etl.sources.sftp import PartnerSftp
from patient_etl_tests.conftest import query
from patient_etl_tests.sshd import SshdServer, sshd_server  # noqa: F401 (fixture)

ROSTER = "Patient ID,First Name,Last Name,DOB,Sex\nS1,Ann,Lee,1980-01-01,F\nS2,Bob,Ray,1970-02-30,M\n"


@pytest.fixture
def partner(sshd_server: SshdServer) -> PartnerSftp:  # noqa: F811
    return PartnerSftp(server=sshd_server.resource())


def tick(instance, etl, partner, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"etl": etl, "sources": Sources(sftp=partner, quiet_seconds=0)}) as ctx:
        return sftp_sensor(ctx)


def run(instance, etl, partner, key, deliver=True):
    instance.add_dynamic_partitions("batches", [key])
    defs = build_defs()
    assets = [a for a in defs.assets if deliver or dg.AssetKey("delivered_results") not in a.keys]
    return dg.materialize([*assets, *defs.asset_checks], partition_key=key, instance=instance,
                          resources={**defs.resources, "etl": etl, "sources": Sources(sftp=partner)},
                          raise_on_error=False)


def test_a_dropped_file_is_processed_retired_and_answered(instance, pg_etl, partner, sshd_server):  # noqa: F811
    pending = sshd_server.pending
    (pending / "Roster – März 2026.csv.part").write_text(ROSTER)  # a client still uploading
    (pending / "Roster – März 2026.csv").write_text(ROSTER[:60])  # half written so far
    first = tick(instance, pg_etl, partner)
    assert not first.run_requests
    (pending / "Roster – März 2026.csv").write_text(ROSTER)  # the upload completes
    second = tick(instance, pg_etl, partner, first.cursor)
    assert not second.run_requests, "changed since the last look: not complete yet"
    third = tick(instance, pg_etl, partner, second.cursor)
    (request,) = third.run_requests
    key = request.partition_key

    result = run(instance, pg_etl, partner, key)
    assert result.success
    assert not (pending / "Roster – März 2026.csv").exists(), "leaves the pending folder once landed"
    assert (sshd_server.root / "Processed Patient Imports" / "Roster – März 2026.csv").exists()
    batch = Registry(pg_etl.home_dir()).require(key)
    assert batch.status == "Finished with Errors" and batch.source == "sftp"
    results = sorted(p.name for p in sshd_server.results.iterdir())
    assert results == [f"{batch.received_on.isoformat()}_Roster – März 2026_results.csv"]
    text = (sshd_server.results / results[0]).read_text()
    assert text.startswith("row_number,entity,external_id,status,messages")
    assert "Errored" in text and "Created" in text
    assert query(pg_etl.target_url, "SELECT count(*) FROM member") == [(1,)]

    # A backfill of the SFTP batch uses the landed copy: the server can be down.
    sshd_server.stop()
    assert run(instance, pg_etl, partner, key, deliver=False).success
    assert Registry(pg_etl.home_dir()).require(key).counts["Unchanged"] == 1


def test_server_down_at_a_tick_is_a_skip(instance, etl, partner, sshd_server):  # noqa: F811
    sshd_server.stop()
    result = tick(instance, etl, partner)
    assert not result.run_requests
    assert "SFTP server unavailable" in result.skip_reason.skip_message
    sshd_server.start()
    assert tick(instance, etl, partner).skip_reason.skip_message.startswith("0 file(s) waiting")


def test_same_name_on_two_days_keeps_both_results(instance, etl, partner, sshd_server):  # noqa: F811
    path = sshd_server.pending / "roster.csv"
    keys = []
    for day, stamp in ((1, dt.datetime(2026, 11, 2, 9, tzinfo=dt.UTC)), (2, dt.datetime(2026, 11, 3, 9, tzinfo=dt.UTC))):
        path.write_text(ROSTER.replace("S1,Ann", f"S1,Ann{day}"))
        os.utime(path, (stamp.timestamp(), stamp.timestamp()))
        (request,) = tick(instance, etl, partner, tick(instance, etl, partner).cursor).run_requests
        assert run(instance, etl, partner, request.partition_key).success
        keys.append(request.partition_key)
    assert keys[0] != keys[1]
    assert sorted(p.name for p in sshd_server.results.iterdir()) == [
        "2026-11-02_roster_results.csv", "2026-11-03_roster_results.csv"]


def test_a_dropped_connection_during_landing_loses_nothing(instance, etl, partner, sshd_server):  # noqa: F811
    path = sshd_server.pending / "roster.csv"
    path.write_text(ROSTER)
    (request,) = tick(instance, etl, partner, tick(instance, etl, partner).cursor).run_requests
    sshd_server.stop()  # the server goes away between the tick and the run
    instance.add_dynamic_partitions("batches", [request.partition_key])
    defs = build_defs()
    down = PartnerSftp(server=sshd_server.resource(connect_timeout_seconds=1))
    failed = dg.materialize([d for d in defs.assets if dg.AssetKey("landed_batch") in d.keys],
                            partition_key=request.partition_key, instance=instance,
                            resources={"etl": etl, "sources": Sources(sftp=down)}, raise_on_error=False)
    assert not failed.success
    assert path.exists(), "the remote file stays in pending"
    assert not list((etl.home_dir().batch_archive(request.partition_key)).glob("*"))
    sshd_server.start()
    assert run(instance, etl, partner, request.partition_key).success
    assert not path.exists()


def test_failed_file_answers_with_its_reason(instance, etl, partner, sshd_server):  # noqa: F811
    (sshd_server.pending / "roster.csv").write_text("Patient ID,First Name\n1,A\n")
    (request,) = tick(instance, etl, partner, tick(instance, etl, partner).cursor).run_requests
    assert not run(instance, etl, partner, request.partition_key).success
    (answer,) = sshd_server.results.iterdir()
    assert "Failed" in answer.read_text() and "required columns missing" in answer.read_text()


def test_a_name_with_a_control_character_is_reported_not_skipped_silently(instance, etl, partner,
                                                                         sshd_server):  # noqa: F811
    """Such a name cannot be landed, named in a results file or logged as it is: every tick says which
    file waits and why (escaped), and it never becomes a batch; a file beside it imports as usual."""
    (sshd_server.pending / "roster\x1b[2J.csv").write_text(ROSTER)
    first = tick(instance, etl, partner)
    second = tick(instance, etl, partner, first.cursor)
    assert not second.run_requests
    reason = second.skip_reason.skip_message
    assert "not picked up: 'roster\\x1b[2J.csv'" in reason and "control character" in reason
    assert "\x1b" not in reason
    (sshd_server.pending / "roster.csv").write_text(ROSTER)
    third = tick(instance, etl, partner, tick(instance, etl, partner, second.cursor).cursor)
    assert [r.partition_key for r in third.run_requests] and len(third.run_requests) == 1
    assert (sshd_server.pending / "roster\x1b[2J.csv").exists()


def test_unconfigured_sftp_skips(instance, etl):
    result = tick(instance, etl, PartnerSftp())
    assert "not configured" in result.skip_reason.skip_message


def test_definitions_take_sftp_settings_from_the_environment(monkeypatch, sshd_server, home):  # noqa: F811
    for name, value in sshd_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    monkeypatch.setenv("PATIENT_ETL_QUIET_SECONDS", "0")
    (sshd_server.pending / "roster.csv").write_text(ROSTER)
    defs = build_defs()
    sensor = defs.resolve_sensor_def("sftp_sensor")
    resources = dict(defs.resources)  # as configured from the environment, EnvVars resolved per tick
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            first = sensor(context)
        with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources) as context:
            second = sensor(context)
    assert len(second.run_requests) == 1
    assert PatientEtl(home=str(home)).registry().require(second.run_requests[0].partition_key).source == "sftp"


def test_a_publish_failure_answers_the_partner_through_the_failure_path(instance, home, partner,
                                                                        sshd_server):  # noqa: F811
    """The target is down: the run fails after staging, and the run-failure sensor (the daemon's side
    of the one failure path) ends the batch Failed and puts its results file in the partner's folder."""
    from patient_etl.failure import batch_failure_sensor

    etl = PatientEtl(home=str(home), target_url="postgresql://postgres@127.0.0.1:9/nowhere")
    (sshd_server.pending / "roster.csv").write_text(ROSTER)
    (request,) = tick(instance, etl, partner, tick(instance, etl, partner).cursor).run_requests
    result = run(instance, etl, partner, request.partition_key, deliver=False)
    assert not result.success
    assert not list(sshd_server.results.iterdir()), "nothing answered yet: the sensor ends the batch"
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    with dg.build_run_status_sensor_context(sensor_name="batch_failure_sensor", dagster_instance=instance,
                                           dagster_run=result.dagster_run, dagster_event=failure,
                                           resources={"etl": etl, "sources": Sources(sftp=partner)}) as context:
        batch_failure_sensor(context.for_run_failure())
    batch = Registry(etl.home_dir()).require(request.partition_key)
    assert batch.status == "Failed" and batch.failure == "run" and "publishing failed" in batch.reason
    (answer,) = sshd_server.results.iterdir()
    assert answer.name == f"{batch.received_on.isoformat()}_roster_results.csv"
    text = answer.read_text()
    assert "Failed" in text and "publishing failed" in text and "Ann" not in text
