"""File-level problems fail the batch with a clear reason, publish nothing, and exit 2.

A partner who sends the wrong file must be told exactly why in the results folder, and the target
must not receive a single row of it.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from patient_etl.cli import main
from patient_etl.resources import PatientEtl
from patient_etl_tests.conftest import query, read_results, write_csv

GOOD_HEADER = "id,First Name,Last Name,dob,Sex"


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("sheet.xml", "<x/>")
    return buffer.getvalue()


CASES = {
    "excel": (lambda p: p.write_bytes(_zip_bytes()), "not_csv", "is a zip or Excel workbook"),
    "binary": (lambda p: p.write_bytes(b"id,name\x00\x01\x02\n"), "not_csv", "binary data"),
    "latin1": (lambda p: p.write_bytes(f"{GOOD_HEADER}\n1,Zoë,Lee,1980-01-01,F\n".encode("latin-1")),
               "encoding", "is not UTF-8 (first bad byte on line 2)"),
    "utf16": (lambda p: p.write_text(f"{GOOD_HEADER}\n1,A,B,1980-01-01,F\n", encoding="utf-16"),
              "encoding", "is UTF-16"),
    "empty": (lambda p: p.write_bytes(b""), "empty", "is empty"),
    "header_only": (lambda p: write_csv(p, GOOD_HEADER), "no_data", "has a header but no data rows"),
    "missing_required": (lambda p: write_csv(p, "id,First Name,Last Name", "1,A,B"), "missing_columns",
                         "required columns missing: birth_date, sex"),
    "two_for_one": (lambda p: write_csv(p, GOOD_HEADER + ",DOB", "1,A,B,1980-01-01,F,1980-01-01"),
                    "duplicate_field", "columns 'dob' and 'DOB' both map to birth_date"),
}


@pytest.mark.parametrize("case", CASES)
def test_file_level_failure(case, tmp_path, run_import, pg_etl):
    make, code, reason = CASES[case]
    path = tmp_path / "roster.csv"
    make(path)
    outcome = run_import(path, pg_etl)
    assert outcome["status"] == "Failed"
    assert reason in outcome["reason"], outcome["reason"]
    (row,) = read_results(outcome)
    assert row["status"] == "Failed" and reason in row["messages"]
    assert query(pg_etl.target_url, "SELECT count(*) FROM member") == [(0,)]
    assert query(pg_etl.target_url, "SELECT status, reason FROM import_batch") == [("Failed", outcome["reason"])]
    assert query(pg_etl.target_url, "SELECT count(*) FROM import_row") == [(0,)]


def test_over_the_size_limit(tmp_path, run_import, home):
    etl = PatientEtl(home=str(home), max_file_bytes=100)
    path = write_csv(tmp_path / "roster.csv", GOOD_HEADER, *[f"{i},A,B,1980-01-01,F" for i in range(20)])
    outcome = run_import(path, etl)
    assert outcome["status"] == "Failed"
    assert "the limit is 100" in outcome["reason"]


def test_utf8_with_bom_is_accepted(tmp_path, run_import, etl):
    path = tmp_path / "roster.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{GOOD_HEADER}\n1,Zoë,Lee,1980-01-01,F\n".encode())
    outcome = run_import(path, etl)
    assert outcome["counts"]["Created"] == 1, outcome
    assert query(etl.target(), "SELECT first_name FROM member") == [("Zoë",)]


def test_semicolon_and_tab_delimited_files(tmp_path, run_import, etl):
    semi = write_csv(tmp_path / "semi.csv", GOOD_HEADER.replace(",", ";"), "1;A;B;1980-01-01;F")
    tab = write_csv(tmp_path / "tab.csv", GOOD_HEADER.replace(",", "\t"), "2\tC\tD\t1980-01-01\tM")
    assert run_import([semi, tab], etl)["counts"]["Created"] == 2


def test_rows_of_the_wrong_width_are_row_errors_with_exact_numbers(tmp_path, run_import, etl):
    path = write_csv(tmp_path / "roster.csv", GOOD_HEADER,
                     "1,A,B,1980-01-01,F", "2,A,B", '3,"multi\nline",B,1980-01-01,F', "4,A,B,1980-01-01,F,extra,more",
                     "5,A,B,1980-01-01,F")
    outcome = run_import(path, etl)
    results = {r["row_number"]: r for r in read_results(outcome)}
    assert results["2"]["status"] == "Errored" and "row has 3 values but the header has 5" in results["2"]["messages"]
    assert results["4"]["status"] == "Errored" and "row has more values than the header's 5 columns" in results["4"]["messages"]
    assert results["3"]["status"] == results["5"]["status"] == results["1"]["status"] == "Created"
    assert dict(query(etl.target(), "SELECT member_id, first_name FROM member"))["3"] == "multi\nline"


def test_cli_exit_codes_and_json(tmp_path, home, monkeypatch, capsys):
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    good = write_csv(tmp_path / "good.csv", GOOD_HEADER, "1,A,B,1980-01-01,F", "2,A,B,1980-02-30,F")
    assert main(["import", str(good), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"batch_id", "status", "counts", "results_file"}
    assert printed["status"] == "Finished with Errors"
    assert printed["counts"] == {"Created": 1, "Updated": 0, "Unchanged": 0, "Errored": 1}
    bad = write_csv(tmp_path / "bad.csv", "id,First Name", "1,A")
    assert main(["import", str(bad), "--json"]) == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "Failed"
    assert main(["import", str(tmp_path / "nope.csv")]) == 2, "a usage error"
