"""DuckDB helpers. DuckDB 2.0 keeps a result open after `fetchone()`, which blocks `register()` and
friends on that connection; these fetch whole results."""

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Sequence

import duckdb

from patient_etl.heap import return_large_buffers


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple:
    rows = con.execute(sql, params or []).fetchall()
    return rows[0]


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    return first_row(con, sql, params)[0]


def sql_literal(text: str) -> str:
    """`text` as an SQL string literal (DuckDB, PostgreSQL and SQLite quote alike)."""
    return "'" + text.replace("'", "''") + "'"


MEMORY_LIMIT = "PATIENT_ETL_DUCKDB_MEMORY"  # per database a process opens, in DuckDB's units
# 384MB: a 10M-row batch then peaks within 6% of a 1M-row one (at 512MB 10-13% above, in the publish),
# at no cost measured at 1M or 10M rows (BENCHMARKS, session 12); 256MB cost 1M rows ~5 s.
DEFAULT_MEMORY_LIMIT = "384MB"


class SettingError(ValueError):
    """A setting of the environment that cannot be used; the message names it."""


# DuckDB's units of memory, the only ones a limit is accepted in.
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3,
          "tb": 1000**4, "tib": 1024**4}
_AMOUNT = re.compile(r"(\d+(?:\.\d+)?)\s*(" + "|".join(_UNITS) + ")", re.IGNORECASE)


def memory_limit() -> str:
    """The memory one DuckDB database may hold, beyond which it evicts its file's pages and spills its
    intermediates into the home. DuckDB's own default is 80% of the machine: a stage database kept the
    pages it wrote cached, so a batch's peak grew with its size (1.1 GB in the publish of 1M rows);
    bounded, it does not."""
    value = os.environ.get(MEMORY_LIMIT, "").strip() or DEFAULT_MEMORY_LIMIT
    if not _AMOUNT.fullmatch(value):
        raise SettingError(f"{MEMORY_LIMIT} must be an amount of memory such as 512MB or 2GB, not {value!r}")
    return value


def memory_limit_bytes() -> int:
    amount, unit = _AMOUNT.fullmatch(memory_limit()).groups()
    return int(float(amount) * _UNITS[unit.lower()])


SHARED_PART = 4  # while another process does the heavy work, a database holds 1/SHARED_PART of its limit


@contextlib.contextmanager
def sharing_memory(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """A quarter of the memory limit for `con` while another process does the heavy work (Great
    Expectations in the validator, ~350 MB) and DuckDB only reads it frames: DuckDB evicts its cached
    pages down to it, and reads them back from the file as it needs them. A 10M-row batch's checked
    rows kept the run process at the full limit beside the validator, the import's peak (at half the
    limit, still 11% above 1M's; a quarter cost 1M rows' checks nothing measurable)."""
    con.execute(f"SET memory_limit = '{memory_limit_bytes() // SHARED_PART}B'")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{memory_limit()}'")


def out_of_memory(step: str) -> str:
    """What a step that DuckDB stopped at its memory limit says (DuckDB's own text is sizes only, but
    the operator it names is no help to the reader)."""
    return (f"{step} needed more memory than DuckDB may use ({MEMORY_LIMIT}={memory_limit()}): raise the "
            "limit, then reprocess the batch")


def connect(path: str = ":memory:", read_only: bool = False, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect` with the memory limit (`memory_limit`), and without the progress bar DuckDB draws
    on stderr for a query over ~2 s (a 1M-row batch's): noise in the command line's output and in every
    step's captured log. Its cursors inherit. The process's large freed buffers go back to the system
    (`heap.py`)."""
    return_large_buffers()
    con = duckdb.connect(path, read_only=read_only, config={"memory_limit": memory_limit(), **(config or {})})
    con.execute("SET enable_progress_bar = false")
    return con


@contextlib.contextmanager
def unordered(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """For statements whose rows nothing reads in the order they were written (every reader joins on
    `rid` or sorts). DuckDB otherwise keeps a parallel CREATE TABLE AS in its input's order by holding
    each thread's rows back until the earlier ones are written, which under the memory limit means
    spilling them: the checked rows of a 1M-row roster took 5.9 s at 512MB, 3.1 s without the order
    (and as long with 1GB and the order). Never for staging, whose row numbers are the file's order."""
    con.execute("SET preserve_insertion_order = false")
    try:
        yield
    finally:
        con.execute("RESET preserve_insertion_order")


def csv_blocks(con: duckdb.DuckDBPyConnection, query: str, size: int = 1 << 20) -> Iterator[bytes]:
    """The rows of `query` as CSV (no header, NULL as an empty field, an empty string as `""`), in
    blocks of up to `size` bytes, as DuckDB writes them: through a pipe from a thread of its own, so
    the reader (a PostgreSQL COPY) takes each block while DuckDB writes the next, and no file holds the
    rows. Stopping early closes the pipe, which ends DuckDB's COPY; DuckDB's error, if any, is raised
    after its last block.

    The thread runs the query on `con` itself (a cursor would not see its temporary tables), which the
    caller leaves alone until the blocks end: this generator returns only after the thread has."""
    read_end, write_end = os.pipe()
    failed: list[BaseException] = []

    def write() -> None:
        try:
            con.execute(f"COPY ({query}) TO '/dev/fd/{write_end}' (FORMAT csv, HEADER false)")
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            failed.append(exc)
        finally:
            os.close(write_end)  # the reader's end of file, whether or not DuckDB ever opened the pipe

    writer = threading.Thread(target=write, name="duckdb-csv", daemon=True)
    writer.start()
    try:
        with open(read_end, "rb", buffering=0) as pipe:
            while block := pipe.read(size):
                yield block
    finally:
        writer.join()
    if failed:
        raise failed[0]


def in_memory(spill: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory database. DuckDB spills a large one to `.tmp` in the working directory, outside the
    home: this one spills into `spill` (a folder inside the home) or, given none, never to disk."""
    return connect(config={"temp_directory": spill or ""})


def spill_folder(con: duckdb.DuckDBPyConnection) -> str:
    """Where `con` spills: a stage database's own `<file>.tmp`, beside it in the home."""
    return scalar(con, "SELECT current_setting('temp_directory')")


def select_lists(columns: dict[str, tuple[str, Sequence]]) -> tuple[str, list]:
    """A SELECT of Python lists, one per column (name: (DuckDB type, values)), zipped row by row, and
    its parameters. Small tables built in Python go in this way, not as Arrow: building an Arrow array
    from Python values imports pandas (~0.45 s), which the run's process otherwise never loads."""
    select = ", ".join(f"unnest(?::{kind}[]) AS {name}" for name, (kind, _) in columns.items())
    return f"SELECT {select}", [list(values) for _, values in columns.values()]
