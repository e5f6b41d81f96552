"""Every source keeps the same promises, so the same tests run against each of them.

The upload folder, the SFTP server (a real OpenSSH server) and the object store (a real S3-compatible
server) each: pick up only complete files, land them, take them out of pending, answer where the
partner looks, never overwrite a results file, and never import a file that changed after it was
registered (it fails that batch and is picked up again, so the whole file is imported exactly once).
A partner who marks a file complete (`<name>.done`) does not wait for the quiet period.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from patient_etl.batches import Registry
from patient_etl.definitions import build_defs
from patient_etl.resources import PatientEtl
from patient_etl.sources import deliver_results
from patient_etl.sources.base import CHANGED_REASON, Source
from patient_etl.sources.resources import Sources
from patient_etl.sources.sensors import s3_sensor, sftp_sensor, upload_folder_sensor
from patient_etl.sources.sftp import PartnerSftp
from patient_etl_tests.conftest import query
from patient_etl_tests.s3server import s3_endpoint, s3_server  # noqa: F401 (fixtures)
from patient_etl_tests.sshd import sshd_server  # noqa: F401 (fixture)

HEADER = "Patient ID,First Name,Last Name,DOB,Sex\n"


def roster(rows: int) -> bytes:
    return (HEADER + "".join(f"P{n},Ann{n},Lee,1980-01-01,F\n" for n in range(rows))).encode()


@dataclass
class Partner:
    """One source as a partner and a test see it: drop files, look at pending, archive and results."""

    kind: str
    source: Source
    put: Callable[[str, bytes], None]
    pending: Callable[[], list[str]]
    archived: Callable[[], list[str]]
    results: Callable[[], dict[str, bytes]]
    unreachable: Source
    sensor: dg.SensorDefinition = field(repr=False, default=None)

    def sources(self, quiet_seconds: int = 0, source: Source | None = None) -> Sources:
        return Sources(quiet_seconds=quiet_seconds, **{self.field: source or self.source})

    @property
    def field(self) -> str:
        return self.kind


@pytest.fixture(params=["upload", "sftp", "s3"])
def partner(request, home: Path) -> Partner:
    if request.param == "upload":
        inbox = home / "inbox"
        inbox.mkdir(exist_ok=True)
        from patient_etl.sources.upload_folder import UploadFolder

        return Partner("upload", UploadFolder(), lambda name, body: (inbox / name).write_bytes(body),
                       lambda: sorted(p.name for p in inbox.iterdir()), lambda: [], lambda: {}, UploadFolder(),
                       upload_folder_sensor)
    if request.param == "sftp":
        server = request.getfixturevalue("sshd_server")
        archive = server.root / "Processed Patient Imports"
        return Partner(
            "sftp", PartnerSftp(server=server.resource()),
            lambda name, body: (server.pending / name).write_bytes(body),
            lambda: sorted(p.name for p in server.pending.iterdir()),
            lambda: sorted(p.name for p in archive.iterdir()) if archive.exists() else [],
            lambda: {p.name: p.read_bytes() for p in server.results.iterdir()},
            PartnerSftp(server=server.resource(port=1, connect_timeout_seconds=1)), sftp_sensor)
    store = request.getfixturevalue("s3_server")
    return Partner(
        "s3", store.resource(), lambda name, body: store.put(f"pending/{name}", body),
        lambda: [k.removeprefix("pending/") for k in store.keys("pending/")],
        lambda: [k.removeprefix("processed/") for k in store.keys("processed/")],
        lambda: {k.removeprefix("results/"): store.read(k) for k in store.keys("results/")},
        store.resource(endpoint_url="http://127.0.0.1:1", connect_timeout_seconds=1), s3_sensor)


def tick(instance, etl: PatientEtl, sources: Sources, sensor, cursor=None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"etl": etl, "sources": sources}) as ctx:
        return sensor(ctx)


def two_looks(instance, etl, sources, sensor) -> dg.SensorResult:
    return tick(instance, etl, sources, sensor, tick(instance, etl, sources, sensor).cursor)


def run(instance, etl: PatientEtl, sources: Sources, key: str, deliver: bool = True) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("batches", [key])
    defs = build_defs()
    assets = [a for a in defs.assets if deliver or dg.AssetKey("delivered_results") not in a.keys]
    return dg.materialize([*assets, *defs.asset_checks], partition_key=key, instance=instance,
                          resources={**defs.resources, "etl": etl, "sources": sources}, raise_on_error=False)


def test_a_complete_file_is_landed_retired_and_answered(instance, etl, partner):
    partner.put("roster.csv", roster(2))
    (request,) = two_looks(instance, etl, partner.sources(), partner.sensor).run_requests
    key = request.partition_key
    assert f"-{partner.kind}-roster-" in key

    assert run(instance, etl, partner.sources(), key).success
    batch = Registry(etl.home_dir()).require(key)
    assert batch.source == partner.kind and batch.status == "Finished"
    assert partner.pending() == [], "the file leaves pending once landed"
    if partner.source.delivers:
        assert partner.archived() == ["roster.csv"]
        (name, body), = partner.results().items()
        assert name == f"{batch.received_on.isoformat()}_roster_results.csv"
        assert body.startswith(b"row_number,entity,external_id,status,messages")
    assert not two_looks(instance, etl, partner.sources(), partner.sensor).run_requests

    # A backfill uses the landed copy: the source is not contacted (here it cannot be reached).
    assert run(instance, etl, partner.sources(source=partner.unreachable), key, deliver=False).success
    assert Registry(etl.home_dir()).require(key).counts["Unchanged"] == 2


def test_a_fresh_file_waits_for_the_quiet_period_unless_marked_done(instance, etl, partner):
    partner.put("roster.csv", roster(1))
    patient = partner.sources(quiet_seconds=3600)
    waiting = two_looks(instance, etl, patient, partner.sensor)
    assert not waiting.run_requests and "1 file(s) waiting to settle" in waiting.skip_reason.skip_message
    partner.put("roster.csv.done", b"")
    (request,) = two_looks(instance, etl, patient, partner.sensor).run_requests
    assert run(instance, etl, patient, request.partition_key).success
    assert partner.pending() == [], "the marker leaves with its file"


def test_temporary_and_hidden_names_are_never_picked_up(instance, etl, partner):
    for name in ("roster.csv.part", "roster.csv.filepart", ".roster.csv", "roster.csv.done"):
        partner.put(name, roster(1))
    result = two_looks(instance, etl, partner.sources(), partner.sensor)
    assert not result.run_requests and result.skip_reason.skip_message.startswith("0 file(s) waiting")


def test_a_name_with_a_control_character_is_reported_on_every_tick_and_never_landed(instance, etl, partner):
    partner.put("roster\tmarch.csv", roster(1))
    for _ in range(2):
        result = two_looks(instance, etl, partner.sources(), partner.sensor)
        assert not result.run_requests
        message = result.skip_reason.skip_message
        assert "not picked up: 'roster\\x09march.csv' (its name holds a control character" in message
    assert partner.pending() == ["roster\tmarch.csv"] and not list((etl.home_dir().root / "archive").rglob("*"))


def test_a_file_that_changes_after_registration_fails_and_is_imported_once(instance, pg_etl, partner):
    full = roster(400)
    partner.put("roster.csv", full[: len(full) // 2])  # the partner's upload stalls half way
    (request,) = two_looks(instance, pg_etl, partner.sources(), partner.sensor).run_requests
    partner.put("roster.csv", full)  # ... and resumes before the batch is landed

    assert not run(instance, pg_etl, partner.sources(), request.partition_key).success
    failed = Registry(pg_etl.home_dir()).require(request.partition_key)
    assert (failed.status, failed.reason) == ("Failed", CHANGED_REASON)
    assert not failed.landed and not list(pg_etl.home_dir().batch_archive(failed.batch_id).glob("*"))
    assert partner.pending() == ["roster.csv"], "the file stays pending"
    assert partner.results() == {} and partner.archived() == []

    (again,) = two_looks(instance, pg_etl, partner.sources(), partner.sensor).run_requests
    assert again.partition_key != request.partition_key, "the new version is a new batch"
    assert run(instance, pg_etl, partner.sources(), again.partition_key).success
    assert query(pg_etl.target_url, "SELECT count(*) FROM member") == [(400,)]
    assert query(pg_etl.target_url, "SELECT count(*) FROM import_row") == [(400,)], "imported exactly once"
    assert partner.pending() == []


def test_the_re_check_after_landing_sees_a_replaced_file(etl, partner, tmp_path):
    partner.put("roster.csv", roster(3))
    (item,) = partner.source.list_pending(etl.home_dir())
    (file,) = item.files
    size, digest = partner.source.land(file, tmp_path / "landed.csv")
    assert size == len(roster(3)) and (tmp_path / "landed.csv").read_bytes() == roster(3) and len(digest) == 64
    assert partner.source.unchanged(file)
    partner.put("roster.csv", roster(4))
    assert not partner.source.unchanged(file)


def test_results_files_never_overwrite(etl, partner, tmp_path):
    if not partner.source.delivers:
        pytest.skip(f"the {partner.source.title} keeps results in the home")
    local = tmp_path / "results.csv"
    names = []
    for text in ("first\n", "second\n", "third\n"):
        local.write_text(text)
        names.append(partner.source.deliver(local, "2026-11-22_roster_results.csv"))
    assert names == ["2026-11-22_roster_results.csv", "2026-11-22_roster_results-2.csv",
                     "2026-11-22_roster_results-3.csv"]
    assert partner.results()["2026-11-22_roster_results.csv"] == b"first\n"


def test_deliver_results_is_a_no_op_for_sources_that_keep_results_at_home(etl):
    batch = etl.registry().register("upload", [], "x", now=dt.datetime(2026, 11, 22, tzinfo=dt.UTC),
                                    batch_id="20261122-000000-upload-x-1")
    batch.results_file = "somewhere.csv"
    assert deliver_results(etl.registry(), batch, Sources()) is None
