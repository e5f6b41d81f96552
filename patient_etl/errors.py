"""Errors that reach Dagster carry no PHI.

DuckDB, SQLAlchemy and driver exceptions can quote row values (a CSV line, a bound parameter), and
Dagster stores exception text in its event log. Inside a step, such an exception is replaced by a
message with its type only; the full traceback goes to a log file in the home, beside the data.
"""

from __future__ import annotations

import datetime as dt
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb

from patient_etl.batches import Home
from patient_etl.duck import out_of_memory


class SafeError(Exception):
    """An error whose text was written for partners and engineers: it names no row values."""


@contextmanager
def phi_safe(home: Home, batch_id: str, step: str) -> Iterator[None]:
    try:
        yield
    except (dg.Failure, SafeError):
        raise
    except duckdb.OutOfMemoryException:
        raise dg.Failure(description=out_of_memory(step)) from None
    except Exception as exc:
        logs = home.logs
        logs.mkdir(mode=0o700, exist_ok=True)
        path = logs / f"{batch_id}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(f"--- {dt.datetime.now(dt.UTC).isoformat()} {step}\n{traceback.format_exc()}\n")
        raise dg.Failure(
            description=f"{step} failed with {type(exc).__module__}.{type(exc).__name__}; "
                        f"the traceback (which may quote data) is in {path}",
        ) from None
