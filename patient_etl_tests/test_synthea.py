"""The real Synthea export, imported with the saved `synthea` template, end to end as one batch.

Synthetic but realistic data: names with digits, patients without a ZIP, claims summed from their
charges. Every row must be Created, nothing may dangle, and a second import must change nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from patient_etl_tests.conftest import query, read_results

SYNTHEA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "synthea"
FILES = ("patients", "providers", "organizations", "encounters", "claims", "claims_transactions")
EXPECTED = {"member": 27, "provider": 166, "care": 604, "claim": 1267, "eop": 1843}
DANGLING = {
    "care -> member": "SELECT count(*) FROM care c LEFT JOIN member m USING (member_id) WHERE m.member_id IS NULL",
    "care -> provider": "SELECT count(*) FROM care c LEFT JOIN provider p USING (provider_id) "
                        "WHERE p.provider_id IS NULL",
    "claim -> care": "SELECT count(*) FROM claim c LEFT JOIN care e USING (care_id) "
                     "WHERE c.care_id IS NOT NULL AND e.care_id IS NULL",
    "eop -> claim": "SELECT count(*) FROM eop e LEFT JOIN claim c USING (claim_id) WHERE c.claim_id IS NULL",
}


def test_synthea_export_imports_whole_and_then_unchanged(tmp_path, run_import, pg_etl):
    export = tmp_path / "synthea"
    export.mkdir()
    for name in FILES:
        shutil.copy(SYNTHEA / f"{name}.csv", export / f"{name}.csv")
    first = run_import(export, pg_etl, mapping="synthea")
    rows = read_results(first)
    assert first["status"] == "Finished", [r for r in rows if r["status"] == "Errored"][:5]
    assert first["counts"] == {"Created": sum(EXPECTED.values()), "Updated": 0, "Unchanged": 0, "Errored": 0}
    url = pg_etl.target_url
    for table, count in EXPECTED.items():
        assert query(url, f"SELECT count(*) FROM {table}") == [(count,)], table
    for name, sql in DANGLING.items():
        assert query(url, sql) == [(0,)], name
    # ZIP-less patients are real data: a warning, not an error.
    warned = [r for r in rows if r["entity"] == "member" and "zip: is missing" in r["messages"]]
    assert len(warned) == 12 and all(r["status"] == "Created" for r in warned)
    # A claim's billed amount is the sum of its CHARGE rows.
    assert query(url, "SELECT billed_amount FROM claim WHERE claim_id = '9120543f-28b9-96ae-09eb-d54f6d918234'"
                 )[0][0] is not None

    second = run_import(export, pg_etl, mapping="synthea")
    assert second["counts"] == {"Created": 0, "Updated": 0, "Unchanged": sum(EXPECTED.values()), "Errored": 0}
