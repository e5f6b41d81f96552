"""Possible-duplicate patients: the same person sent by two systems under different IDs, or with a
typo, is flagged for review against the target and within the batch; different people are not.

Duplicate patient records are a patient-safety problem, and the deterministic match (external ID, else
exact name + birth date + sex) cannot see them. These tests run real Splink on DuckDB over member
tables shaped as normalization leaves them, with a target of deterministic synthetic members to train on.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
from pathlib import Path

import duckdb
import pytest

from patient_etl.linkage import (
    LinkageSettings,
    current_model,
    find_possible_duplicates,
    ssn_hash,
    synthetic,
    train_model,
)
from patient_etl.linkage.link import PAIR_COLUMNS

KEY = b"test-hash-key"
COLUMNS = ("member_id", "first_name", "last_name", "birth_date", "sex", "addresses", "emails", "phones",
           "ssn_hash", "match_key")


def member(member_id, first, last, born, sex="M", street="12 Harbor Rd", zip_="01930", phone="9785550123",
           email=None, ssn=None):
    """One member as normalization leaves it: groups as JSON lists, the SSN only as its keyed hash."""
    address = {"address_line1": street, "address_line2": None, "city": "Gloucester", "state": "MA", "zip": zip_}
    return (member_id, first, last, born, sex, json.dumps([address]),
            json.dumps([email]) if email else None, json.dumps([phone]) if phone else None,
            ssn_hash(ssn, KEY) if ssn else None, None)


def add_members(con, table: str, rows, batch: bool) -> None:
    cols = ", ".join(f"{c} VARCHAR" for c in COLUMNS).replace("birth_date VARCHAR", "birth_date DATE")
    if not con.sql(f"SELECT count(*) FROM information_schema.tables WHERE table_name = '{table}'").fetchall()[0][0]:
        con.execute(f"CREATE TABLE {table} ({'rid BIGINT, row_number BIGINT, ' if batch else ''}{cols})")
    first = con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    for i, row in enumerate(rows):
        values = ((first + i, first + i + 1) if batch else ()) + row
        con.execute(f"INSERT INTO {table} VALUES ({', '.join('?' for _ in values)})", list(values))


def synthetic_target(con) -> None:
    """A target of 3,000 synthetic members (some near-duplicates among them, as real targets have)."""
    synthetic.make_target_and_batch(con, 3000, 0)
    con.execute(f"CREATE TABLE target AS SELECT {', '.join(COLUMNS)} FROM synthetic_target")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A model trained once on the synthetic target, copied for each test that only links."""
    models = tmp_path_factory.mktemp("trained")
    con = duckdb.connect()
    synthetic_target(con)
    train_model(con, "target", models)
    con.close()
    return models


@pytest.fixture
def con():
    con = duckdb.connect()
    synthetic_target(con)
    yield con
    con.close()


@pytest.fixture
def models(trained, tmp_path) -> Path:
    path = tmp_path / "linkage"
    shutil.copytree(trained, path)
    return path


JOHN = member("A-1", "John", "Smith", "1980-04-12", email="john.smith@example.org", ssn="123-45-6789")
JON = member("B-7", "Jon", "Smith", "1980-04-12")
JONATHAN = member("B-8", "Jonathan", "Smyth", "1980-04-12", street="12 Harbour Road")
SPOUSE = member("B-9", "Mary", "Smith", "1982-09-30", sex="F", phone="9785550188")  # same household
STRANGER = member("B-10", "Aiko", "Ishikawa", "1991-01-05", sex="F", street="7 Pine Ave", zip_="02139",
                  phone="6175550142")


def pairs(con) -> set[tuple[str, str, str]]:
    return {tuple(r) for r in con.sql(
        "SELECT external_id, duplicate_in, duplicate_of FROM possible_duplicates").fetchall()}


def test_the_same_person_from_two_systems_is_flagged_within_the_batch(con, models):
    add_members(con, "batch", [JOHN, JON, JONATHAN, SPOUSE, STRANGER], batch=True)
    result = find_possible_duplicates(con, "batch", "target", models)
    assert pairs(con) == {("B-7", "batch", "A-1"), ("B-8", "batch", "A-1"), ("B-8", "batch", "B-7")}
    assert (result.within_batch, result.against_target) == (3, 0)
    row = con.sql("SELECT row_number, duplicate_of_row, match_probability, strength, agreed_fields "
                  "FROM possible_duplicates WHERE external_id = 'B-7'").fetchall()[0]
    assert row[:2] == (2, 1)  # row 2 looks like row 1
    assert row[2] >= LinkageSettings().possible
    assert {"last_name", "birth_date", "sex", "phone"} <= set(row[4].split(","))


def test_the_same_person_is_flagged_against_the_target(con, models):
    add_members(con, "target", [JOHN], batch=False)
    add_members(con, "batch", [JON, JONATHAN, SPOUSE, STRANGER], batch=True)
    result = find_possible_duplicates(con, "batch", "target", models)
    assert pairs(con) == {("B-7", "target", "A-1"), ("B-8", "target", "A-1"), ("B-8", "batch", "B-7")}
    assert result.against_target == 2 and result.target_members == 3001


def test_an_update_of_a_member_is_not_a_duplicate_of_itself(con, models):
    """The batch row with the target member's ID is that member (Updated), not a possible duplicate."""
    add_members(con, "target", [JOHN], batch=False)
    add_members(con, "batch", [member("A-1", "John", "Smith", "1980-04-12", phone="9785550999")], batch=True)
    assert find_possible_duplicates(con, "batch", "target", models).pairs == 0


