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


def test_errors_workbook_goes_on_on_further_sheets_past_a_sheets_rows(tmp_path):
    """A workbook holds 1,048,576 rows a sheet: past them, rows and errors go on on `rows 2`, `errors 2`...
    (written with a sheet of 4 rows: the header and three lines), none dropped."""
    import duckdb
    from openpyxl import load_workbook

    from patient_etl.results import SHEET_ROWS, write_errors_xlsx

    assert SHEET_ROWS == 2 ** 20  # Excel's
    duck = duckdb.connect()
    query = ("SELECT 'M' || n AS c0, 'x' || n AS c1, 'error: sex: unknown' "
             "|| CASE WHEN n % 2 = 0 THEN '; error: member_id: too long' ELSE '' END AS errors, n AS _n "
             "FROM range(1, 8) t(n)")
    headers = [(0, "Member ID", "member_id"), (1, "Sex", "sex")]
    path = tmp_path / "errors.xlsx"
    write_errors_xlsx(duck, query, "member", headers, path, sheet_rows=4)
    workbook = load_workbook(path)
    # Each series starts a sheet when it needs one: three lines a sheet, 7 rows and 10 errors.
    assert workbook.sheetnames == ["rows", "errors", "errors 2", "rows 2", "errors 3", "rows 3", "errors 4"]
    lines = [[c.value for c in row] for name in ("rows", "rows 2", "rows 3") for row in workbook[name].iter_rows()]
    headers_seen = [line for line in lines if line[0] == "Member ID"]
    assert len(headers_seen) == 3 and headers_seen[0] == ["Member ID", "Sex", "errors"]
    assert [line[0] for line in lines if line[0] != "Member ID"] == [f"M{n}" for n in range(1, 8)]
    listed = [[c.value for c in row] for name in ("errors", "errors 2", "errors 3", "errors 4")
              for row in workbook[name].iter_rows(min_row=2)]
    assert len(listed) == 7 + 3  # every sex error, and the member_id error of M2, M4, M6
    assert listed[:3] == [[2, "Sex", "unknown"], [3, "Member ID", "too long"], [3, "Sex", "unknown"]]
    assert ["rows 2: 2", "Sex", "unknown"] in listed  # M4, the first line of `rows 2`
    assert ["rows 3: 2", "Member ID", "too long"] not in listed and ["rows 3: 2", "Sex", "unknown"] in listed
    assert workbook["rows 3"]["B2"].comment.text == "unknown"


def test_past_its_commented_cells_a_workbook_highlights_error_cells_without_a_comment(tmp_path):
    """xlsxwriter holds every comment until the workbook closes: a workbook comments its first error cells
    only (here 3 of 5), every error cell is highlighted, and every error is named on its row and listed."""
    import duckdb
    from openpyxl import load_workbook

    from patient_etl.results import COMMENTED_CELLS, write_errors_xlsx

    assert COMMENTED_CELLS == 10_000
    duck = duckdb.connect()
    query = ("SELECT 'M' || n AS c0, 'x' || n AS c1, 'error: sex: unknown' AS errors, n AS _n FROM range(1, 6) t(n)")
    path = tmp_path / "errors.xlsx"
    write_errors_xlsx(duck, query, "member", [(0, "Member ID", "member_id"), (1, "Sex", "sex")], path,
                      commented_cells=3)
    rows = load_workbook(path)["rows"]
    sex = [rows.cell(row=line, column=2) for line in range(2, 7)]
    assert [c.value for c in sex] == [f"x{n}" for n in range(1, 6)]
    assert [c.comment.text if c.comment else None for c in sex] == ["unknown"] * 3 + [None] * 2
    assert all(c.fill.fgColor.rgb.endswith("FFC7CE") for c in sex)
    assert [rows.cell(row=line, column=3).value for line in range(2, 7)] == ["error: sex: unknown"] * 5
    listed = [[c.value for c in row] for row in load_workbook(path)["errors"].iter_rows(min_row=2)]
    assert listed == [[line, "Sex", "unknown"] for line in range(2, 7)]
