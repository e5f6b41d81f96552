"""The target interface, the same tests against PostgreSQL and the embedded SQLite.

Publish, review and duplicate detection rely on these operations meaning the same thing on both
databases: a row's outcome, an empty cell never erasing a value, one publish at a time, bulk moves
whose temporary files (row values) stay in the batch's folder (PostgreSQL's loads use none: they are piped),
and a schema brought up to the spec without ever dropping or retyping a column.
"""

from __future__ import annotations

import datetime as dt
import decimal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from patient_etl.entities import ENTITIES
from patient_etl.target import TargetSchemaError, open_target
from patient_etl.target.postgres import PostgresTarget
from patient_etl.target.schema import IMPORT_RUN_ROW, MIGRATION_TABLE, stored_columns
from patient_etl.target.sqlite import SqliteTarget

PROVIDER = ENTITIES["provider"]
PREVIOUS_RELEASE = Path(__file__).parent / "data" / "previous_release" / "target.sql"


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'target.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "batch"
    folder.mkdir()
    return folder


@pytest.fixture
def target(target_url: str, work_dir: Path):
    opened = open_target(target_url, work_dir=work_dir)
    yield opened
    opened.dispose()


def run_script(target, sql: str) -> None:
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    with target.begin() as conn:
        for statement in text.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)


def migrations(target) -> list[str]:
    with target.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql(f"SELECT description FROM {MIGRATION_TABLE} ORDER BY id")]


def test_every_logical_type_of_the_spec_maps_on_both_targets():
    logical = {t for e in ENTITIES.values() for _, t in stored_columns(e)}
    assert logical == {"text", "date", "decimal(14,2)"}
    assert logical <= set(PostgresTarget.TYPES) and logical <= set(SqliteTarget.TYPES)


def test_a_new_target_is_created_by_migration_recorded_once(target, target_url):
    with target.begin() as conn:
        target.serialize_publishes(conn)
        applied = target.migrate(conn, list(ENTITIES.values()))
    described = [m.description for m in applied]
    assert described[:3] == ["create table schema_migration", "create table import_batch", "create table import_run"]
    assert "create index member_match_key on member" in described and "create table eop" in described
    assert described[-1] == "create view import_row"
    assert migrations(target) == described
    with target.connect() as conn:
        versions = {r[0] for r in conn.exec_driver_sql(f"SELECT spec_version FROM {MIGRATION_TABLE}")}
        assert set(target.catalog(conn)) >= {"member", "claim", "import_run_row", MIGRATION_TABLE}
        assert "import_row" not in target.catalog(conn) and target.views(conn) == {"import_row"}
    assert len(versions) == 1

    again = open_target(target_url)  # the next run: nothing to do, nothing recorded
    try:
        with again.begin() as conn:
            assert again.migrate(conn, list(ENTITIES.values())) == []
    finally:
        again.dispose()
    assert migrations(target) == described


def test_a_previous_release_target_gains_the_missing_column_and_keeps_its_rows(target):
    run_script(target, PREVIOUS_RELEASE.read_text().replace(
        "CREATE INDEX IF NOT EXISTS member_match_key ON member (match_key);", ""))
    with target.begin() as conn:
        conn.exec_driver_sql("INSERT INTO member (member_id, first_name) VALUES ('M1', 'Ann')")
    with target.begin() as conn:
        applied = [m.description for m in target.migrate(conn, list(ENTITIES.values()))]
    assert applied == ["create table schema_migration", "add column import_batch.run_id",
                       "add column import_batch.status_at",
        "add column import_batch.held_reason", "add column import_batch.decided_by",
        "add column import_batch.decided_at", "add column import_batch.row_log_run_id", "create table import_run",
                       "create index import_run_batch on import_run", "create table import_run_row",
                       "add column member.relationship", "add column member.ssn_hash",
                       "create index member_match_key on member", "create table possible_duplicate",
                       "create index possible_duplicate_pair on possible_duplicate",
                       "create index possible_duplicate_status on possible_duplicate", *ROW_LOG_INTO_HISTORY]
    with target.connect() as conn:
        assert conn.exec_driver_sql("SELECT member_id, first_name, relationship FROM member").all() == [
            ("M1", "Ann", None)]
        assert "member_match_key" in target.catalog(conn)["member"].indexes


