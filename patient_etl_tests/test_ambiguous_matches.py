"""Ambiguous matches: a wrong-patient update is the worst outcome an importer can have.

A row without an external ID is matched on name, birth date and sex. When that match key finds two
or more stored members, the row is Errored naming the candidates and applied to none of them. A row
whose external ID finds one member while its name, birth date and sex match another member exactly
is applied to the member its ID names, with a warning naming the other one.
"""

from __future__ import annotations

import pytest

from patient_etl_tests.conftest import query, read_results


def _excel_csv(path, lines):
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
def test_a_keyless_row_matching_two_members_is_errored_naming_both(tmp_path, run_import, target, request):
    etl = request.getfixturevalue(target)
    header = "MRN,First Name,Last Name,Date of Birth,Gender,Email,,"
    twins = _excel_csv(tmp_path / "roster.csv", [header, "T1,Ann,Lee,1980-01-02,F,t1@example.org,,",
                                                 "T2,Ann,Lee,1980-01-02,F,,,", "T3,Bob,Ray,1970-01-01,M,,,"])
    assert run_import(twins, etl)["counts"]["Created"] == 3
    update = _excel_csv(tmp_path / "update.csv", [header, ",ANN,Lée,01/02/1980,female,new@example.org,,",
                                                  ",Bob,Ray,1970-01-01,M,bob@example.org,,"])
    results = read_results(run_import(update, etl))
    assert results[0]["status"] == "Errored", results
    assert "match 2 stored records (member_id T1, T2)" in results[0]["messages"]
    assert results[1]["status"] == "Updated" and results[1]["external_id"] == "T3"
    # Neither candidate was touched.
    assert dict(query(etl.target(), "SELECT member_id, emails FROM member WHERE member_id IN ('T1', 'T2')")) \
        == {"T1": '["t1@example.org"]', "T2": None}
    logged = query(etl.target(), "SELECT status, messages FROM import_row WHERE row_number = 1 "
                                 "AND batch_id = (SELECT max(batch_id) FROM import_row WHERE status = 'Errored')")
    assert logged and logged[0][0] == "Errored"


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
def test_an_id_that_finds_one_member_while_the_name_matches_another_warns(tmp_path, run_import, target, request):
    etl = request.getfixturevalue(target)
    header = "Patient ID,First Name,Last Name,DOB,Sex,Email"
    first = _excel_csv(tmp_path / "roster.csv", [header, "W1,Ann,Lee,1980-01-02,F,", "W2,Ann,Lee,1980-01-02,F,"])
    assert run_import(first, etl)["counts"]["Created"] == 2
    second = _excel_csv(tmp_path / "again.csv", [header, "W1,Ann,Lee,1980-01-02,F,ann@example.org",
                                                 "W3,Cy,Moe,1990-01-01,M,"])
    results = {r["external_id"]: r for r in read_results(run_import(second, etl))}
    assert results["W1"]["status"] == "Updated"
    assert "warning: member_id: the name, birth date and sex also match the stored record with member_id W2" \
        in results["W1"]["messages"]
    assert results["W3"]["status"] == "Created" and not results["W3"]["messages"]
    assert query(etl.target(), "SELECT emails FROM member WHERE member_id = 'W2'") == [(None,)]


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
@pytest.mark.parametrize("keyless_first", [True, False], ids=["keyless first", "named first"])
def test_a_keyless_row_and_a_row_naming_the_member_it_matches_are_one_record(tmp_path, run_import, target,
                                                                              keyless_first, request):
    """The keyless row's key is found in the target (its match key), after the batch's own keys were
    compared with each other: the two rows still resolve to one record, the later a Conflict."""
    etl = request.getfixturevalue(target)
    header = "Patient ID,First Name,Last Name,DOB,Sex,Email"
    assert run_import(_excel_csv(tmp_path / "roster.csv", [header, "K1,Ann,Lee,1980-01-02,F,"]),
                      etl)["counts"]["Created"] == 1
    rows = [",Ann,Lee,1980-01-02,F,keyless@example.org", "K1,Ann,Lee,1980-01-02,F,named@example.org"]
    if not keyless_first:
        rows.reverse()
    results = read_results(run_import(_excel_csv(tmp_path / "again.csv", [header, *rows]), etl))
    assert [(r["external_id"], r["status"]) for r in results] == [("K1", "Updated"), ("K1", "Errored")], results
    assert f"the same record as row {results[0]['row_number']} of this batch" in results[1]["messages"]
    first_email = rows[0].rsplit(",", 1)[1]
    assert query(etl.target(), "SELECT emails FROM member WHERE member_id = 'K1'") == [(f'["{first_email}"]',)]
