"""The roster layouts partners really send, written the way spreadsheets and EHR exports write them.

`Patient ID,First Name,Last Name,DOB,Gender,Address 1,Address 2,City,State,Zip` is one of the most
common US roster layouts; reading `Address 2` as a second address errors every row that has one.
A number right after `Address`, `Address Line` or `Street` is the address line; a group index is a
`-N` or `_N` suffix (or ` N` after a group field's own spelling, as in `Email 2`). A column holding
the whole name is refused with a message saying what to send instead.
"""

from __future__ import annotations

import json

import pytest

from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import map_header
from patient_etl_tests.conftest import query, read_results

MEMBER = ENTITIES["member"]


def _write(path, lines: list[str], bom: bool = True, crlf: bool = True):
    """A file as Excel saves "CSV UTF-8": a BOM, CRLF line ends."""
    text = ("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.mark.parametrize(("header", "column"), [
    ("Address 1", "address_line1"), ("Address 2", "address_line2"), ("Address Line 1", "address_line1"),
    ("Address Line 2", "address_line2"), ("Street", "address_line1"), ("Street 2", "address_line2"),
    ("Apt/Suite", "address_line2"), ("Zip Code", "zip"), ("Postal Code", "zip"), ("Phone Number", "phone"),
    ("Mobile", "phone"), ("Home Phone", "phone"), ("Cell", "phone"), ("MRN", "member_id"),
    ("Date of Birth", "birth_date"), ("Birth Date", "birth_date"), ("DOB", "birth_date"), ("Gender", "sex"),
    ("Patient ID", "member_id"),
    # group indexes: -N and _N always; " N" / "N" after a group field's spelling; never after Address
    ("Email-2", "email_2"), ("email_3", "email_3"), ("Email 3", "email_3"), ("Phone2", "phone_2"),
    ("Address 1-2", "address_line1_2"), ("Address Line 2_3", "address_line2_3"), ("addressLine1-2", "address_line1_2"),
    ("Zip Code-2", "zip_2"), ("city 2", "city_2"), ("address_line1", "address_line1"),
    ("Address 3", None), ("Email-11", None), ("Patient Name", None),
])
def test_header_spellings(header, column):
    assert map_header(MEMBER, header) == column


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
def test_the_common_us_roster_layout_imports(tmp_path, run_import, target, request):
    etl = request.getfixturevalue(target)
    path = _write(tmp_path / "roster.csv", [
        "Patient ID,First Name,Last Name,DOB,Gender,Address 1,Address 2,City,State,Zip,,",
        "R1,Ann,Lee,01/02/1980,Female,1 Main St,Apt 4,Boston,MA,02110,,",
        'R2,Bob,Ray,1975-03-04,M,"2 Elm St","Unit 5\r\nrear door",Salem,MA,01970,,',
        "R3,Cy,Moe,1990-02-02,M,,,,,,,",
    ])
    outcome = run_import(path, etl)
    results = {r["external_id"]: r for r in read_results(outcome)}
    assert {k: r["status"] for k, r in results.items()} == {"R1": "Created", "R2": "Created", "R3": "Created"}, results
    stored = {k: json.loads(v) if v else None
              for k, v in query(etl.target(), "SELECT member_id, addresses FROM member")}
    assert stored["R1"] == [{"address_line1": "1 Main St", "address_line2": "Apt 4", "city": "Boston",
                             "state": "MA", "zip": "02110"}]
    assert stored["R2"][0]["address_line2"].startswith("Unit 5") and stored["R2"][0]["city"] == "Salem"
    assert stored["R3"] is None


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
def test_a_whole_name_column_is_refused_saying_what_to_send(tmp_path, run_import, target, request):
    etl = request.getfixturevalue(target)
    path = _write(tmp_path / "roster.csv", ["MRN,Patient Name,Date of Birth,Sex", 'M1,"Lee, Ann",1980-01-02,F'])
    outcome = run_import(path, etl)
    assert outcome["status"] == "Failed", outcome
    message = read_results(outcome)[0]["messages"]
    assert "required columns missing: first_name, last_name" in message
    assert "'Patient Name' holds the whole name" in message and "First Name, Last Name" in message
    assert "Lee" not in message  # no PHI in the reason


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
def test_several_phone_columns_fill_the_phone_list_in_column_order(tmp_path, run_import, target, request):
    """`Mobile` and `Home Phone` both mean a phone: they are the list's first and second, not a clash;
    an explicit `Phone 2` keeps its place and the unnumbered one after it takes the next free one."""
    etl = request.getfixturevalue(target)
    path = _write(tmp_path / "roster.csv", [
        "Patient ID,First Name,Last Name,DOB,Gender,Mobile,Phone 2,Home Phone",
        "P1,Ann,Lee,1980-01-02,F,617-555-0101,617-555-0102,617-555-0103",
        "P2,Bob,Ray,1975-03-04,M,,,(508) 555-0199",
    ])
    outcome = run_import(path, etl)
    assert {r["external_id"]: r["status"] for r in read_results(outcome)} == {"P1": "Created", "P2": "Created"}
    stored = {k: json.loads(v) for k, v in query(etl.target(), "SELECT member_id, phones FROM member")}
    assert stored == {"P1": ["6175550101", "6175550102", "6175550103"], "P2": ["5085550199"]}  # stored compact


def test_two_columns_for_one_address_line_are_still_refused(tmp_path, etl, run_import):
    path = _write(tmp_path / "roster.csv", ["Patient ID,First Name,Last Name,DOB,Gender,Street,Address,City",
                                            "P1,Ann,Lee,1980-01-02,F,1 Main St,1 Main St,Boston"])
    outcome = run_import(path, etl)
    assert outcome["status"] == "Failed"
    assert "columns 'Street' and 'Address' both map to address_line1" in read_results(outcome)[0]["messages"]


def test_template_notes_state_the_group_index_rule(tmp_path):
    from patient_etl.cli import write_template

    _, notes = write_template("roster", tmp_path)
    text = notes.read_text(encoding="utf-8")
    assert "Address 2" in text and "-2" in text and "line" in text
