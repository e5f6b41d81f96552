"""SQLite, the embedded default: batched inserts for loads, BEGIN IMMEDIATE for the publish lock,
and SQLite's own catalog (PRAGMA table_info) for the migration.

SQLite enforces a column's type only through its affinity (TEXT, NUMERIC, INTEGER, REAL, BLOB), so
the migration compares affinities: a target created by an earlier release with `TIMESTAMPTZ` columns
matches, a date column declared TEXT does not.
"""

from __future__ import annotations

import contextlib
import csv
import sqlite3
from pathlib import Path

import duckdb
import sqlalchemy as sa

from patient_etl.duck import sql_literal
from patient_etl.target.base import TableCatalog, Target

_FETCH_ROWS = 50_000
# Each of SQLite's page caches (the database's, a publish's temporary tables'), as its PRAGMA takes it
# (negative: KiB). They sit beside DuckDB's memory in the run's process: at 256 MB each, a 1M-row
# publish peaked at 1.4-1.5 GB; at 64 MB, 0.91 GB in the same time (BENCHMARKS.md, session 10).
_CACHE = "-65536"


def affinity(declared: str) -> str:
    """SQLite's rules for a declared type (https://sqlite.org/datatype3.html, 3.1)."""
    name = declared.upper()
    if "INT" in name:
        return "INTEGER"
    if any(part in name for part in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in name or not name:
        return "BLOB"
    if any(part in name for part in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


class SqliteTarget(Target):
    dialect = "sqlite"
    TYPES = {"text": "TEXT", "date": "DATE", "decimal(14,2)": "NUMERIC(14,2)", "timestamp": "TIMESTAMP",
             "bigint": "BIGINT", "integer": "INTEGER",
             "double": "DOUBLE PRECISION"}

    @classmethod
    def list_agg(cls, expr: str) -> str:
        return f"group_concat({expr}, ', ')"  # SQLite < 3.44 has no string_agg

    @classmethod
    def list_item(cls, array: str, n: int) -> str:
        return f"CASE WHEN json_type({array}, '$[{n}]') <> 'null' THEN json_extract({array}, '$[{n}]') END"

    @classmethod
    def lists_differ(cls, a: str, b: str) -> str:
        # json() minifies: the same list compares equal. The same text needs no parsing (see base).
        return f"CASE WHEN ({a}) IS ({b}) THEN 0 ELSE json({a}) IS NOT json({b}) END"

    @classmethod
    def list_merge(cls, new: str, old: str) -> str:
        def item(e: str) -> str:  # an item as JSON text: json_each gives strings unquoted
            return f"CASE WHEN {e}.type = 'text' THEN json_quote({e}.value) WHEN {e}.type <> 'null' THEN {e}.value END"

        return (f"(SELECT '[' || group_concat(v, ',') || ']' FROM (SELECT coalesce({item('i')}, {item('o')}) AS v "
                f"FROM json_each(coalesce({new}, '[]')) i FULL JOIN json_each(coalesce({old}, '[]')) o "
                "ON o.key = i.key ORDER BY coalesce(i.key, o.key)) m WHERE v IS NOT NULL)")

    def __init__(self, url: str, work_dir: Path | None = None):
        super().__init__(url, work_dir)
        # pysqlite opens transactions lazily, after our reads: take the write lock up front instead.
        sa.event.listen(self.engine, "connect", _autocommit_driver)
        if work_dir is not None:
            sa.event.listen(self.engine, "connect", lambda dbapi, _record: _temp_store_in(dbapi, work_dir))
        sa.event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))

    def engine_options(self) -> dict:
        return {"connect_args": {"timeout": 300}}

    def dispose(self) -> None:
        super().dispose()
        if self.work_dir is not None:  # the process's temporary folder back to SQLite's own: this batch's may go
            with contextlib.closing(sqlite3.connect(":memory:")) as reset:
                reset.execute("PRAGMA temp_store_directory = ''")

    def serialize_publishes(self, conn: sa.Connection) -> None:
        """BEGIN IMMEDIATE (every transaction here) already holds the database's write lock."""

    def catalog(self, conn: sa.Connection) -> dict[str, TableCatalog]:
        tables = [r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            table: TableCatalog(
                {r[1]: r[2] for r in conn.exec_driver_sql(f"PRAGMA table_info('{table}')")},
                frozenset(r[1] for r in conn.exec_driver_sql(f"PRAGMA index_list('{table}')")),
            )
            for table in tables
        }

    def views(self, conn: sa.Connection) -> set[str]:
        return {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'view'")}

    def same_type(self, logical: str, found: str) -> bool:
        return affinity(found) == affinity(self.TYPES[logical])

    def load(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, query: str, table: str,
             columns: list[str], constants: dict[str, str] | None = None) -> None:
        as_text = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in columns)
        result = duck.execute(f"SELECT {as_text} FROM ({query})")
        # Constants as literals of the statement, not values bound per row.
        constants = constants or {}
        values = [*(sql_literal(v) for v in constants.values()), *("?" for _ in columns)]
        insert = f"INSERT INTO {table} ({', '.join([*constants, *columns])}) VALUES ({', '.join(values)})"
        while rows := result.fetchmany(_FETCH_ROWS):
            conn.exec_driver_sql(insert, rows)

    def _fetch_csv(self, conn: sa.Connection, query: str, path: Path) -> None:
        result = conn.exec_driver_sql(query)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            while rows := result.fetchmany(_FETCH_ROWS):
                writer.writerows(rows)


def _autocommit_driver(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None
    # WAL: readers never wait for a publish; NORMAL sync is still crash-safe in WAL mode. Temporary
    # tables in memory, where SQLite's temporary files (outside the home) would otherwise hold them:
    # right for a batch's status, not for a publish's bulk tables (`_temp_store_in`).
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "temp_store=MEMORY", f"cache_size={_CACHE}"):
        dbapi_connection.execute(f"PRAGMA {pragma}")


def _temp_store_in(dbapi_connection, folder: Path) -> None:
    """A publish's temporary tables in files in the batch's folder, with their own cache: in memory,
    a 10M-row batch's (the incoming rows, their outcomes) grew the process past 6 GB. SQLite names its
    temporary files' folder per process (the deprecated but supported `temp_store_directory`); one
    publish runs in a process at a time, and each sets its own before it begins."""
    dbapi_connection.execute(f"PRAGMA temp_store_directory = {sql_literal(str(folder))}")
    for pragma in ("temp_store=FILE", f"temp.cache_size={_CACHE}"):
        dbapi_connection.execute(f"PRAGMA {pragma}")
