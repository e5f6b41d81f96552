"""An object store is a source like the SFTP server: objects under a pending prefix, dated results
under a results prefix, landed ones archived under a processed prefix.

Through the Dagster daemon path as deployed: the code location's resources come from the environment
(`PATIENT_ETL_S3_*`, AWS credentials from the standard chain), a sensor tick registers the object,
the run lands, processes and archives it and writes the results object; a store that is down or not
configured gives a skip, never a crash.
"""

from __future__ import annotations

import dagster as dg

from patient_etl.batches import Registry
from patient_etl.definitions import build_defs
from patient_etl.resources import PatientEtl
from patient_etl.sources.resources import Sources
from patient_etl.sources.s3 import ObjectStore
from patient_etl.sources.sensors import s3_sensor
from patient_etl_tests.conftest import query
from patient_etl_tests.s3server import S3Server, s3_endpoint, s3_server  # noqa: F401 (fixtures)

ROSTER = b"Patient ID,First Name,Last Name,DOB,Sex\nS1,Ann,Lee,1980-01-01,F\nS2,Bob,Ray,1970-02-30,M\n"


def daemon_tick(defs: dg.Definitions, instance, cursor=None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=dict(defs.resources)) as context:
        return defs.resolve_sensor_def("s3_sensor")(context)


def test_a_roster_under_the_pending_prefix_is_imported_archived_and_answered(
        monkeypatch, s3_server: S3Server, home, pg_url):  # noqa: F811
    for name, value in {**s3_server.env(), "PATIENT_ETL_HOME": str(home), "PATIENT_ETL_TARGET_URL": pg_url,
                        "PATIENT_ETL_QUIET_SECONDS": "0"}.items():
        monkeypatch.setenv(name, value)
    s3_server.put("pending/Roster – März 2026.csv", ROSTER)
    s3_server.put("pending/upload.csv.part", ROSTER)
    defs = build_defs()
    with dg.instance_for_test() as instance:
        first = daemon_tick(defs, instance)
        assert not first.run_requests, "one look is not enough"
        (request,) = daemon_tick(defs, instance, first.cursor).run_requests
        instance.add_dynamic_partitions("batches", [request.partition_key])
        result = defs.resolve_job_def("import_job").execute_in_process(
            instance=instance, partition_key=request.partition_key, raise_on_error=False)
        assert result.success

    batch = Registry(PatientEtl(home=str(home)).home_dir()).require(request.partition_key)
    assert batch.source == "s3" and batch.status == "Finished with Errors"
    assert s3_server.keys("pending/") == ["pending/upload.csv.part"], "the roster leaves the pending prefix"
    assert s3_server.keys("processed/") == ["processed/Roster – März 2026.csv"]
    assert s3_server.read("processed/Roster – März 2026.csv") == ROSTER
    results_key = f"results/{batch.received_on.isoformat()}_Roster – März 2026_results.csv"
    assert s3_server.keys("results/") == [results_key]
    text = s3_server.read(results_key).decode()
    assert text.startswith("row_number,entity,external_id,status,messages")
    assert "Created" in text and "Errored" in text
    assert query(pg_url, "SELECT count(*) FROM member") == [(1,)]


def test_a_failed_file_is_answered_with_its_reason(instance, etl, s3_server: S3Server):  # noqa: F811
    sources = Sources(quiet_seconds=0, s3=s3_server.resource())
    s3_server.put("pending/roster.csv", b"Patient ID,First Name\n1,A\n")
    with dg.build_sensor_context(instance=instance, resources={"etl": etl, "sources": sources}) as context:
        cursor = s3_sensor(context).cursor
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"etl": etl, "sources": sources}) as context:
        (request,) = s3_sensor(context).run_requests
    instance.add_dynamic_partitions("batches", [request.partition_key])
    defs = build_defs()
    result = dg.materialize([*defs.assets, *defs.asset_checks], partition_key=request.partition_key,
                            instance=instance, resources={**defs.resources, "etl": etl, "sources": sources},
                            raise_on_error=False)
    assert not result.success
    (key,) = s3_server.keys("results/")
    text = s3_server.read(key).decode()
    assert "Failed" in text and "required columns missing" in text


def test_a_store_that_is_down_or_not_configured_is_a_skip(instance, etl):
    down = Sources(s3=ObjectStore(bucket="partner", endpoint_url="http://127.0.0.1:1",
                                  connect_timeout_seconds=1))
    for sources, expected in ((down, "object store unavailable: cannot list 'pending/' in bucket 'partner'"),
                              (Sources(), "the object store is not configured (PATIENT_ETL_S3_BUCKET)")):
        with dg.build_sensor_context(instance=instance, resources={"etl": etl, "sources": sources}) as context:
            result = s3_sensor(context)
        assert not result.run_requests and result.skip_reason.skip_message.startswith(expected)
