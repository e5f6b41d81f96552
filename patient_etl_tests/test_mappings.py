"""Mapping templates: a partner's own format imported without reformatting, and bad templates refused.

A template is configuration that data engineers write by hand; a mistake in it must be caught when it
is loaded, with a message that says what to fix, never half-way through someone's batch.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from patient_etl.cli import main
from patient_etl.resources import PatientEtl
from patient_etl.staging.mappings import MAPPINGS_DIR, MappingError, available, load_mapping
from patient_etl_tests.conftest import query, read_results, write_csv

ACME_HEADER = "PatID,PatFirst,PatLast,DOB,SexCode,Street,Town,Region,Postcode"


def _template(tmp_path, text: str):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("entities:\n  member:\n    columns: {A: first_name, B: first_name, L: last_name, D: birth_date, S: sex}\n",
     "columns 'A' and 'B' both map to first_name"),
    ("entities:\n  member:\n    columns: {F: first_name, L: last_name, D: birth_date}\n",
     "required fields not mapped: sex"),
    ("entities:\n  claim:\n    file: c.csv\n    sql: SELEC claim_id FROM c\n", "the SQL does not parse"),
    ("entities:\n  claim:\n    file: c.csv\n    sql: SELECT row_number, x AS claim_id FROM c\n",
     "the SQL does not produce member_id, provider_id, service_date, billed_amount"),
    ("entities:\n  patient:\n    columns: {}\n", "unknown entity"),
    ("entities:\n  member:\n    columns: {F: first_name, L: last_name, D: birth_date, S: sex, X: shoe_size}\n",
     "maps to 'shoe_size', which is not a member field"),
    ("entities:\n  member:\n    columns: {F: first_name, L: last_name, D: birth_date, S: sex}\n    relax: [zips]\n",
     "cannot relax 'zips'"),
    ("description: nothing\n", "needs an `entities:` section"),
    ("entities:\n  member:\n    colums: {F: first_name}\n", "unknown keys ['colums']"),
    ("entities:\n  claim:\n    file: c.csv\n    sql: SELECT 1; SELECT 2\n", "the SQL must be a single SELECT"),
    ("entities:\n  claim:\n    file: c.csv\n    sql: DELETE FROM c\n", "the SQL must be a single SELECT"),
    ("entities:\n  claim:\n    sql: SELECT row_number, claim_id, member_id, provider_id, service_date, billed_amount"
     " FROM c\n", "names the `file` whose row numbers it selects"),
    ("entities:\n  member:\n    columns: {F: first_name, L: last_name, D: birth_date, S: sex}\n"
     "    date_formats: {dob: '%d.%m.%Y'}\n", "'dob' is not a member field"),
    ("files:\n  '*.csv': patients\nentities:\n  member:\n    columns: {F: first_name, L: last_name, D: birth_date,"
     " S: sex}\n", "names unknown entity 'patients'"),
    ("entities: [member\n", "is not valid YAML"),
])
def test_bad_templates_are_refused_on_load(tmp_path, text, message):
    with pytest.raises(MappingError, match=re.escape(message)):
        load_mapping(str(_template(tmp_path, text)))


def test_unknown_template_name_lists_the_saved_ones(tmp_path, home, monkeypatch, capsys):
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    roster = write_csv(tmp_path / "r.csv", "first_name,last_name,birth_date,sex", "A,B,1980-01-01,F")
    assert main(["import", str(roster), "--mapping", "nosuch"]) == 2, "a usage error"
    err = capsys.readouterr().err
    assert "no mapping template 'nosuch'" in err and "acme_ehr" in err and "synthea" in err
    assert not list((home / "batches").glob("*.json")), "nothing is registered for a refused template"


def test_column_template_maps_values_dates_and_constants(tmp_path, run_import, etl):
    rows = ["A1,Ann,Lee,31.12.1980,2,1 Main St,Boston,MA,02110",
            "A2,Bob,Ray,05.06.1970,1,2 Elm St,Salem,MA,",  # no postcode: relaxed to a warning
            "A3,Cy,Moe,30.02.1990,9,,,,"]
    path = write_csv(tmp_path / "acme_patients_2026.csv", ACME_HEADER, *rows)
    outcome = run_import(path, etl, mapping="acme_ehr")
    results = {r["row_number"]: r for r in read_results(outcome)}
    assert results["1"]["status"] == "Created" and results["1"]["messages"] == ""
    assert results["2"]["status"] == "Created"
    assert results["2"]["messages"] == "warning: zip: is missing; an address needs address_line1, city, state, zip"
    assert results["3"]["status"] == "Errored" and "birth_date: is not a valid date" in results["3"]["messages"]
    assert "day first" not in results["3"]["messages"], "the template reads dates day first"
    stored = {r[0]: r[1:] for r in query(etl.target(), "SELECT member_id, birth_date, sex, relationship FROM member")}
    assert stored == {"A1": ("1980-12-31", "F", "self"), "A2": ("1970-06-05", "M", "self")}

    without = run_import(path, etl)
    assert without["status"] == "Failed" and "required columns missing" in without["reason"]


def test_template_by_path(tmp_path, run_import, etl):
    template = _template(tmp_path, "entities:\n  member:\n    columns: {Vorname: first_name, Nachname: last_name,"
                                   " Geburtsdatum: birth_date, Geschlecht: sex}\n    values:\n"
                                   "      sex: {w: F, m: M}\n")
    path = write_csv(tmp_path / "patienten.csv", "Vorname,Nachname,Geburtsdatum,Geschlecht", "Ute,Maier,1970-01-01,w")
    outcome = run_import(path, etl, mapping=str(template))
    assert outcome["counts"]["Created"] == 1
    assert query(etl.target(), "SELECT first_name, sex FROM member") == [("Ute", "F")]


def test_a_day_first_date_is_named_when_the_template_reads_month_first(tmp_path, run_import, etl):
    template = _template(tmp_path, "entities:\n  member:\n    columns: {F: first_name, L: last_name, D: birth_date,"
                                   " S: sex}\n    date_formats: {birth_date: '%m/%d/%Y'}\n")
    path = write_csv(tmp_path / "r.csv", "F,L,D,S", "Ann,Lee,03/25/1985,F", "Bob,Ray,25/03/1985,M")
    results = {r["row_number"]: r for r in read_results(run_import(path, etl, mapping=str(template)))}
    assert results["1"]["status"] == "Created"
    assert results["2"]["status"] == "Errored"
    assert results["2"]["messages"] == (
        "error: birth_date: looks written day first (DD/MM/YYYY): dates are read month first; write MM/DD/YYYY or "
        "YYYY-MM-DD, or give the column's date format in a mapping template (date_formats)")


def test_template_path_on_the_command_line(tmp_path, home, monkeypatch, capsys):
    """`--mapping path/to/file.yaml` works like a saved name, from any working directory."""
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    monkeypatch.delenv("PATIENT_ETL_TARGET_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write_csv(tmp_path / "acme_patients.csv", ACME_HEADER, "A1,Ann,Lee,31.12.1980,2,1 Main St,Boston,MA,02110")
    assert main(["import", str(path), "--mapping", str(MAPPINGS_DIR / "acme_ehr.yaml"), "--json"]) == 0
    assert '"Created": 1' in capsys.readouterr().out
    assert query(PatientEtl(home=str(home)).target(), "SELECT member_id, sex, relationship FROM member") == [
        ("A1", "F", "self")]


def test_saved_templates_load():
    assert {"acme_ehr", "synthea"} <= set(available())
    for name in available():
        template = load_mapping(name)
        assert template.entities, name
    synthea = load_mapping("synthea")
    assert set(synthea.entities) == {"member", "provider", "care", "claim", "eop"} and synthea.uses_sql
    assert synthea.relaxed("member") == {"address"}


def test_sql_template_needs_its_files(tmp_path, run_import, etl):
    """A SQL template whose driving file is not in the batch fails the batch at file level, naming it."""
    synthea = Path(__file__).parent / "data" / "synthea"
    shutil.copy(synthea / "patients.csv", tmp_path / "patients.csv")
    outcome = run_import(tmp_path / "patients.csv", etl, mapping="synthea")
    assert outcome["status"] == "Failed" and "needs a file providers.csv" in outcome["reason"]
