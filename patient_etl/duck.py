"""DuckDB helpers. DuckDB 2.0 keeps a result open after `fetchone()`, which blocks `register()` and
friends on that connection; these fetch whole results."""

import duckdb


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple:
    rows = con.execute(sql, params or []).fetchall()
    return rows[0]


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    return first_row(con, sql, params)[0]
