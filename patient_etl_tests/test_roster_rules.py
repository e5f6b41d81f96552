"""The roster rules, good and bad values, through the real pipeline.

Each rule is what a partner's file is judged by: a rule that silently accepts a bad value puts wrong
data in the target; one that rejects a good value makes partners fight the importer. Rows are packed
into a few files so the whole suite of rules runs in a handful of imports.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from patient_etl_tests.conftest import query, read_results, write_csv

HEADER = "id,First Name,Last Name,dob,Sex,Address Line 1,City,State,Zip,Email,Phone,SSN"


def _row(pid: str, dob: str = "1980-01-02", sex: str = "F", address: str = ",,", email: str = "",
         phone: str = "", ssn: str = "", first: str = "Ann", last: str = "Lee", line1: str = "") -> str:
    return ",".join([pid, first, last, dob, sex, line1 or "", address, email, phone, ssn])


def _import(tmp_path, run_import, etl, rows: list[str], header: str = HEADER) -> dict[str, dict]:
    path = write_csv(tmp_path / "roster.csv", header, *rows)
    outcome = run_import(path, etl)
    assert outcome["status"] in ("Finished", "Finished with Errors"), outcome
    return {r["row_number"]: r for r in read_results(outcome)}


def test_birth_dates(tmp_path, run_import, etl):
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    cases = {
        "1984-03-12": None, "03/12/1984": None, "3/2/1984": None, "1984-03-12T08:30:00Z": None,
        "1984-03-12 08:30": None, "2000-02-29": None,
        "2021-02-30": "birth_date: is not a valid date", "1984-13-01": "birth_date: is not a valid date",
        "13/01/1984": "birth_date: looks written day first (DD/MM/YYYY)", "25.03.1984": "birth_date: looks written day first",
        "04/03/85": "birth_date: has a two-digit year", "yesterday": "birth_date: is not a valid date",
        "1899-12-31": "birth_date: is before 1900-01-01", tomorrow.isoformat(): "birth_date: is in the future",
        "2021-02-29": "birth_date: is not a valid date",
    }
    rows = [_row(f"D{i}", dob=dob) for i, dob in enumerate(cases)]
    results = _import(tmp_path, run_import, etl, rows)
    for i, (dob, error) in enumerate(cases.items(), start=1):
        row = results[str(i)]
        if error is None:
            assert row["status"] == "Created", (dob, row)
        else:
            assert row["status"] == "Errored", (dob, row)
            assert f"error: {error}" in row["messages"], (dob, row)
            assert row["messages"].count("error: birth_date:") == 1, (dob, row)  # the precise message only
    stored = dict(query(etl.target(), "SELECT member_id, birth_date FROM member"))
    assert stored["D0"] == stored["D1"] == "1984-03-12"
    assert stored["D2"] == "1984-03-02" and stored["D3"] == "1984-03-12"


def test_sex_codes(tmp_path, run_import, etl):
    cases = {"M": "M", "male": "M", "FEMALE": "F", "f": "F", "O": "O", "Other": "O", "u": "U", "unknown": "U",
             "UNK": "U", "x": None, "femme": None}
    rows = [_row(f"S{i}", sex=value) for i, value in enumerate(cases)]
    results = _import(tmp_path, run_import, etl, rows)
    stored = dict(query(etl.target(), "SELECT member_id, sex FROM member"))
    for i, (value, expected) in enumerate(cases.items()):
        row = results[str(i + 1)]
        if expected is None:
            assert row["status"] == "Errored" and "error: sex: must be one of F, M, O, U" in row["messages"]
        else:
            assert stored[f"S{i}"] == expected, value


def test_required_fields_each_named(tmp_path, run_import, etl):
    rows = [_row("R1", first=""), _row("R2", last=""), _row("R3", dob=""), _row("R4", sex=""),
            _row("R5", first=" ", last="  ")]
    results = _import(tmp_path, run_import, etl, rows)
    assert "error: first_name: is required" in results["1"]["messages"]
    assert "error: last_name: is required" in results["2"]["messages"]
    assert "error: birth_date: is required" in results["3"]["messages"]
    assert "error: sex: is required" in results["4"]["messages"]
    assert "first_name: is required" in results["5"]["messages"]
    assert "last_name: is required" in results["5"]["messages"]
    assert all(r["status"] == "Errored" for r in results.values())


def test_addresses_states_and_zips(tmp_path, run_import, etl):
    rows = [
        _row("A1", line1="1 Main St", address="Boston,MA,02110"),
        _row("A2", line1="1 Main St", address="Boston,massachusetts,02110-1234"),
        _row("A3", line1="1 Main St", address="Boston,District of Columbia,021101234"),
        _row("A4", line1="1 Main St", address="Boston,MA,2110"),  # leading zero lost in a spreadsheet
        _row("A5", line1="1 Main St", address="San Juan,PR,907"),
        _row("A6", line1="1 Main St", address="Boston,XX,02110"),
        _row("A7", line1="1 Main St", address="Boston,MA,21"),
        _row("A8", line1="", address="Boston,MA,02110"),
        _row("A9", line1="1 Main St", address=",,"),
        _row("A10", line1="1 Main St", address="Boston,MA,0211O"),
    ]
    results = _import(tmp_path, run_import, etl, rows)
    for n in ("1", "2", "3", "4", "5"):
        assert results[n]["status"] == "Created", results[n]
    assert "warning: zip: left-padded with zeros to 5 digits" in results["4"]["messages"]
    assert "warning: zip: left-padded" in results["5"]["messages"]
    assert "error: state: is not a US state" in results["6"]["messages"]
    assert "error: zip: must be 5 digits or ZIP+4" in results["7"]["messages"]
    assert "error: address_line1: is missing; an address needs" in results["8"]["messages"]
    messages9 = results["9"]["messages"]
    assert all(f"error: {f}: is missing" in messages9 for f in ("city", "state", "zip"))
    assert "error: zip: must be 5 digits" in results["10"]["messages"]
    stored = {k: json.loads(v) for k, v in query(etl.target(), "SELECT member_id, addresses FROM member")}
    assert stored["A2"][0]["state"] == "MA" and stored["A2"][0]["zip"] == "02110-1234"
    assert stored["A3"][0]["state"] == "DC" and stored["A3"][0]["zip"] == "02110-1234"
    assert stored["A4"][0]["zip"] == "02110"
    assert stored["A5"][0]["zip"] == "00907"


def test_indexed_groups(tmp_path, run_import, etl):
    header = ("externalId,firstName,lastName,dob,gender,addressLine1-1,city-1,state-1,zip-1,"
              "addressLine1-2,city-2,state-2,zip-2,email-1,email-2,E-mail 10,phone-1,Phone 2")
    rows = [
        "G1,Ann,Lee,1980-01-01,F,1 A St,Boston,MA,02110,2 B St,Salem,MA,01970,A@X.org,b@y.org,c@z.org,"
        "617-555-0101,1 (978) 555 0102",
        "G2,Bob,Lee,1980-01-01,M,1 A St,Boston,MA,02110,,Salem,,,,,,,",
        "G3,Cy,Lee,1980-01-01,M,,,,,,,,,not-an-email,a@b.co,a..b@c.org,555-0101,",
    ]
    path = write_csv(tmp_path / "roster.csv", header, *rows)
    outcome = run_import(path, etl)
    results = {r["row_number"]: r for r in read_results(outcome)}
    assert results["1"]["status"] == "Created", results["1"]
    assert results["2"]["status"] == "Errored"
    assert "error: address_line1-2: is missing" in results["2"]["messages"]
    assert "error: zip-2: is missing" in results["2"]["messages"]
    assert "error: email-1: is not a valid e-mail address" in results["3"]["messages"]
    assert "error: email-10: is not a valid e-mail address" in results["3"]["messages"]
    assert "email-2" not in results["3"]["messages"]
    assert "error: phone-1: must have 10 digits" in results["3"]["messages"]
    (addresses, emails, phones), = query(etl.target(), "SELECT addresses, emails, phones FROM member")
    assert [a["city"] for a in json.loads(addresses)] == ["Boston", "Salem"]
    assert json.loads(emails) == ["a@x.org", "b@y.org", "c@z.org"]
    assert json.loads(phones) == ["6175550101", "9785550102"]


def test_ssn_is_masked_everywhere(tmp_path, run_import, etl):
    rows = [_row("N1", ssn="123-45-6789"), _row("N2", ssn="123456789"), _row("N3", ssn="12-345"),
            _row("N4", ssn="123-45-678X")]
    path = write_csv(tmp_path / "roster.csv", HEADER, *rows)
    outcome = run_import(path, etl)
    results = {r["row_number"]: r for r in read_results(outcome)}
    assert results["1"]["status"] == results["2"]["status"] == "Created"
    assert "error: ssn: must have 9 digits" in results["3"]["messages"]
    assert "error: ssn: must have 9 digits" in results["4"]["messages"]
    assert dict(query(etl.target(), "SELECT member_id, ssn FROM member")) == {"N1": "***-**-6789",
                                                                          "N2": "***-**-6789"}
    home_files = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and "results" in p.parts]
    for path in home_files:
        if path.suffix == ".xlsx":  # the errors workbook: its cells
            from openpyxl import load_workbook

            text = " ".join(str(c.value) for sheet in load_workbook(path) for row in sheet.iter_rows() for c in row)
        else:
            text = path.read_text()
        assert "123-45-6789" not in text and "123456789" not in text, path.name


def test_phones_and_emails(tmp_path, run_import, etl):
    header = "id,First Name,Last Name,dob,Sex,Email,Phone"
    rows = ["P1,A,B,1980-01-01,F,Ann.Lee+tag@Example.ORG,+1 (617) 555-0101",
            "P2,A,C,1980-01-01,F,ann@localhost,617.555.0101",
            "P3,A,D,1980-01-01,F,ann lee@x.org,617-555-010",
            "P4,A,E,1980-01-01,F,@x.org,2 617 555 0101",
            "P5,A,F,1980-01-01,F,a@x..org,617-555-01O1"]
    path = write_csv(tmp_path / "roster.csv", header, *rows)
    results = {r["row_number"]: r for r in read_results(run_import(path, etl))}
    assert results["1"]["status"] == "Created"
    (emails, phones), = query(etl.target(), "SELECT emails, phones FROM member WHERE member_id = 'P1'")
    assert json.loads(emails) == ["ann.lee+tag@example.org"] and json.loads(phones) == ["6175550101"]
    for n in ("2", "3", "4", "5"):
        assert "error: email: is not a valid e-mail address" in results[n]["messages"], results[n]
    for n in ("3", "4", "5"):
        assert "error: phone: must have 10 digits" in results[n]["messages"], results[n]


def test_in_file_duplicates_name_the_earlier_row(tmp_path, run_import, etl):
    header = "Patient ID,First Name,Last Name,Birthday,Gender"
    rows = ["K1,Ann,Lee,1980-01-01,F", "K2,Bob,Ray,1970-05-05,M", "K1,Ann,Lee,1980-01-01,F",
            ",Cy,Moe,1990-02-02,M", ",CY,moe,02/02/1990,male", ",Cy,Moe,1990-02-02,F"]
    path = write_csv(tmp_path / "roster.csv", header, *rows)
    results = {r["row_number"]: r for r in read_results(run_import(path, etl))}
    assert results["3"]["status"] == "Errored"
    assert "error: member_id: repeats row 1 (same member_id)" in results["3"]["messages"]
    assert results["5"]["status"] == "Errored"
    assert "repeats row 4 (same first_name, last_name, birth_date, sex and no member_id)" in results["5"]["messages"]
    assert results["6"]["status"] == "Created"  # another sex: another person


def test_match_without_external_id_updates_the_same_member(tmp_path, run_import, etl):
    header = "First Name,Last Name,DOB,Sex,City"
    first = write_csv(tmp_path / "a.csv", header, "José,Núñez,1961-07-04,M,")
    second = write_csv(tmp_path / "b.csv", header + ",Email", "JOSE,Nunez,07/04/1961,m,,jose@example.org")
    created = run_import(first, etl)
    assert created["counts"]["Created"] == 1
    updated = run_import(second, etl)
    assert updated["counts"]["Updated"] == 1, read_results(updated)
    assert query(etl.target(), "SELECT count(*) FROM member") == [(1,)]
    # The name is stored as the latest file spells it; the match itself ignores case and accents.
    assert read_results(updated)[0]["changed_fields"] == "first_name,last_name,emails[1]"


@pytest.mark.parametrize("header", [
    "first_name,last_name,birth_date,sex", "First Name,Last Name,Date of Birth,Gender",
    "firstName,lastName,birthdate,SEX", "Patient First Name,Patient Last Name,Birthday,sex",
    "FIRST-NAME,last.name,D.O.B,Gender ",
])
def test_header_spellings(tmp_path, run_import, etl, header):
    path = write_csv(tmp_path / "roster.csv", header, "Ann,Lee,1980-01-01,F")
    outcome = run_import(path, etl)
    assert outcome["counts"]["Created"] == 1, outcome


def test_unknown_columns_are_kept_and_reported_once(tmp_path, run_import, etl):
    header = "id,First Name,Last Name,dob,Sex,Favourite Colour,Notes"
    path = write_csv(tmp_path / "roster.csv", header, "U1,A,B,1980-01-01,F,teal,", "U2,C,D,1980-01-01,M,,x")
    results = read_results(run_import(path, etl))
    assert results[0]["messages"] == "warning: columns: not a known column; kept as extra data: Favourite Colour, Notes"
    assert results[1]["messages"] == ""
    extra = dict(query(etl.target(), "SELECT member_id, extra FROM member"))
    assert json.loads(extra["U1"]) == {"Favourite Colour": "teal", "Notes": None}
    assert json.loads(extra["U2"]) == {"Favourite Colour": None, "Notes": "x"}


def test_frames_cut_a_long_file_and_join_short_ones():
    """The row checks send GX each rule group's rows in frames of at most CHUNK_ROWS, each an interval
    of ids; a file's rows have consecutive ids, and the ids between two files belong to no row."""
    from patient_etl.quality.row_checks import frame_intervals

    assert frame_intervals([], 4) == []
    assert frame_intervals([(1, 4)], 4) == [(1, 4)]
    assert frame_intervals([(0, 9)], 4) == [(0, 3), (4, 7), (8, 9)]
    # Short files share an interval while their rows fit; the next file that does not starts one.
    assert frame_intervals([(1, 2), (10, 11), (20, 21)], 5) == [(1, 11), (20, 21)]
    # A long file's last piece takes the short file after it, not the one after that.
    file = 10_000_000_000
    assert frame_intervals([(1, 10), (file + 1, file + 2), (2 * file + 1, 2 * file + 3)], 4) == \
        [(1, 4), (5, 8), (9, file + 2), (2 * file + 1, 2 * file + 3)]


