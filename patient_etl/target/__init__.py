"""The target database behind one interface: PostgreSQL in production, an embedded SQLite by default.

`open_target(url, work_dir)` gives a `Target` (see `base.py` for what every implementation does);
the implementations and SQLAlchemy are imported only when a step opens one, so loading the code
location does not pay for them.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from patient_etl.errors import SafeError

if TYPE_CHECKING:
    from patient_etl.target.base import Target

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
KILL_BEFORE_COMMIT = "PATIENT_ETL_FAULT_KILL_BEFORE_COMMIT"  # fault-injection point for the atomicity test
KILL_AFTER_COMMIT = "PATIENT_ETL_FAULT_KILL_AFTER_COMMIT"  # ... and for the outcome that must survive the commit


class TargetSchemaError(SafeError):
    """The target's schema differs from the spec in a way migration never repairs by itself (a column
    of another type, a missing key). The reason names tables and columns only, never row values."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def normalize_url(url: str) -> str:
    """A plain `postgresql://` URL uses psycopg 3 (its COPY API does the bulk loads)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def safe_url(url: str) -> str:
    """The URL without its password, for logs and metadata."""
    import sqlalchemy as sa

    return sa.make_url(normalize_url(url)).render_as_string(hide_password=True)


def open_target(url: str, work_dir: Path | None = None) -> Target:
    """The target at `url`. `work_dir` (the batch's folder under the home) takes the bulk moves'
    temporary files, never the system temp dir: they hold row values."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        from patient_etl.target.sqlite import SqliteTarget

        return SqliteTarget(url, work_dir)
    if url.startswith("postgresql"):
        from patient_etl.target.postgres import PostgresTarget

        return PostgresTarget(url, work_dir)
    raise ValueError(f"unsupported target database {url.split(':', 1)[0]!r} (PostgreSQL or SQLite)")


def maybe_die_before_commit() -> None:
    """Fault injection: the process dies with the publish transaction open (tests only)."""
    if os.environ.get(KILL_BEFORE_COMMIT) == "1":
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_die_after_commit() -> None:
    """Fault injection: the process dies right after the publish committed, before anything else (tests only)."""
    if os.environ.get(KILL_AFTER_COMMIT) == "1":
        os.kill(os.getpid(), signal.SIGKILL)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
