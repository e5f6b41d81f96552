"""Staging reads what partners really send, and bounds the work any file can cause.

Wide files, huge lines and headers are refused with their own reason (or staged) instead of burning
minutes of CPU; a workbook reads as the user saw it; row numbers are the spreadsheet's; a row of the
wrong width keeps its external ID; a control character is that row's error, naming the column.
"""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import openpyxl
import pytest

from patient_etl.resources import PatientEtl
from patient_etl.staging.load import FileRejected, Limits, stage_files
from patient_etl.workspace import STAGED

H = "id,First Name,Last Name,dob,Sex"


def _stage(tmp_path: Path, path: Path, **limits) -> list[dict]:
    etl = PatientEtl(home=str(tmp_path / "home"))
    with etl.workspace("b1").open(STAGED) as db:
        stage_files(db, [(path.name, path)], limits=Limits(**limits))
        cursor = db.con.execute(f"SELECT * FROM {db.staged('member')} ORDER BY rid")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def _rejected(tmp_path: Path, path: Path, **limits) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        _stage(tmp_path, path, **limits)
    return caught.value


def test_three_thousand_columns_stage_and_ten_thousand_are_refused(tmp_path):
    for width in (3000, 10_000):
        extra = [f"note {k}" for k in range(width - 5)]
        path = tmp_path / f"roster_{width}.csv"
        path.write_text(f"{H},{','.join(extra)}\nM1,Ann,Lee,1980-01-01,F,{','.join('x' for _ in extra)}\n")
        if width == 3000:
            (row,) = _stage(tmp_path, path)
            assert row["first_name"] == "Ann" and '"note2994":"x"' in str(row["extra"]).replace(" ", "")
        else:
            exc = _rejected(tmp_path, path)
            assert (exc.code, exc.reason) == ("too_many_columns", f"{path.name} has 10,000 columns; the limit is 5,000")


def test_a_three_megabyte_line_and_a_one_megabyte_header_are_refused_naming_the_line(tmp_path):
    long_line = tmp_path / "roster_long.csv"
    long_line.write_text(f"{H}\nM1,Ann,Lee,1980-01-01,F\nM2,{'A' * 3_000_000},Lee,1980-01-01,F\n")
    exc = _rejected(tmp_path, long_line)
    assert exc.code == "line_too_long" and "row starting on line 3 is longer than 1,048,576 bytes" in exc.reason
    header = tmp_path / "roster_header.csv"
    header.write_text(f"{H},{'N' * 1_100_000}\nM1,Ann,Lee,1980-01-01,F,x\n")
    exc = _rejected(tmp_path, header)
    assert exc.code == "line_too_long" and "line 1 (the header)" in exc.reason


def test_row_numbers_are_spreadsheet_rows_and_wrong_width_rows_keep_their_id(tmp_path):
    path = tmp_path / "roster.csv"
    path.write_text(f'{H},Notes\nM1,Ann,Lee,1980-01-01,F,"two\nlines"\n\nM3,Bo,Lee\nM4,Cy,Lee,1980-01-01,F,x\n')
    rows = {r["row_number"]: r for r in _stage(tmp_path, path)}
    # M1 is data row 1 (its quoted line break stays on one spreadsheet line); row 2 is the blank line.
    assert sorted(rows) == [1, 3, 4]
    assert rows[3]["member_id"] == "M3" and rows[3]["width_error"] == "row has 3 values but the header has 6"
    assert rows[4]["member_id"] == "M4" and rows[4]["width_error"] is None


def test_control_characters_are_a_row_error_naming_the_column(tmp_path):
    path = tmp_path / "roster.csv"
    path.write_bytes(f"{H},Notes\nM1,An\x00n,Lee,1980-01-01,F,ok\nM2,Bo,Lee,1980-01-01,F,a\x1bb\n".encode())
    rows = _stage(tmp_path, path)
    assert [r["width_error"] for r in rows] == [
        "First Name: contains a control character (such as NUL); remove it",
        "Notes: contains a control character (such as NUL); remove it"]


def test_a_workbook_reads_as_the_user_saw_it(tmp_path):
    book = openpyxl.Workbook()
    book.active.title = "Cover"
    sheet = book.create_sheet("Patients")
    sheet.append(["id", "First Name", "Last Name", "dob", "Sex", "Zip Code"])
    sheet.append([123, "Ann", "Lee", dt.datetime(1985, 4, 3), "F", "02134"])
    sheet.cell(row=2, column=1).number_format = "000000"
    sheet.cell(row=2, column=4).number_format = "mm/dd/yyyy"
    path = tmp_path / "roster.xlsx"
    book.save(path)
    etl = PatientEtl(home=str(tmp_path / "home"))
    from patient_etl.staging.mappings import Mapping

    mapping = Mapping("t", "", {}, {"*": "member"}, sheet="Patients")
    with etl.workspace("b1").open(STAGED) as db:
        stage_files(db, [(path.name, path)], mapping=mapping)
        row = db.con.execute(f"SELECT member_id, birth_date, row_number FROM {db.staged('member')}").fetchall()
    assert row == [("000123", "1985-04-03", 1)]


def test_gzip_and_tab_separated_files(tmp_path):
    path = tmp_path / "roster.tsv.gz"
    path.write_bytes(gzip.compress(f"{H.replace(',', chr(9))}\nM1\tAnn\tLee\t1980-01-01\tF\n".encode()))
    (row,) = _stage(tmp_path, path)
    assert (row["member_id"], row["last_name"]) == ("M1", "Lee")


def test_an_ambiguous_delimiter_is_named_and_a_template_decides(tmp_path):
    path = tmp_path / "roster.csv"
    path.write_text("id;First Name;Last Name;dob;Sex;Notes, more\nM1;Ann;Lee;1980-01-01;F;a, b\n")
    from patient_etl.staging.mappings import Mapping

    etl = PatientEtl(home=str(tmp_path / "home"))
    with etl.workspace("b1").open(STAGED) as db:
        stage_files(db, [(path.name, path)], mapping=Mapping("t", "", {}, {}, delimiter=";"))
        assert db.con.execute(f"SELECT member_id, sex FROM {db.staged('member')}").fetchall() == [("M1", "F")]
    path.write_text("dob,Sex;First Name\n1980-01-01,F;Ann\n")
    exc = _rejected(tmp_path, path)
    assert exc.code == "delimiter" and "considered comma (','), semicolon (';')" in exc.reason