ROW_LOG_INTO_HISTORY = ["copy import_row into import_run_row", "point import_batch.row_log_run_id at it",
                        "drop table import_row (its rows are in import_run_row)", "create view import_row"]


def test_an_earlier_row_log_table_becomes_the_view_losing_no_row(target):
    # Releases before the view kept each batch's latest row log in a table of its own: the oldest
    # without a run (`old`), later ones with the run, whose rows the history holds too (`b1`, at its
    # second run r1). Every row stays readable, in the history and through the view, and none twice.
    run_script(target, PREVIOUS_RELEASE.read_text())
    history = (target.create_table_statement(IMPORT_RUN_ROW)
               .replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE"))
    row = "INSERT INTO {t} (batch_id, file_index, row_number, entity, status{c}) VALUES ('{b}', 0, {n}, 'member', '{s}'{v})"
    with target.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE import_row ADD COLUMN run_id TEXT")
        conn.exec_driver_sql(history)
        for batch in ("old", "b1", "held"):
            conn.exec_driver_sql("INSERT INTO import_batch (batch_id, source, file_names, status) "
                                 f"VALUES ('{batch}', 'cli', '[]', 'Finished')")
        for n in (2, 3):
            conn.exec_driver_sql(row.format(t="import_row", c="", b="old", n=n, s="Created", v=""))
            conn.exec_driver_sql(row.format(t="import_row", c=", run_id", b="b1", n=n, s="Unchanged", v=", 'r1'"))
            for run, status in (("r0", "Created"), ("r1", "Unchanged")):
                conn.exec_driver_sql(row.format(t="import_run_row", c=", run_id", b="b1", n=n, s=status,
                                                v=f", '{run}'"))
    with target.begin() as conn:
        applied = [m.description for m in target.migrate(conn, list(ENTITIES.values()))]
    assert applied[-4:] == ROW_LOG_INTO_HISTORY
    with target.connect() as conn:
        assert conn.exec_driver_sql(
            "SELECT batch_id, row_number, status, run_id FROM import_row ORDER BY 1, 2").all() == [
            ("b1", 2, "Unchanged", "r1"), ("b1", 3, "Unchanged", "r1"),
            ("old", 2, "Created", "import_row:old"), ("old", 3, "Created", "import_row:old")]
        assert conn.exec_driver_sql(
            "SELECT run_id, count(*) FROM import_run_row GROUP BY run_id ORDER BY 1").all() == [
            ("import_row:old", 2), ("r0", 2), ("r1", 2)]
        assert conn.exec_driver_sql(
            "SELECT batch_id, row_log_run_id FROM import_batch ORDER BY 1").all() == [
            ("b1", "r1"), ("held", None), ("old", "import_row:old")]
        assert "import_row" not in target.catalog(conn) and target.views(conn) == {"import_row"}


def test_a_retyped_column_fails_naming_it_and_nothing_is_applied(target):
    run_script(target, PREVIOUS_RELEASE.read_text().replace("billed_amount NUMERIC(14,2)", "billed_amount TEXT"))
    with target.connect() as conn:
        conn.begin()
        with pytest.raises(TargetSchemaError) as caught:
            target.migrate(conn, list(ENTITIES.values()))
        conn.rollback()
    assert caught.value.code == "target_schema_differs"
    assert "claim.billed_amount" in caught.value.reason and "NUMERIC(14,2)" in caught.value.reason
    with target.connect() as conn:
        catalog = target.catalog(conn)
    assert MIGRATION_TABLE not in catalog and "relationship" not in catalog["member"].columns


def test_rolled_back_transaction_leaves_no_trace(target):
    with target.connect() as conn:
        transaction = conn.begin()
        target.serialize_publishes(conn)
        target.migrate(conn, list(ENTITIES.values()))
        transaction.rollback()
    with target.connect() as conn:
        assert target.catalog(conn) == {}


AWKWARD = [(1, "plain", dt.date(1980, 1, 1), decimal.Decimal("12.50")),
           (2, 'a "quoted", comma\nand newline', None, decimal.Decimal("-0.01")),
           (3, None, dt.date(2024, 2, 29), None),
           (4, "Zoë ✓", dt.date(1900, 1, 1), decimal.Decimal("999999999999.99"))]


def test_load_and_fetch_round_trip_with_files_only_in_the_batch_folder(target, work_dir):
    duck = duckdb.connect()
    duck.execute("CREATE TABLE rows (rid BIGINT, note VARCHAR, day DATE, amount DECIMAL(14,2))")
    duck.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", AWKWARD)
    with target.connect() as conn:
        conn.begin()
        target.temp_table(conn, "moved", {"rid": "bigint", "note": "text", "day": "date", "amount": "decimal(14,2)"},
                          primary_key="rid")
        target.load(conn, duck, "SELECT * FROM rows", "moved", ["rid", "note", "day", "amount"])
        target.fetch(conn, duck, "SELECT rid, note, day, amount FROM moved", "back",
                     {"rid": "BIGINT", "note": "VARCHAR", "day": "DATE", "amount": "DECIMAL(14,2)"})
        assert duck.execute("SELECT * FROM back ORDER BY rid").fetchall() == AWKWARD
        with pytest.raises(Exception, match="no_such_table"):  # a failed move removes its file too
            target.load(conn, duck, "SELECT rid FROM rows", "no_such_table", ["rid"])
        conn.rollback()
    assert list(work_dir.iterdir()) == []


def test_a_load_puts_its_constants_on_every_row(target, work_dir):
    duck = duckdb.connect()
    duck.execute("CREATE TABLE rows (rid BIGINT, note VARCHAR)")
    duck.executemany("INSERT INTO rows VALUES (?, ?)", [(1, "a"), (2, None), (3, "O'Brien")])
    with target.connect() as conn:
        conn.begin()
        target.temp_table(conn, "moved", {"run": "text", "rid": "bigint", "batch": "text", "note": "text"})
        target.load(conn, duck, "SELECT rid, note FROM rows", "moved", ["rid", "note"],
                    constants={"batch": "b-1; DROP TABLE moved --", "run": "it's"})
        moved = conn.exec_driver_sql("SELECT rid, note, batch, run FROM moved ORDER BY rid").all()
        conn.rollback()
    assert [tuple(r) for r in moved] == [(1, "a", "b-1; DROP TABLE moved --", "it's"),
                                         (2, None, "b-1; DROP TABLE moved --", "it's"),
                                         (3, "O'Brien", "b-1; DROP TABLE moved --", "it's")]


@pytest.fixture
def pg_target(pg_url: str, work_dir: Path):
    opened = open_target(pg_url, work_dir=work_dir)
    yield opened
    opened.dispose()


def _pipe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "duckdb-csv"]


