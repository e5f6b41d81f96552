"""The target database: schema, set-based loads, and the one-transaction publish of a batch.

PostgreSQL (production) takes bulk loads with COPY; the embedded SQLite default takes executemany.
Either way a batch is loaded into a temporary table and applied with one upsert statement per
entity, inside a single transaction with the row log and the batch log: a publish that dies half-way
leaves the target as it was, and a retry applies it whole.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import sqlalchemy as sa

from patient_etl.entities.normalize import stored_columns
from patient_etl.entities.spec import Entity

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
KILL_BEFORE_COMMIT = "PATIENT_ETL_FAULT_KILL_BEFORE_COMMIT"  # fault-injection point for the atomicity test
_FETCH_ROWS = 50_000


def read_sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def normalize_url(url: str) -> str:
    """A plain `postgresql://` URL uses psycopg 3 (its COPY API does the bulk loads)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def safe_url(url: str) -> str:
    """The URL without its password, for logs and metadata."""
    return sa.make_url(normalize_url(url)).render_as_string(hide_password=True)


@dataclass
class EntityOutcome:
    entity: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    conflicts: int = 0


class Target:
    def __init__(self, url: str):
        self.url = normalize_url(url)
        kwargs = {"connect_args": {"timeout": 300}} if self.url.startswith("sqlite") else {}
        self.engine = sa.create_engine(self.url, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            # pysqlite opens transactions lazily, after our reads: take the write lock up front instead.
            sa.event.listen(self.engine, "connect", _sqlite_autocommit_driver)
            sa.event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))

    def serialize_publishes(self, conn: sa.Connection) -> None:
        """One publish at a time per target: outcomes are decided against a target no one else is
        changing. SQLite's BEGIN IMMEDIATE already holds its write lock."""
        if self.dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('patient_etl.publish'))")

    def dispose(self) -> None:
        self.engine.dispose()

    def create_schema(self, conn: sa.Connection, entities: list[Entity]) -> None:
        """The DDL files in sql/ (generated from the spec; a test keeps them in step)."""
        files = ["create_import_log.sql", *(f"create_{e.name}.sql" for e in entities)]
        text = "\n".join(line for name in files for line in read_sql(name).splitlines()
                         if not line.lstrip().startswith("--"))
        statements = text.split(";")
        for statement in statements:
            if statement.strip():
                conn.exec_driver_sql(statement)

    # -- moving rows between DuckDB and the target, set-based ---------------------------------------

    def load(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, query: str, table: str,
             columns: list[str]) -> None:
        """Bulk-load the rows of a DuckDB query into a target table."""
        if self.dialect == "postgresql":
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "rows.csv"
                duck.execute(f"COPY ({query}) TO '{path}' (FORMAT csv, HEADER false)")
                cursor = conn.connection.driver_connection.cursor()
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy, \
                        path.open("rb") as handle:
                    while block := handle.read(1 << 20):
                        copy.write(block)
            return
        as_text = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in columns)
        result = duck.execute(f"SELECT {as_text} FROM ({query})")
        insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        while rows := result.fetchmany(_FETCH_ROWS):
            conn.exec_driver_sql(insert, rows)

    def fetch(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, query: str, into: str,
              columns: dict[str, str]) -> None:
        """Copy the rows of a target query into a new DuckDB table `into` with the given column types."""
        spec = "{" + ", ".join(f"'{c}': '{t}'" for c, t in columns.items()) + "}"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rows.csv"
            if self.dialect == "postgresql":
                cursor = conn.connection.driver_connection.cursor()
                with cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT csv)") as copy, path.open("wb") as handle:
                    for block in copy:
                        handle.write(block)
            else:
                result = conn.exec_driver_sql(query)
                with path.open("w", newline="") as handle:
                    writer = csv.writer(handle)
                    while rows := result.fetchmany(_FETCH_ROWS):
                        writer.writerows(rows)
            duck.execute(f"CREATE OR REPLACE TABLE {into} AS SELECT * FROM read_csv('{path}', header = false, "
                         f"columns = {spec}, delim = ',', quote = '\"', escape = '\"', auto_detect = false)")

    # -- applying one entity ----------------------------------------------------------------------

    def apply_entity(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, entity: Entity,
                     batch_id: str, now: str, write: bool) -> EntityOutcome:
        """Load the batch's normalized rows, decide each row's outcome against the target, upsert.

        Leaves `outcome_<entity>` (rid, key, status, changed_fields, first_rid) in DuckDB; a row whose
        key resolves to the same record as an earlier row of the batch is a `Conflict`.
        """
        key = entity.key
        cols = [c for c, _, _ in stored_columns(entity)]
        types = {c: t for c, _, t in stored_columns(entity)}
        incoming = f"incoming_{entity.name}"
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {incoming}")
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {incoming} (rid BIGINT PRIMARY KEY, "
            + ", ".join(f"{c} {types[c]}" for c in cols) + ")"
        )
        self.load(conn, duck, f"SELECT rid, {', '.join(cols)} FROM {entity.table}", incoming, ["rid", *cols])
        if entity.match_on:
            # No key: take the target's member with the same match key, else a key derived from it.
            conn.exec_driver_sql(f"""
                UPDATE {incoming} SET {key} = coalesce(
                    (SELECT min(t.{key}) FROM {entity.table} t WHERE t.match_key = {incoming}.match_key),
                    'auto-' || substr(match_key, 1, 20))
                WHERE {key} IS NULL""")
        compared = [c for c in cols if c not in (key, "match_key")]
        changed = " || ".join(
            f"CASE WHEN s.{c} IS NOT NULL AND s.{c} IS DISTINCT FROM t.{c} THEN '{c},' ELSE '' END" for c in compared
        )
        outcome = f"outcome_{entity.name}"
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {outcome}")
        conn.exec_driver_sql(f"""
            CREATE TEMPORARY TABLE {outcome} AS
            SELECT s.rid, s.{key} AS key,
                   CASE WHEN s.first_rid <> s.rid THEN 'Conflict'
                        WHEN t.{key} IS NULL THEN 'Created' ELSE 'Changed' END AS status,
                   CASE WHEN t.{key} IS NULL THEN '' ELSE {changed} END AS changed_fields,
                   s.first_rid
            FROM (SELECT *, min(rid) OVER (PARTITION BY {key}) AS first_rid FROM {incoming}) s
            LEFT JOIN {entity.table} t ON t.{key} = s.{key}""")
        conn.exec_driver_sql(f"""
            UPDATE {outcome} SET status = CASE WHEN changed_fields = '' THEN 'Unchanged' ELSE 'Updated' END
            WHERE status = 'Changed'""")
        if write:
            non_key = [c for c in cols if c != key]
            conn.exec_driver_sql(f"""
                INSERT INTO {entity.table} ({', '.join(cols)}, created_batch_id, updated_batch_id, created_at,
                                            updated_at)
                SELECT {', '.join('s.' + c for c in cols)}, '{batch_id}', '{batch_id}', '{now}', '{now}'
                FROM {incoming} s JOIN {outcome} o ON o.rid = s.rid
                WHERE o.status IN ('Created', 'Updated')
                ON CONFLICT ({key}) DO UPDATE SET
                    {', '.join(f'{c} = coalesce(excluded.{c}, {entity.table}.{c})' for c in non_key)},
                    updated_batch_id = excluded.updated_batch_id, updated_at = excluded.updated_at""")
        self.fetch(conn, duck, f"SELECT rid, key, status, changed_fields, first_rid FROM {outcome}", outcome,
                   {"rid": "BIGINT", "key": "VARCHAR", "status": "VARCHAR", "changed_fields": "VARCHAR",
                    "first_rid": "BIGINT"})
        counts = dict(duck.execute(f"SELECT status, count(*) FROM {outcome} GROUP BY status").fetchall())
        return EntityOutcome(entity.name, counts.get("Created", 0), counts.get("Updated", 0),
                             counts.get("Unchanged", 0), counts.get("Conflict", 0))

    def write_logs(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, row_log_query: str,
                   batch_row: dict) -> None:
        conn.execute(sa.text("DELETE FROM import_row WHERE batch_id = :b"), {"b": batch_row["batch_id"]})
        self.load(conn, duck, row_log_query, "import_row",
                  ["batch_id", "file_index", "row_number", "entity", "external_id", "status", "messages",
                   "changed_fields"])
        self.write_batch_row(conn, batch_row)

    def write_batch_row(self, conn: sa.Connection, batch_row: dict) -> None:
        conn.execute(sa.text(read_sql("upsert_batch_log.sql")), batch_row)


def _sqlite_autocommit_driver(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None
    # WAL: readers never wait for a publish; NORMAL sync is still crash-safe in WAL mode.
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "temp_store=MEMORY", "cache_size=-262144"):
        dbapi_connection.execute(f"PRAGMA {pragma}")


def maybe_die_before_commit() -> None:
    """Fault injection: the process dies with the publish transaction open (tests only)."""
    if os.environ.get(KILL_BEFORE_COMMIT) == "1":
        os.kill(os.getpid(), signal.SIGKILL)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
