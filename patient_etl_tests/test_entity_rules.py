"""The per-row rules of Family, Provider, Care, Claim and EOP, good and bad values, through the real pipeline.

Payers and clinics send these files next to the roster; a rule that lets a bad NPI, code or amount
through puts wrong money and wrong clinical codes in the target, and one that rejects a good value
makes partners fight the importer. Each entity file in `data/entities/` is imported with the files of
the entities before it, so every row (good or bad) points at a good parent row in the same batch:
these tests keep holding once references are checked.
"""

from __future__ import annotations

import csv

import pytest

from patient_etl.cli import write_template
from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import header_key
from patient_etl_tests.conftest import DATA, query, read_results

FILES = DATA / "entities"
# What each entity file is imported with: its ancestors, so its references resolve in the batch.
WITH = {
    "family": [],
    "provider": [],
    "care": ["family", "member", "provider"],
    "claim": ["family", "member", "provider", "care"],
    "eop": ["family", "member", "provider", "care", "claim"],
}
ICD = "must be ICD-10-CM codes shaped like A00, E11.9 or S72.001A, separated by ;"
CPT = "must be CPT or HCPCS codes shaped like"
ADJUSTMENT = "must be group-reason adjustment codes like CO-45 or PR-1"
ADDRESS = "is missing; an address needs address_line1, city, state, zip"

# external_id -> None (Created, no message) or the error it gets, as "field: message".
EXPECTED = {
    "family": {
        "F1": None, "F2": None,
        "F3": "family_name: is required",
        "F4": "phone: must have 10 digits",
        "F5": "email: is not a valid e-mail address",
        "F6": f"city: {ADDRESS}",
        "F7": "state: is not a US state, DC or territory",
    },
    "provider": {
        "P1": None, "P2": None,
        "P3": "provider_name: is required",
        "P4": "npi: is not a valid NPI (check digit)",
        "P5": "npi: must have 10 digits",
        "P6": "npi: must have 10 digits",
        "P7": "taxonomy_code: must be a NUCC taxonomy code like 207Q00000X",
        "P8": "phone: must have 10 digits",
        "P9": f"zip: {ADDRESS}",
    },
    "care": {
        "C1": None, "C2": None, "C3": None,  # C3 starts in the future: scheduled care is allowed
        "C4": "member_id: is required",
        "C5": "provider_id: is required",
        "C6": "start_date: is required",
        "C7": "start_date: is not a valid date",
        "C8": "start_date: is before 1900-01-01",
        "C9": "end_date: is not a valid date",
        "C10": f"diagnosis_codes: {ICD}",  # a comma is not the separator
        "C11": f"diagnosis_codes: {ICD}",
        "C12": f"diagnosis_codes: {ICD}",
        "C13": "end_date: is before start_date",
    },
    "claim": {
        "CL1": None, "CL2": None,
        "CL3": "billed_amount: must be at least 0",
        "CL4": "billed_amount: must be an amount with at most two decimals",
        "CL5": "billed_amount: must be an amount with at most two decimals",
        "CL6": "billed_amount: is required",
        "CL7": "service_date: is in the future",
        "CL8": f"procedure_codes: {CPT}",
        "CL9": f"procedure_codes: {CPT}",  # HCPCS letters stop at V
        "CL10": "status: must be one of adjusted, billed, closed, denied, paid, pending, void",
        "CL11": f"diagnosis_codes: {ICD}",
        "CL12": "member_id: is required",
    },
    "eop": {
        "E1": None, "E2": None,
        "E3": "claim_id: is required",
        "E4": "payment_date: is required",
        "E5": "payment_date: is in the future",
        "E6": "paid_amount: must be at least 0",
        "E7": "paid_amount: is required",
        "E8": "patient_responsibility: must be at least 0",
        "E9": f"adjustment_codes: {ADJUSTMENT}",
        "E10": f"adjustment_codes: {ADJUSTMENT}",
        "E11": "adjustment_amount: must be an amount with at most two decimals",
    },
}