def test_a_piped_load_keeps_empty_text_apart_from_null_and_writes_no_file(pg_url, tmp_path):
    duck = duckdb.connect()
    duck.execute("CREATE TEMP TABLE rows AS SELECT i AS rid, CASE i % 3 WHEN 0 THEN '' WHEN 1 THEN NULL "
                 "ELSE 'x,\"y\"' || chr(10) || 'z' END AS note FROM range(300000) r(i)")
    # A batch folder that does not exist: no file can hold the rows on their way (the move needs none).
    target = open_target(pg_url, work_dir=tmp_path / "absent")
    try:
        with target.connect() as conn:
            conn.begin()
            target.temp_table(conn, "moved", {"rid": "bigint", "note": "text"})
            target.load(conn, duck, "SELECT rid, note FROM rows ORDER BY rid", "moved", ["rid", "note"])
            counts = conn.exec_driver_sql(
                "SELECT count(*) FILTER (WHERE note = ''), count(*) FILTER (WHERE note IS NULL), "
                "count(*) FILTER (WHERE note = E'x,\"y\"\\nz'), count(DISTINCT rid) FROM moved").one()
            conn.rollback()
    finally:
        target.dispose()
    assert tuple(counts) == (100000, 100000, 100000, 300000)
    assert _pipe_threads() == []


