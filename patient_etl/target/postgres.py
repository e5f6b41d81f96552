"""PostgreSQL, the production target: COPY through psycopg 3 for the bulk moves, an advisory lock
for publishes, and information_schema for the migration's catalog."""

from __future__ import annotations

import contextlib
from pathlib import Path

import duckdb
import sqlalchemy as sa

from patient_etl.duck import csv_blocks, sql_literal
from patient_etl.target.base import TableCatalog, Target


class PostgresTarget(Target):
    dialect = "postgresql"
    TYPES = {"text": "TEXT", "date": "DATE", "decimal(14,2)": "NUMERIC(14,2)", "timestamp": "TIMESTAMPTZ",
             "bigint": "BIGINT", "integer": "INTEGER",
             "double": "DOUBLE PRECISION"}
    # How information_schema names each logical type (an unbounded varchar holds text as well as TEXT).
    CATALOG_TYPES = {"text": {"text", "character varying"}, "date": {"date"}, "decimal(14,2)": {"numeric(14,2)"},
                     "timestamp": {"timestamp with time zone"}, "bigint": {"bigint"}, "integer": {"integer"},
                     "double": {"double precision"}}

    # The planner hash-joins the incoming rows by rid (they are analyzed once loaded); an index on them
    # is only built: 0.3-0.6 s of a 1M-row load. rid is unique by construction (staging numbers rows).
    INCOMING_KEYED = False

    def serialize_publishes(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('patient_etl.publish'))")

    def bulk_settings(self, conn: sa.Connection) -> None:
        # For this transaction only. JIT compiles each large statement's expressions (the upsert names
        # every column): seconds per statement that a batch's single pass never earns back. 4 MB of
        # work_mem splits a 1M-row hash join into batches on disk; one publish runs at a time.
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '128MB'")

    def catalog(self, conn: sa.Connection) -> dict[str, TableCatalog]:
        columns: dict[str, dict[str, str]] = {}
        for table, column, data_type, precision, scale, length in conn.exec_driver_sql("""
                SELECT c.table_name, c.column_name, c.data_type, c.numeric_precision, c.numeric_scale,
                       c.character_maximum_length
                FROM information_schema.columns c JOIN information_schema.tables t
                  ON t.table_schema = c.table_schema AND t.table_name = c.table_name
                WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"""):
            if data_type == "numeric" and precision is not None:
                data_type = f"numeric({precision},{scale})"
            elif length is not None:
                data_type = f"{data_type}({length})"
            columns.setdefault(table, {})[column] = data_type
        indexes: dict[str, set[str]] = {}
        for table, index in conn.exec_driver_sql(
                "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema()"):
            indexes.setdefault(table, set()).add(index)
        return {t: TableCatalog(cols, frozenset(indexes.get(t, ()))) for t, cols in columns.items()}

    def views(self, conn: sa.Connection) -> set[str]:
        return {r[0] for r in conn.exec_driver_sql(
            "SELECT table_name FROM information_schema.views WHERE table_schema = current_schema()")}

    def same_type(self, logical: str, found: str) -> bool:
        return found in self.CATALOG_TYPES[logical]

    def analyze(self, conn: sa.Connection, table: str) -> None:
        conn.exec_driver_sql(f"ANALYZE {table}")

    def load(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, query: str, table: str,
             columns: list[str], constants: dict[str, str] | None = None) -> None:
        # Constants in the rows DuckDB writes: COPY takes every value from its stream, and a text field
        # more costs it little (a 1M-row log loaded without its two ids, then inserted with them as
        # constants, was no faster: BENCHMARKS, session 13).
        if constants:
            query = (f"SELECT {', '.join(f'{sql_literal(v)} AS {c}' for c, v in constants.items())}, * "
                     f"FROM ({query})")
            columns = [*constants, *columns]
        # Piped, not through a file: PostgreSQL takes each block while DuckDB writes the next (on the
        # two cores, a 1M-row load overlaps DuckDB's 1-2 s of sorting and writing with the COPY).
        cursor = conn.connection.driver_connection.cursor()
        # Closed however the COPY ends: a refused row stops DuckDB's writer before the error goes on.
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy, \
                contextlib.closing(csv_blocks(duck, query)) as blocks:
            for block in blocks:
                copy.write(block)

    def _fetch_csv(self, conn: sa.Connection, query: str, path: Path) -> None:
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT csv)") as copy, path.open("wb") as handle:
            for block in copy:
                handle.write(block)