# What the good rows are stored as: the normalized spelling of each value.
STORED = {
    "family": ("SELECT family_id, phone, email FROM family",
               {"F1": ("6175550101", "lees@example.org"), "F2": (None, None)}),
    "provider": ("SELECT provider_id, npi, taxonomy_code, phone FROM provider",
                 {"P1": ("1234567893", "207Q00000X", "6175550100"), "P2": ("1245319599", "261QP2300X", None)}),
    "care": ("SELECT care_id, start_date, end_date, diagnosis_codes FROM care",
             {"C1": ("2024-03-01", "2024-03-02", "E11.9;I10"), "C2": ("2024-03-05", None, "E11.9;S72.001A"),
              "C3": ("2999-01-01", None, None)}),
    "claim": ("SELECT claim_id, CAST(billed_amount AS REAL), procedure_codes, status FROM claim",
              {"CL1": (100000.0, "99213;G0438", "paid"), "CL2": (0.0, "99213-25;J3490-RT-LT", "billed")}),
    "eop": ("SELECT eop_id, CAST(paid_amount AS REAL), CAST(adjustment_amount AS REAL), adjustment_codes FROM eop",
            {"E1": (80.0, -15.5, "CO-45;PR-1"), "E2": (0.0, None, "CO-45;OA-23")}),
}


@pytest.mark.parametrize("entity", list(EXPECTED))
def test_entity_rules(entity, run_import, etl):
    files = [FILES / f"{name}.csv" for name in [*WITH[entity], entity]]
    outcome = run_import(files, etl)
    assert outcome["status"] == "Finished with Errors", outcome
    results = {r["external_id"]: r for r in read_results(outcome) if r["entity"] == entity}
    assert set(results) == set(EXPECTED[entity])
    for external_id, error in EXPECTED[entity].items():
        row = results[external_id]
        if error is None:
            assert (row["status"], row["messages"]) == ("Created", ""), row
        else:
            assert row["status"] == "Errored", row
            assert f"error: {error}" in row["messages"], row
    sql, stored = STORED[entity]
    assert {r[0]: r[1:] for r in query(etl.target(), sql)} == stored


def test_npi_shape_and_check_digit_are_separate_messages(run_import, etl):
    outcome = run_import(FILES / "provider.csv", etl)
    results = {r["external_id"]: r["messages"] for r in read_results(outcome)}
    assert "must have 10 digits" not in results["P4"]
    assert "check digit" not in results["P5"] and "check digit" not in results["P6"]


def test_provider_template_has_the_canonical_columns(tmp_path):
    template, notes = write_template("provider", tmp_path)
    with template.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header == ["provider_id", "provider_name", "npi", "taxonomy_code", "specialty", "organization_name",
                      "phone", "address_line1", "address_line2", "city", "state", "zip"]
    with notes.open(newline="", encoding="utf-8") as handle:
        described = {row["column"]: row for row in csv.DictReader(handle)}
    assert described["provider_name"]["required"] == "yes"
    assert "check digit" in described["npi"]["format"]


@pytest.mark.parametrize("entity,columns", [
    ("family", ["family_id", "family_name", "phone", "email", "address_line1", "address_line2", "city", "state",
                "zip"]),
    ("care", ["care_id", "member_id", "provider_id", "start_date", "end_date", "care_type", "diagnosis_codes",
              "description"]),
    ("claim", ["claim_id", "member_id", "provider_id", "service_date", "billed_amount", "care_id", "payer_name",
               "procedure_codes", "diagnosis_codes", "status"]),
    ("eop", ["eop_id", "claim_id", "payment_date", "paid_amount", "patient_responsibility", "adjustment_amount",
             "adjustment_codes", "check_number"]),
])
def test_templates_publish_the_model(tmp_path, entity, columns):
    template, _ = write_template(entity, tmp_path)
    assert template.read_text(encoding="utf-8").strip().split(",") == columns


@pytest.mark.parametrize("entity", list(ENTITIES))
def test_no_header_spelling_maps_to_two_fields(entity):
    """`header_index` keeps the last field a spelling names: a shared alias would silently move data."""
    spec = ENTITIES[entity]
    owner: dict[str, str] = {}
    for f in [*spec.fields, *(f for g in spec.groups for f in g.fields)]:
        for spelling in (f.name, *f.aliases):
            assert owner.setdefault(header_key(spelling), f.name) == f.name, (spelling, owner[header_key(spelling)])
