"""The published template and the target DDL are derived from the entity spec and kept in step.

Partners build their exports from the template; the DDL files in sql/ are what a DBA reviews. If
either drifted from the spec, files built to the template would fail or the target would miss columns.
"""

from __future__ import annotations

import csv

from patient_etl.cli import main, write_template
from patient_etl.target import SQL_DIR
from patient_etl.target.ddl import generated_files
from patient_etl_tests.conftest import read_results


def test_roster_template_lists_every_column_with_notes(tmp_path, capsys):
    assert main(["template", "roster", "--out", str(tmp_path)]) == 0
    template, notes = tmp_path / "roster_template.csv", tmp_path / "roster_template_notes.csv"
    assert str(template) in capsys.readouterr().out
    header = next(csv.reader(template.open()))
    assert header[:6] == ["member_id", "first_name", "middle_name", "last_name", "birth_date", "sex"]
    assert {"address_line1", "city", "state", "zip", "email", "phone", "ssn"} <= set(header)
    rows = {r["column"]: r for r in csv.DictReader(notes.open())}
    assert rows["birth_date"]["required"] == "yes" and "MM/DD/YYYY" in rows["birth_date"]["format"]
    assert "date of birth" in rows["birth_date"]["also accepted as"]
    assert "-1 .. -10" in rows["zip"]["notes"]


def test_the_template_itself_imports_cleanly(tmp_path, run_import, etl):
    template, _ = write_template("roster", tmp_path)
    header = template.read_text().strip()
    values = {"member_id": "T1", "first_name": "Ann", "last_name": "Lee", "birth_date": "1980-01-01", "sex": "F",
              "address_line1": "1 Main St", "city": "Boston", "state": "MA", "zip": "02110",
              "email": "ann@example.org", "phone": "6175550101", "ssn": "123456789", "relationship": "self"}
    row = ",".join(values.get(column, "") for column in header.split(","))
    template.write_text(f"{header}\n{row}\n")
    outcome = run_import(template, etl)
    assert outcome["counts"]["Created"] == 1, read_results(outcome)


def test_sql_files_match_the_spec():
    for name, text in generated_files().items():
        path = SQL_DIR / name
        assert path.exists() and path.read_text() == text, f"{name} is out of date: python -m patient_etl.target.ddl"
