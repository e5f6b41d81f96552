"""The Dagster instance a home keeps when DAGSTER_HOME is not set: its dagster.yaml, and the SQLite event
log that keeps its connections open.

Dagster's SQLite event log opens and disposes an SQLAlchemy engine for every statement (NullPool), and a
run stores one event per step start, output, materialization and check, each to the run's file and the
index: ~80 events for a 4-row batch, ~15 ms each, plus the partition and data-version lookups each step
makes (~3 s of a 6 s import, measured in BENCHMARKS.md). `PooledSqliteEventLogStorage` is the same storage
on the same files (Dagster's tables, its migrations, its watchers), with one engine kept per shard:
~4 ms an event. SQLite in WAL mode lets the daemon, the UI and runs share the files as before; a kept
connection holds no lock between transactions.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy import Connection, Engine, create_engine

HEADER = "# The Dagster instance of this PATIENT_ETL_HOME, written by patient-etl"
KEPT_SHARDS = 8  # the index and the latest runs' files; an older run's engine is disposed


def home_config(folder: Path) -> str:
    """The dagster.yaml of a home's instance in `folder` (absolute, so that any process reads the same files)."""
    return f"""\
{HEADER} on first use (and again when
# the home moves): runs, events and schedules are kept in SQLite files in this folder. `patient-etl
# import` and `patient-etl ui` both use it, so every batch run from the command line is visible in the
# UI. The event log is Dagster's SQLite one keeping its connections open (patient_etl/instance.py).
# Production sets DAGSTER_HOME to a folder holding the repository's PostgreSQL dagster.yaml instead.
event_log_storage:
  module: patient_etl.instance
  class: PooledSqliteEventLogStorage
  config:
    base_dir: {json.dumps(str(folder.absolute() / "history" / "runs"))}
telemetry:
  enabled: false
"""


def write_home_config(folder: Path) -> None:
    """Write the home's dagster.yaml unless it is already current; one that is not ours (no header) is
    left as its owner wrote it."""
    config = folder / "dagster.yaml"
    wanted = home_config(folder)
    current = config.read_text() if config.exists() else None
    if current is None or (current != wanted and current.startswith(HEADER)):
        config.write_text(wanted)


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log with an engine kept per shard (the run files and the index)."""

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            engine = self._engines.pop(shard, None)
            if engine is None:
                engine = create_engine(self.conn_string_for_shard(shard),
                                       connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            self._engines[shard] = engine  # the most recent last
            while len(self._engines) > KEPT_SHARDS:
                self._engines.popitem(last=False)[1].dispose()
            return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # As Dagster's own (one statement at a time per storage, the database created on first use),
        # but on a kept engine.
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _dispose_engines(self) -> None:
        with self._engines_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self._dispose_engines()  # the run files are deleted: no connection may keep one open
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()
