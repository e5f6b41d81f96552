"""The errors file's header row is formula-neutralised like its cells.

Partners open the errors file in a spreadsheet to fix and re-upload it: a column name the partner (or
an attacker) sent as `=HYPERLINK(...)` or `@SUM(...)` would run as a formula when the file is opened.
"""

from __future__ import annotations

import csv

from patient_etl_tests.conftest import write_csv


def test_a_formula_header_is_written_as_text(tmp_path, etl, run_import):
    roster = write_csv(tmp_path / "roster.csv", 'Patient ID,First Name,Last Name,DOB,Sex,"=HYPERLINK(""x"")",@note',
                       "P1,Ann,Lee,1980-01-01,F,a,b", "P2,Bo,Lee,not a date,M,c,d")
    outcome = run_import(roster, etl)
    assert outcome["status"] == "Finished with Errors"
    (errors,) = (tmp_path / "home" / "results").glob("*_errors.csv")
    with errors.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header == ["Patient ID", "First Name", "Last Name", "DOB", "Sex", "'=HYPERLINK(\"x\")", "'@note", "errors"]