def test_a_piped_load_whose_query_fails_half_way_fails_whole(pg_target):
    duck = duckdb.connect()
    # DuckDB writes rows, then its query fails: PostgreSQL must not keep the rows it was sent.
    failing = ("SELECT i AS rid FROM range(400000) r(i) "
               "WHERE CASE WHEN i < 300000 THEN true ELSE error('stopped at row ' || i) END")
    with pg_target.connect() as conn:
        conn.begin()
        pg_target.temp_table(conn, "moved", {"rid": "bigint"})
        conn.commit()
        conn.begin()
        with pytest.raises(duckdb.Error, match="stopped at row"):
            pg_target.load(conn, duck, failing, "moved", ["rid"])
        conn.rollback()
        assert conn.exec_driver_sql("SELECT count(*) FROM moved").scalar() == 0
    assert _pipe_threads() == []
    assert duck.execute("SELECT 42").fetchall() == [(42,)]  # the DuckDB connection is free again


def test_a_piped_load_that_postgresql_refuses_stops_duckdb(pg_target):
    duck = duckdb.connect()
    # Row 250,001 is not a number: PostgreSQL ends the COPY while DuckDB still has rows to write.
    rows = "SELECT CASE WHEN i = 250000 THEN 'x' ELSE i::VARCHAR END AS rid FROM range(2000000) r(i)"
    raised: list[BaseException] = []

    def load() -> None:
        with pg_target.connect() as conn:
            conn.begin()
            pg_target.temp_table(conn, "moved", {"rid": "bigint"})
            try:
                pg_target.load(conn, duck, rows, "moved", ["rid"])
            except Exception as exc:  # noqa: BLE001 - asserted below
                raised.append(exc)
            conn.rollback()

    loader = threading.Thread(target=load)
    loader.start()
    loader.join(timeout=120)  # a liveness guard, not a timing: a writer left waiting would hang here
    assert not loader.is_alive(), "the load never returned: DuckDB kept writing into a pipe nobody read"
    assert len(raised) == 1 and "invalid input syntax for type bigint" in str(raised[0])
    assert _pipe_threads() == []  # DuckDB's COPY ended when the pipe closed
    assert duck.execute("SELECT count(*) FROM range(10)").fetchall() == [(10,)]


def test_a_fetch_keeps_empty_text_apart_from_null_and_fails_whole(pg_target, work_dir):
    duck = duckdb.connect()
    with pg_target.connect() as conn:
        conn.begin()
        pg_target.fetch(conn, duck, "SELECT i, CASE i % 3 WHEN 0 THEN '' WHEN 1 THEN NULL ELSE 'a,\"b\"' END "
                                    "FROM generate_series(1, 300000) i", "back", {"i": "BIGINT", "note": "VARCHAR"})
        assert duck.execute("SELECT count(*), count(*) FILTER (note = ''), count(*) FILTER (note IS NULL), "
                            "count(*) FILTER (note = 'a,\"b\"') FROM back").fetchall() == [
                                (300000, 100000, 100000, 100000)]
        # PostgreSQL fails after 200,000 rows: the fetch fails, and leaves no table and no file.
        with pytest.raises(Exception, match="division by zero"):
            pg_target.fetch(conn, duck, "SELECT CASE WHEN i <= 200000 THEN i ELSE i / (i - i) END "
                                        "FROM generate_series(1, 400000) i", "half", {"i": "BIGINT"})
        conn.rollback()
    assert duck.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'half'").fetchall() == [(0,)]
    assert list(work_dir.iterdir()) == []


