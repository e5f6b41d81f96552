"""A batch of related entities: references resolve in the batch or the target, failures cascade.

CareCloud's rule: never leave the data set inconsistent. A claim pointing at a member that does not
exist, or whose member failed in the same batch, must not reach the target; its row must say why.
"""

from __future__ import annotations

import shutil
import zipfile

import pytest
import sqlalchemy as sa

from patient_etl_tests.conftest import DATA, query, read_results, write_csv

SIX = DATA / "six"


def by_entity(outcome: dict) -> dict[tuple[str, str], dict]:
    return {(r["entity"], r["external_id"]): r for r in read_results(outcome)}


def assert_six_outcomes(rows: dict[tuple[str, str], dict]) -> None:
    def status(entity, key):
        return rows[(entity, key)]["status"]

    def messages(entity, key):
        return rows[(entity, key)]["messages"]

    assert status("family", "F2") == "Errored" and "family_name: is required" in messages("family", "F2")
    assert status("member", "M3") == "Errored"
    assert messages("member", "M3") == "error: family_id: its family F2 (row 2) is Errored"
    assert messages("member", "M4") == "error: family_id: no family F9 in this batch or the target"
    assert messages("provider", "P2") == "error: npi: is not a valid NPI (check digit)"
    assert messages("care", "C2") == "error: member_id: its member M3 (row 3) is Errored"
    assert messages("care", "C3") == "error: provider_id: its provider P2 (row 2) is Errored"
    assert status("care", "C4") == "Errored" and "end_date: is before start_date" in messages("care", "C4")
    assert messages("care", "C5") == "error: member_id: no member M404 in this batch or the target"
    assert messages("claim", "K2") == "error: care_id: its care C3 (row 3) is Errored"
    assert messages("eop", "E3") == "error: claim_id: its claim K2 (row 2) is Errored"
    assert messages("eop", "E4") == "error: claim_id: no claim K404 in this batch or the target"
    warning = "warning: paid_amount: payments on claim K1 add up to 120.00, more than its billed amount 100.00"
    assert status("eop", "E1") == "Created" and messages("eop", "E1") == warning
    created = {k for k, r in rows.items() if r["status"] == "Created"}
    assert created == {("family", "F1"), ("member", "M1"), ("member", "M2"), ("provider", "P1"), ("care", "C1"),
                       ("claim", "K1"), ("claim", "K3"), ("eop", "E1"), ("eop", "E2")}


def test_six_entity_folder_on_postgres(run_import, pg_etl):
    outcome = run_import(SIX, pg_etl)
    assert outcome["status"] == "Finished with Errors"
    assert_six_outcomes(by_entity(outcome))
    url = pg_etl.target_url
    assert query(url, "SELECT care_id FROM care") == [("C1",)]
    assert query(url, "SELECT count(*) FROM member") == [(2,)]
    # The target enforces the references itself, too.
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO claim (claim_id, member_id, provider_id) VALUES ('X', 'M404', 'P1')"))
    engine.dispose()


def test_each_materialization_carries_its_counters(instance, run_import, etl):
    outcome = run_import(SIX, etl)
    metadata = {}
    for record in instance.get_records_for_run(outcome["run_id"]).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            metadata[materialization.asset_key.to_user_string()] = materialization.metadata
    assert metadata["care"]["rows"].value == 4 and metadata["care"]["errored_rows"].value == 1  # C4: dates
    assert metadata["member"]["rows"].value == 4 and metadata["family"]["errored_rows"].value == 1
    assert metadata["published_batch"]["created"].value == 9
    assert "| care | 1 | 0 | 0 | 4 |" in metadata["published_batch"]["by_entity"].value


def test_six_entity_zip(tmp_path, run_import, etl):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(SIX.iterdir()):
            bundle.write(path, f"export/{path.name}")
        bundle.writestr("__MACOSX/export/._member.csv", "junk")
    outcome = run_import(archive, etl)
    assert_six_outcomes(by_entity(outcome))


def test_reference_satisfied_by_an_earlier_batch(tmp_path, run_import, pg_etl):
    folder = tmp_path / "first"
    folder.mkdir()
    for name in ("family.csv", "member.csv", "provider.csv"):
        shutil.copy(SIX / name, folder / name)
    run_import(folder, pg_etl)
    claims = write_csv(tmp_path / "claim.csv", "claim_id,member_id,provider_id,service_date,billed_amount",
                       "K9,M1,P1,2025-07-01,75.50", "K10,M3,P1,2025-07-01,10")
    outcome = run_import(claims, pg_etl)
    rows = by_entity(outcome)
    assert rows[("claim", "K9")]["status"] == "Created"
    assert rows[("claim", "K10")]["messages"] == "error: member_id: no member M3 in this batch or the target"
    payments = write_csv(tmp_path / "eop.csv", "eop_id,claim_id,payment_date,paid_amount",
                         "E9,K9,2025-08-01,70.00", "E10,K9,2025-08-02,10.00")
    rows = by_entity(run_import(payments, pg_etl))
    assert rows[("eop", "E9")]["status"] == "Created"
    assert "add up to 80.00, more than its billed amount 75.50" in rows[("eop", "E10")]["messages"]
    # A later batch's payment counts what earlier batches paid; reprocessing counts nothing twice.
    later = write_csv(tmp_path / "eop.csv", "eop_id,claim_id,payment_date,paid_amount", "E11,K9,2025-08-03,1.00",
                      "E9,K9,2025-08-01,70.00")
    rows = by_entity(run_import(later, pg_etl))
    assert "add up to 81.00, more than its billed amount 75.50" in rows[("eop", "E11")]["messages"]


def test_stable_ids_and_changed_fields(tmp_path, run_import, pg_etl):
    header = "provider_id,provider_name,npi,specialty"
    run_import(write_csv(tmp_path / "provider.csv", header, "P1,Harbor Clinic,1234567893,Family"), pg_etl)
    again = run_import(write_csv(tmp_path / "provider.csv", header, "P1,Harbor Health,1234567893,Pediatrics"),
                       pg_etl)
    (row,) = read_results(again)
    assert row["status"] == "Updated" and row["changed_fields"] == "provider_name,specialty"
    assert query(pg_etl.target_url, "SELECT provider_id, provider_name FROM provider") == [("P1", "Harbor Health")]
    logged = query(pg_etl.target_url, "SELECT changed_fields FROM import_row WHERE batch_id = :b", b=again["batch_id"])
    assert logged == [("provider_name,specialty",)]
