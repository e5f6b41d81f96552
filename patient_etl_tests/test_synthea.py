"""The real Synthea export, imported with the saved `synthea` template, end to end as one batch.

Synthetic but realistic data: names with digits, patients without a ZIP, claims summed from their
charges, copays paid on top of a claim's charges. Every row must be Created, every value must be the
source's, nothing may dangle, and a second import must change nothing.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

from patient_etl_tests.conftest import query, read_results

SYNTHEA = Path(__file__).parent / "data" / "synthea"
FILES = ("patients", "providers", "organizations", "encounters", "claims", "claims_transactions")
EXPECTED = {"member": 27, "provider": 166, "care": 604, "claim": 1267, "eop": 1843}
DANGLING = {
    "care -> member": "SELECT count(*) FROM care c LEFT JOIN member m USING (member_id) WHERE m.member_id IS NULL",
    "care -> provider": "SELECT count(*) FROM care c LEFT JOIN provider p USING (provider_id) "
                        "WHERE p.provider_id IS NULL",
    "claim -> member": "SELECT count(*) FROM claim c LEFT JOIN member m USING (member_id) WHERE m.member_id IS NULL",
    "claim -> provider": "SELECT count(*) FROM claim c LEFT JOIN provider p USING (provider_id) "
                         "WHERE p.provider_id IS NULL",
    "claim -> care": "SELECT count(*) FROM claim c LEFT JOIN care e USING (care_id) "
                     "WHERE c.care_id IS NOT NULL AND e.care_id IS NULL",
    "eop -> claim": "SELECT count(*) FROM eop e LEFT JOIN claim c USING (claim_id) WHERE c.claim_id IS NULL",
}


def _source(name: str) -> list[dict]:
    with (SYNTHEA / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_synthea_export_imports_whole_and_then_unchanged(tmp_path, run_import, pg_etl):
    export = tmp_path / "synthea"
    export.mkdir()
    for name in FILES:
        shutil.copy(SYNTHEA / f"{name}.csv", export / f"{name}.csv")
    first = run_import(export, pg_etl, mapping="synthea")
    rows = read_results(first)
    assert first["status"] == "Finished", [r for r in rows if r["status"] == "Errored"][:5]
    assert first["counts"] == {"Created": sum(EXPECTED.values()), "Updated": 0, "Unchanged": 0, "Errored": 0}
    assert Counter(r["entity"] for r in rows) == EXPECTED
    assert not [r for r in rows if "error:" in r["messages"]], "only warnings on a clean export"
    url = pg_etl.target_url
    for table, count in EXPECTED.items():
        assert query(url, f"SELECT count(*) FROM {table}") == [(count,)], table
    for name, sql in DANGLING.items():
        assert query(url, sql) == [(0,)], name

    # ZIP-less patients are real data: a warning, not an error. Names with digits are kept as they are.
    warned = [r for r in rows if r["entity"] == "member" and "zip: is missing" in r["messages"]]
    assert len(warned) == 12 and all(r["status"] == "Created" for r in warned)
    patients = _source("patients")
    assert set(query(url, "SELECT member_id, first_name, last_name, sex FROM member")) == {
        (p["Id"], p["FIRST"], p["LAST"], p["GENDER"]) for p in patients}

    # Providers take their organization's name (a lookup, not a fan-out).
    organizations = {o["Id"]: o["NAME"] for o in _source("organizations")}
    assert dict(query(url, "SELECT provider_id, organization_name FROM provider")) == {
        p["Id"]: organizations[p["ORGANIZATION"]] for p in _source("providers")}

    # Encounter date-times keep their date part.
    assert {(k, str(s), str(e)) for k, s, e in query(url, "SELECT care_id, start_date, end_date FROM care")} == {
        (e["Id"], e["START"][:10], e["STOP"][:10]) for e in _source("encounters")}

    # A claim's billed amount is the sum of its CHARGE rows; its status is STATUS1, lower-cased.
    transactions = _source("claims_transactions")
    billed: dict[str, Decimal] = defaultdict(Decimal)
    for t in transactions:
        if t["TYPE"] == "CHARGE":
            billed[t["CLAIMID"]] += Decimal(t["AMOUNT"])
    assert dict(query(url, "SELECT claim_id, billed_amount FROM claim")) == billed
    assert dict(query(url, "SELECT status, count(*) FROM claim GROUP BY status")) == {"closed": 1265, "billed": 2}

    # EOPs are the PAYMENT rows (their amount is in PAYMENTS), cited by their row in claims_transactions.
    payments = {t["ID"]: (n, t) for n, t in enumerate(transactions, start=1) if t["TYPE"] == "PAYMENT"}
    assert {k: (c, d, a) for k, c, d, a in query(url, "SELECT eop_id, claim_id, CAST(payment_date AS TEXT), "
                                                      "paid_amount FROM eop")} == {
        k: (t["CLAIMID"], t["FROMDATE"][:10], Decimal(t["PAYMENTS"])) for k, (_, t) in payments.items()}
    assert {(r["external_id"], r["file"], int(r["row_number"])) for r in rows if r["entity"] == "eop"} == {
        (k, "claims_transactions.csv", n) for k, (n, _) in payments.items()}
    # Synthea records copays on top of the charges: those claims are overpaid, a warning.
    overpaid = {r["external_id"] for r in rows if r["entity"] == "eop" and "payments on claim" in r["messages"]}
    assert overpaid and all(r["status"] == "Created" for r in rows if r["external_id"] in overpaid)

    second = run_import(export, pg_etl, mapping="synthea")
    assert second["counts"] == {"Created": 0, "Updated": 0, "Unchanged": sum(EXPECTED.values()), "Errored": 0}
    for table, count in EXPECTED.items():
        assert query(url, f"SELECT count(*) FROM {table}") == [(count,)], table