def test_bulk_moves_without_a_batch_folder_are_refused(target_url):
    bare = open_target(target_url)
    try:
        with bare.connect() as conn, pytest.raises(ValueError, match="batch's folder"):
            bare.fetch(conn, duckdb.connect(), "SELECT 1", "x", {"one": "INTEGER"})
    finally:
        bare.dispose()


def provider_rows(duck: duckdb.DuckDBPyConnection, *rows: tuple) -> None:
    cols = [c for c, _ in stored_columns(PROVIDER)]
    duck.execute(f"CREATE OR REPLACE TABLE provider (rid BIGINT, {', '.join(c + ' VARCHAR' for c in cols)})")
    for rid, (key, name, phone) in enumerate(rows, start=1):
        duck.execute(f"INSERT INTO provider (rid, {', '.join(cols[:2])}, phone) VALUES (?, ?, ?, ?)",
                     [rid, key, name, phone])


def apply(target, duck, batch_id: str, write: bool = True) -> dict[int, tuple]:
    with target.begin() as conn:
        target.serialize_publishes(conn)
        target.migrate(conn, list(ENTITIES.values()))
        decided = target.decide_entity(conn, duck, PROVIDER)
        if write:
            target.write_entity(conn, PROVIDER, decided, batch_id, "2026-11-22T08:00:00+00:00")
    return {r[0]: r[1:] for r in duck.execute(
        "SELECT rid, key, status, changed_fields, first_rid FROM outcome_provider").fetchall()}


def test_upsert_outcomes_and_an_empty_cell_never_erases(target):
    duck = duckdb.connect()
    provider_rows(duck, ("P1", "Harbor", "6175550101"), ("P2", "Bay", None))
    assert {k: v[1] for k, v in apply(target, duck, "b1").items()} == {1: "Created", 2: "Created"}

    provider_rows(duck, ("P1", "Harbor", None), ("P2", "Bay Clinic", "5085550102"), ("P2", "Other", None))
    dry = apply(target, duck, "b2", write=False)
    outcome = apply(target, duck, "b2")
    assert dry == outcome
    assert outcome[1][1] == "Unchanged" and not outcome[1][2]
    assert outcome[2][1] == "Updated" and set(outcome[2][2].strip(",").split(",")) == {"provider_name", "phone"}
    assert outcome[3][1] == "Conflict" and outcome[3][3] == 2
    with target.connect() as conn:
        stored = conn.exec_driver_sql("SELECT provider_id, provider_name, phone, created_batch_id, updated_batch_id "
                                      "FROM provider ORDER BY 1").all()
    assert stored == [("P1", "Harbor", "6175550101", "b1", "b1"), ("P2", "Bay Clinic", "5085550102", "b1", "b2")]


def test_publishes_are_serialized(target):
    with target.begin() as conn:
        target.migrate(conn, [])
    acquired: list[float] = []

    def second_publish() -> None:
        with target.begin() as conn:
            target.serialize_publishes(conn)
            acquired.append(time.monotonic())

    with target.connect() as conn:
        transaction = conn.begin()
        target.serialize_publishes(conn)
        thread = threading.Thread(target=second_publish)
        thread.start()
        time.sleep(0.5)
        released = time.monotonic()
        transaction.commit()
    thread.join(timeout=60)
    assert acquired and acquired[0] >= released


def test_loading_the_code_location_does_not_open_the_target_implementations():
    # The schema's declarations (no database library) may load; the implementations and drivers not.
    code = ("import sys, patient_etl.definitions; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg' or "
            "(m.startswith('patient_etl.target.') and m != 'patient_etl.target.schema')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "[]"