def test_a_pair_marked_different_people_is_not_flagged_again(con, models):
    add_members(con, "target", [JOHN], batch=False)
    add_members(con, "batch", [JON], batch=True)
    con.execute("CREATE TABLE decided_different AS SELECT 'A-1' AS member_id_a, 'B-7' AS member_id_b")
    assert find_possible_duplicates(con, "batch", "target", models).pairs == 1
    result = find_possible_duplicates(con, "batch", "target", models,
                                      known_different="decided_different")
    assert result.pairs == 0


def test_a_blocking_rule_past_the_pair_limit_is_skipped_and_named(con, models):
    """300 different patients named Pat Doe make 44,850 first+last name pairs: past the limit that rule
    is skipped (a 1M roster of few names would make 10^9), and the other rules still find Jon."""
    does = [member(f"D-{i}", "Pat", "Doe", f"19{50 + i % 50}-0{1 + i % 9}-1{i % 10}", street=f"{i} Elm St",
                   zip_=f"{10000 + i:05d}", phone=f"617555{i:04d}") for i in range(300)]
    add_members(con, "target", [JOHN], batch=False)
    add_members(con, "batch", [JON, *does], batch=True)
    limited = find_possible_duplicates(con, "batch", "target", models, LinkageSettings(max_pairs=20_000))
    assert set(limited.skipped_rules) == {"first_name+last_name"}
    assert limited.skipped_rules["first_name+last_name"] >= 300 * 299 // 2
    assert limited.candidate_pairs <= 20_000
    assert ("B-7", "target", "A-1") in pairs(con)
    unlimited = find_possible_duplicates(con, "batch", "target", models)
    assert unlimited.skipped_rules == {} and unlimited.candidate_pairs > limited.candidate_pairs


def test_the_model_is_trained_once_saved_and_reused(con, tmp_path):
    models = tmp_path / "linkage"
    add_members(con, "target", [JOHN], batch=False)
    add_members(con, "batch", [JON, STRANGER], batch=True)
    first = find_possible_duplicates(con, "batch", "target", models)
    assert first.trained and first.model_version == 1
    saved = models / "model-v1.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    doc = json.loads(saved.read_text())
    assert doc["trained_on"] == {"target": 3001, "batch": 2}
    # a model of parameters, never of people: no names, dates or hashes from the data
    assert not any(v in saved.read_text().lower() for v in ("smith", "1980-04-12", ssn_hash("123456789", KEY)))

    again = find_possible_duplicates(con, "batch", "target", models)
    assert not again.trained and again.model_version == 1
    assert pairs(con) == {("B-7", "target", "A-1")}

    retrained = train_model(con, "target", models)  # what `patient-etl linkage train` runs
    assert retrained.version == 2 and retrained.trained_on == {"target": 3001, "batch": 0}
    assert current_model(models).version == 2
    assert find_possible_duplicates(con, "batch", "target", models).model_version == 2


def test_a_first_small_batch_uses_the_cold_start_model_and_saves_none(tmp_path):
    """Too few members to learn from: the shipped model links them, and the first run with enough
    members trains the real one."""
    con = duckdb.connect()
    add_members(con, "target", [], batch=False)
    add_members(con, "batch", [JOHN, JON, JONATHAN, SPOUSE, STRANGER], batch=True)
    models = tmp_path / "linkage"
    result = find_possible_duplicates(con, "batch", "target", models)
    assert (result.model_version, result.trained) == (0, False)
    assert pairs(con) == {("B-7", "batch", "A-1"), ("B-8", "batch", "A-1"), ("B-8", "batch", "B-7")}
    assert current_model(models) is None
    with pytest.raises(ValueError, match="too few members"):
        train_model(con, "target", models, batch="batch")


def test_ssn_takes_part_only_as_a_keyed_hash():
    assert ssn_hash("123-45-6789", KEY) == ssn_hash("123456789", KEY)
    assert ssn_hash("123456789", KEY) != ssn_hash("123456789", b"another key")
    assert "123456789" not in ssn_hash("123456789", KEY)
    assert ssn_hash("12345", KEY) is None


def test_an_empty_batch_links_to_nothing(con, models):
    add_members(con, "batch", [], batch=True)
    result = find_possible_duplicates(con, "batch", "target", models)
    assert (result.pairs, result.batch_members) == (0, 0)
    described = con.sql("DESCRIBE possible_duplicates").fetchall()
    assert {name: kind for name, kind, *_ in described} == PAIR_COLUMNS  # the contract, even when empty
    assert con.sql("SELECT count(*) FROM possible_duplicates").fetchall()[0][0] == 0


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="pair limit"):
        LinkageSettings(max_pairs=0)
    with pytest.raises(ValueError):
        LinkageSettings(possible=0.99, likely=0.9)
    with pytest.raises(ValueError):
        LinkageSettings(engine="oracle")




def test_no_phi_reaches_the_logs(con, models, caplog):
    """Linkage logs counts and model versions only, whatever Splink says at debug level."""
    add_members(con, "target", [JOHN], batch=False)
    add_members(con, "batch", [JON, JONATHAN, STRANGER], batch=True)
    with caplog.at_level(logging.DEBUG):
        assert find_possible_duplicates(con, "batch", "target", models).pairs == 3
    logged = caplog.text.lower()
    assert "linkage: 3 pairs" in logged and "splink" in logged  # ours and Splink's debug lines were captured
    for phi in ("john", "smith", "smyth", "ishikawa", "1980-04-12", "9785550123", "harbor",
                ssn_hash("123-45-6789", KEY)):
        assert phi not in logged, phi
