"""A target deployed by an earlier release is brought up to the spec by the next import, losing nothing.

Targets live for years while the spec gains fields. The import that first meets an older target adds
what is missing (recorded in `schema_migration`) inside its publish transaction; it never drops or
retypes a column: a column of another type fails the batch with a reason naming it, and nothing changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patient_etl.target import open_target
from patient_etl_tests.conftest import query, read_results, write_csv

PREVIOUS_RELEASE = Path(__file__).parent / "data" / "previous_release" / "target.sql"
HEADER = "Patient ID,First Name,Last Name,DOB,Sex,Relationship"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_etl(request):
    return request.getfixturevalue("etl" if request.param == "sqlite" else "pg_etl")


def deploy_previous_release(url: str, ddl: str) -> None:
    """The older target, with rows an earlier batch published."""
    text = "\n".join(line for line in ddl.splitlines() if not line.lstrip().startswith("--"))
    target = open_target(url)
    try:
        with target.begin() as conn:
            for statement in filter(str.strip, text.split(";")):
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql(
                "INSERT INTO import_batch (batch_id, source, file_names, status, rows_total, created) "
                "VALUES ('old-batch', 'cli', '[\"roster.csv\"]', 'Finished', 2, 2)")
            for key, first, last in (("P1", "Ann", "Lee"), ("P7", "Gil", "Ode")):
                conn.exec_driver_sql(
                    "INSERT INTO member (member_id, first_name, last_name, birth_date, sex, created_batch_id, "
                    f"updated_batch_id) VALUES ('{key}', '{first}', '{last}', '1980-01-01', 'F', 'old-batch', "
                    "'old-batch')")
    finally:
        target.dispose()


def member_columns(url: str) -> set[str]:
    target = open_target(url)
    try:
        with target.connect() as conn:
            return set(target.catalog(conn)["member"].columns)
    finally:
        target.dispose()


def test_previous_release_target_is_migrated_by_the_next_import(tmp_path, run_import, any_etl):
    url = any_etl.target()
    deploy_previous_release(url, PREVIOUS_RELEASE.read_text())
    roster = write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F,self", "P2,Bo,Lee,2010-03-03,M,child")

    first = run_import(roster, any_etl)
    assert first["status"] == "Finished", first
    assert first["counts"] == {"Created": 1, "Updated": 1, "Unchanged": 0, "Errored": 0}
    assert {r["external_id"]: r["changed_fields"] for r in read_results(first)}["P1"] == "relationship"
    members = query(url, "SELECT member_id, first_name, relationship, created_batch_id FROM member ORDER BY 1")
    assert members == [("P1", "Ann", "self", "old-batch"), ("P2", "Bo", "child", first["batch_id"]),
                       ("P7", "Gil", None, "old-batch")]
    assert query(url, "SELECT status FROM import_batch WHERE batch_id = 'old-batch'") == [("Finished",)]
    applied = query(url, "SELECT description, statement FROM schema_migration ORDER BY id")
    assert [d for d, _ in applied] == [
        "create table schema_migration", "add column import_batch.run_id", "add column import_batch.status_at",
        "add column import_batch.held_reason", "add column import_batch.decided_by",
        "add column import_batch.decided_at", "add column import_batch.row_log_run_id", "create table import_run",
        "create index import_run_batch on import_run",
        "create table import_run_row", "add column member.relationship", "add column member.ssn_hash",
        # possible duplicates for review (the linkage stage), a table of its own
        "create table possible_duplicate", "create index possible_duplicate_pair on possible_duplicate",
        "create index possible_duplicate_status on possible_duplicate",
        # the latest row logs: once a table of their own, now a view of the history
        "copy import_row into import_run_row", "point import_batch.row_log_run_id at it",
        "drop table import_row (its rows are in import_run_row)", "create view import_row"]
    assert "ALTER TABLE member ADD COLUMN relationship TEXT" in dict(applied)["add column member.relationship"]

    again = run_import(roster, any_etl)  # the next run finds nothing to migrate
    assert again["counts"] == {"Created": 0, "Updated": 0, "Unchanged": 2, "Errored": 0}
    assert query(url, "SELECT count(*) FROM schema_migration") == [(len(applied),)]


def test_a_retyped_column_fails_the_batch_naming_it(tmp_path, run_import, any_etl):
    url = any_etl.target()
    deploy_previous_release(url, PREVIOUS_RELEASE.read_text().replace("birth_date DATE", "birth_date TEXT"))
    roster = write_csv(tmp_path / "roster.csv", HEADER, "P1,Ann,Lee,1980-01-01,F,self", "P2,Bo,Lee,2010-03-03,M,child")

    outcome = run_import(roster, any_etl)
    assert outcome["status"] == "Failed"
    assert "column member.birth_date is" in outcome["reason"] and "DATE in the spec" in outcome["reason"]
    assert read_results(outcome)[0]["messages"].startswith("error: target: the target's schema differs")
    # Nothing of the batch applied, not even the migration of the other missing column.
    assert query(url, "SELECT member_id FROM member ORDER BY 1") == [("P1",), ("P7",)]
    assert "relationship" not in member_columns(url)
    assert query(url, "SELECT status, reason FROM import_batch WHERE batch_id = :b", b=outcome["batch_id"]) == [
        ("Failed", outcome["reason"])]