def test_every_file_of_a_batch_is_checked_in_its_frames(tmp_path, run_import, etl):
    """Over ONE_FRAME_ROWS rows, rules whose values are mostly distinct (e-mails, phones) are checked on
    the rows themselves, framed by id across the batch's files: an error at either end of each file,
    and in the middle, is found where it is."""
    from patient_etl.quality.row_checks import ONE_FRAME_ROWS

    per_file = ONE_FRAME_ROWS // 2 + 1_000
    header = "id,First Name,Last Name,dob,Sex,Email,Phone"
    bad = {("a.csv", 1): "email", ("a.csv", per_file): "phone", ("b.csv", 1): "phone",
           ("b.csv", per_file // 2): "email", ("b.csv", per_file): "email"}
    paths = []
    for name in ("a.csv", "b.csv"):
        rows = []
        for n in range(1, per_file + 1):
            email, phone = f"p{n}@{name[0]}.example.org", f"617{n:07d}"
            if bad.get((name, n)) == "email":
                email = f"p{n} at example.org"
            elif bad.get((name, n)) == "phone":
                phone = phone[:-3]
            rows.append(f"{name[0]}{n},Ann,Lee,1980-01-01,F,{email},{phone}")
        paths.append(write_csv(tmp_path / name, header, *rows))
    results = read_results(run_import(paths, etl))
    assert len(results) == 2 * per_file
    errored = {(r["file"], int(r["row_number"])): r["messages"] for r in results if r["status"] == "Errored"}
    assert errored.keys() == bad.keys()
    for where, field in bad.items():
        expected = "email: is not a valid e-mail address" if field == "email" else "phone: must have 10 digits"
        assert expected in errored[where], where
    assert sum(r["status"] == "Created" for r in results) == 2 * per_file - len(bad)
