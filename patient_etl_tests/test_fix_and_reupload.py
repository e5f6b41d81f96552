"""The fix-and-re-upload loop: the errors file goes back to the partner, they fix cells and upload it.

The people fixing these rows work in Excel. The errors file must carry each errored row's cells
exactly as sent, except the SSN, which is never kept in clear outside the landed copy: a valid one is
echoed masked and a re-uploaded mask keeps the stored SSN; an invalid one is echoed marked for retyping;
and the messages. Uploaded again as it is, its messages column is ignored (never stored in
`extra`, never turning a good row into Updated) and the fixed rows import. The workbook beside it
highlights each error cell and names the error, and never lets a cell run as a formula.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from openpyxl import load_workbook

from patient_etl_tests.conftest import query, read_results

HEADER = "Patient ID,First Name,Last Name,DOB,Gender,Address 1,Address 2,City,State,Zip,SSN,Email,"
ROWS = [
    "G1,Ann,Lee,1980-01-02,F,1 Main St,,Boston,MA,02110,123-45-6700,ann@example.org,",
    "E1,Bob,Ray,1975-03-04,M,2 Elm St,,Salem,MA,0197X,123-45-6703,,",
    "E2,Cy,Moe,1990-02-02,M,,,,,,12345,,",
    'E3,Di,Poe,1991-05-06,F,3 Oak St,"+1 rear\r\ndoor",Lynn,MA,01901,,not-an-email,',
]


def _excel_csv(path, lines):
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def _errors_files(home, suffix: str) -> list:
    return sorted((home / "results").rglob(f"*_errors*{suffix}"))


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
def test_errors_file_fixed_and_uploaded_again(tmp_path, home, run_import, target, request):
    etl = request.getfixturevalue(target)
    first = run_import(_excel_csv(tmp_path / "roster.csv", [HEADER, *ROWS]), etl)
    assert {r["external_id"]: r["status"] for r in read_results(first)} == {
        "G1": "Created", "E1": "Errored", "E2": "Errored", "E3": "Errored"}
    (errors_csv,) = _errors_files(home, ".csv")
    with errors_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [*HEADER.split(",")[:-1], "", "errors"]
    by_id = {r[0]: r for r in rows[1:]}
    assert set(by_id) == {"E1", "E2", "E3"}
    # SSNs: a valid one masked (re-uploading the mask keeps it), an invalid one marked for retyping.
    assert by_id["E1"][10] == "***-**-6703" and by_id["E2"][10] == "***-**-2345 (invalid: retype it)"
    assert "error: zip: must be 5 digits" in by_id["E1"][-1]
    assert "error: ssn: must have 9 digits" in by_id["E2"][-1]
    assert by_id["E3"][6] == "'+1 rear\r\ndoor"  # a formula start is neutralized in CSV

    # The partner fixes E1's zip and E2's SSN, leaves E3, and adds G1 back unchanged; uploads as it is.
    by_id["E1"][9] = "01970"
    by_id["E2"][10] = "123456789"
    good = next(csv.reader(io.StringIO(ROWS[0])))
    out = io.StringIO()
    csv.writer(out).writerows([rows[0], by_id["E1"], by_id["E2"], by_id["E3"], [*good, "error: old message"]])
    fixed = tmp_path / "roster_fixed.csv"
    fixed.write_bytes(b"\xef\xbb\xbf" + out.getvalue().encode("utf-8"))
    second = run_import(fixed, etl)
    results = {r["external_id"]: r for r in read_results(second)}
    assert {k: r["status"] for k, r in results.items()} == {
        "E1": "Created", "E2": "Created", "E3": "Errored", "G1": "Unchanged"}, results
    assert not any("errors" in (r["messages"] or "") for r in results.values()), results
    stored = dict(query(etl.target(), "SELECT member_id, extra FROM member"))
    assert stored == {"G1": None, "E1": None, "E2": None}
    assert dict(query(etl.target(), "SELECT member_id, ssn FROM member WHERE member_id = 'E2'")) == {
        "E2": "***-**-6789"}
    # The second errors file holds E3 once, with one errors column.
    second_errors = [p for p in _errors_files(home, ".csv") if p != errors_csv]
    with second_errors[0].open(newline="", encoding="utf-8") as handle:
        again = list(csv.reader(handle))
    assert again[0].count("errors") == 1 and [r[0] for r in again[1:]] == ["E3"]


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
def test_errors_workbook_highlights_and_names_each_error(tmp_path, home, run_import, target, request):
    etl = request.getfixturevalue(target)
    run_import(_excel_csv(tmp_path / "roster.csv", [HEADER, *ROWS]), etl)
    (errors_csv,) = _errors_files(home, ".csv")
    (workbook_path,) = _errors_files(home, ".xlsx")
    assert workbook_path.stem == errors_csv.stem
    workbook = load_workbook(workbook_path)
    rows, listing = workbook["rows"], workbook["errors"]
    values = [[c.value for c in row] for row in rows.iter_rows()]
    assert values[0] == [*HEADER.split(",")[:-1], None, "errors"]
    by_id = {r[0]: r for r in values[1:]}
    assert by_id["E1"][10] == "***-**-6703" and by_id["E2"][10] == "***-**-2345 (invalid: retype it)"
    assert by_id["E1"][9] == "0197X"
    # A formula start is a text cell, never a formula.
    e3 = next(row for row in rows.iter_rows(min_row=2) if row[0].value == "E3")
    assert e3[6].value.startswith("+1 rear") and e3[6].value.endswith("\ndoor") and e3[6].data_type == "s"
    e1 = next(row for row in rows.iter_rows(min_row=2) if row[0].value == "E1")
    assert e1[9].fill.fgColor.rgb.endswith("FFC7CE") and "must be 5 digits" in e1[9].comment.text
    assert e1[3].comment is None and not e1[3].fill.fgColor.rgb.endswith("FFC7CE")
    listed = [[c.value for c in row] for row in listing.iter_rows(min_row=2)]
    assert [e1[0].row, "Zip", "must be 5 digits (ZIP or ZIP+4)"] in listed or any(
        r[0] == e1[0].row and r[1] == "Zip" and "must be 5 digits" in r[2] for r in listed), listed
    assert any(r[1] == "SSN" and "must have 9 digits" in r[2] for r in listed)
    assert any(r[1] == "Email" and "not a valid e-mail" in r[2] for r in listed)
    json.dumps(listed)  # plain values only


def _rows_of(path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_rows_of_the_wrong_width_are_in_the_errors_file_with_their_cells(tmp_path, home, etl, run_import):
    """A short row is echoed padded, a long row's surplus cells kept in its last column; both with
    their external IDs; fixed and uploaded again, they import."""
    header = "Patient ID,First Name,Last Name,DOB,Gender"
    lines = [header, "G1,Ann,Lee,1980-01-02,F", "W1,Bob", "W2,Cy,Moe,1990-02-02,M,left over,and more",
             "G2,Di,Poe,1991-05-06,F"]
    first = run_import(_excel_csv(tmp_path / "roster.csv", lines), etl)
    results = {r["row_number"]: r for r in read_results(first)}
    assert {n: (r["external_id"], r["status"]) for n, r in results.items()} == {
        "1": ("G1", "Created"), "2": ("W1", "Errored"), "3": ("W2", "Errored"), "4": ("G2", "Created")}
    (errors_csv,) = _errors_files(home, ".csv")
    rows = _rows_of(errors_csv)
    assert rows[0] == [*header.split(","), "errors"]
    by_id = {r[0]: r for r in rows[1:]}
    assert by_id["W1"][:5] == ["W1", "Bob", "", "", ""] and "row has 2 values but the header has 5" in by_id["W1"][5]
    assert by_id["W2"][:5] == ["W2", "Cy", "Moe", "1990-02-02", "M,left over,and more"]
    assert "row has more values than the header's 5 columns" in by_id["W2"][5]
    (workbook,) = _errors_files(home, ".xlsx")
    sheet = load_workbook(workbook).worksheets[0]
    assert sorted(row[0].value for row in sheet.iter_rows(min_row=2)) == ["W1", "W2"]

    by_id["W1"][1:5] = ["Bob", "Ray", "1975-03-04", "M"]
    by_id["W2"][4] = "M"
    out = io.StringIO()
    csv.writer(out).writerows([rows[0], by_id["W1"], by_id["W2"]])
    fixed = tmp_path / "roster_fixed.csv"
    fixed.write_text(out.getvalue(), encoding="utf-8")
    second = run_import(fixed, etl)
    assert {r["external_id"]: r["status"] for r in read_results(second)} == {"W1": "Created", "W2": "Created"}


def test_a_cell_neutralised_against_formulas_comes_back_without_its_quote(tmp_path, home, etl, run_import):
    header = "Patient ID,First Name,Last Name,DOB,Gender,Address 1,Address 2,City,State,Zip,Email"
    lines = [header, "N1,Ann,'Lee,1980-01-02,F,1 Main St,+1 rear door,Boston,MA,02110,not-an-email"]
    first = run_import(_excel_csv(tmp_path / "roster.csv", lines), etl)
    assert {r["external_id"]: r["status"] for r in read_results(first)} == {"N1": "Errored"}
    rows = _rows_of(_errors_files(home, ".csv")[0])
    by_id = {r[0]: r for r in rows[1:]}
    assert by_id["N1"][6] == "'+1 rear door"  # neutralised in the errors file
    by_id["N1"][10] = "ann@example.org"
    out = io.StringIO()
    csv.writer(out).writerows([rows[0], by_id["N1"]])
    fixed = tmp_path / "roster_fixed.csv"
    fixed.write_text(out.getvalue(), encoding="utf-8")
    second = run_import(fixed, etl)
    assert {r["external_id"]: r["status"] for r in read_results(second)} == {"N1": "Created"}
    (addresses,) = query(etl.target(), "SELECT addresses FROM member WHERE member_id = 'N1'")[0]
    assert json.loads(addresses)[0]["address_line2"] == "+1 rear door"
    # A quote this product did not put there (not before a formula character) is the partner's own.
    assert query(etl.target(), "SELECT last_name FROM member WHERE member_id = 'N1'") == [("'Lee",)]
