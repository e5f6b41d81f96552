"""A batch's workspace: every stage's files and tables, named here and nowhere else.

A batch's folder under `staging/<batch>/` holds one DuckDB database per stage, each written by that
stage alone and read by later stages attached read-only (DuckDB allows one writer per file, across
processes, so no two steps ever share one):

| file | written by | tables later stages read |
| --- | --- | --- |
| `staged.duckdb` | staging | `staged_<entity>`, `raw_<file>`, `batch_files`, `header_map` |
| `checks.duckdb` | row checks | `checked_<entity>` (raw text, `<field>__value`), `row_outcome_<entity>`, `row_messages` |
| `<entity>.duckdb` | normalize, one per entity | `<entity>` |
| `publish.duckdb` | publish | `row_log`, `row_log_since_preview` (an approval), `outcome_<entity>` |
| `linkage.duckdb` | possible duplicates, after publish (absent when off or failed) | `possible_duplicates` |

plus `.unpacked.<pid>.tmp/` (the members of a zip batch while it is staged). The raw bytes live in
`archive/<batch>/` (landing).
A stage opens its own database with `Workspace.open(stage)` and names every table, its own or an
upstream one, through the connection's methods; it never spells another stage's names.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from patient_etl.batches import Home, temporary_name
from patient_etl.duck import connect, sql_literal

STAGED = "staged"
CHECKS = "checks"
LINKAGE = "linkage"
PUBLISH = "publish"
# Publish's tables that the stages after it read (through StageDb.row_log and .reviewed_log).
ROW_LOG = "row_log"
REVIEWED_LOG = "row_log_since_preview"
_ENTITY_PREFIX = "entity:"


def checked_value(column: str) -> str:
    """In a checked table, the column holding `column`'s candidate value (beside its raw text)."""
    return f"{column}__value"


def checked_number(column: str) -> str:
    """In a checked table, the column holding a numeric view of `column`'s value, for range checks."""
    return f"{column}__number"


def entity_stage(entity: str) -> str:
    """The normalize stage of one entity (each writes its own database)."""
    return _ENTITY_PREFIX + entity


def _file_name(stage: str) -> str:
    return f"{stage.removeprefix(_ENTITY_PREFIX)}.duckdb"


def _alias(stage: str) -> str:
    return f"ent_{stage.removeprefix(_ENTITY_PREFIX)}" if stage.startswith(_ENTITY_PREFIX) else stage


@dataclass(frozen=True)
class Workspace:
    home: Home
    batch_id: str

    @property
    def folder(self) -> Path:
        return self.home.batch_staging(self.batch_id)

    @property
    def archive(self) -> Path:
        return self.home.batch_archive(self.batch_id)

    @property
    def unpacked(self) -> Path:
        """Where a zip batch's members (and a careful read's clean copy) are written for staging: named by
        this process, so that what a killed run left in clear is removed at the next start (batches.LEFTOVER)."""
        return self.folder / temporary_name("unpacked")

    def path(self, stage: str) -> Path:
        return self.folder / _file_name(stage)

    def exists(self, stage: str) -> bool:
        return self.path(stage).exists()

    @contextmanager
    def open(self, stage: str, reads: tuple[str, ...] | list[str] = ()) -> Iterator[StageDb]:
        """A fresh database for `stage` (an earlier attempt's is replaced), with the upstream stages it
        `reads` attached read-only."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(stage)
        path.unlink(missing_ok=True)
        con = connect(str(path))
        try:
            db = StageDb(self, stage, con)
            for upstream in reads:
                db.attach(upstream)
            yield db
        finally:
            con.close()

    @contextmanager
    def read(self, stage: str) -> Iterator[StageDb]:
        """A finished stage's database, read-only."""
        con = connect(str(self.path(stage)), read_only=True)
        try:
            yield StageDb(self, stage, con)
        finally:
            con.close()

    def discard(self, stage: str) -> None:
        """Remove a stage's database (and its write-ahead log): later stages then see none."""
        self.path(stage).unlink(missing_ok=True)
        self.path(stage).with_name(self.path(stage).name + ".wal").unlink(missing_ok=True)

    def staged_entities(self) -> list[str]:
        """The entities the batch holds: staging wrote one table each."""
        with self.read(STAGED) as db:
            tables = [r[0] for r in db.con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        return sorted(t.removeprefix("staged_") for t in tables if t.startswith("staged_"))

    def remove(self) -> None:
        """Drop the batch's staging (the landed copy in the archive is kept)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class StageDb:
    """One stage's open database; the names of tables as this stage sees them (its own tables bare,
    upstream ones through their read-only attachment)."""

    def __init__(self, workspace: Workspace, stage: str, con: duckdb.DuckDBPyConnection):
        self.workspace, self.stage, self.con = workspace, stage, con
        self._attached: set[str] = set()

    def attach(self, stage: str) -> None:
        if stage in self._attached or stage == self.stage:
            return
        self.con.execute(f"ATTACH {sql_literal(str(self.workspace.path(stage)))} AS {_alias(stage)} (READ_ONLY)")
        self._attached.add(stage)

    def has_table(self, name: str) -> bool:
        """Whether a table this connection names (`db.checked("care")`) exists: a batch without care
        rows has none."""
        catalog, _, table = name.rpartition(".")
        catalog = catalog or self.con.execute("SELECT current_database()").fetchall()[0][0]
        return bool(self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_catalog = ? AND table_name = ?",
            [catalog, table]).fetchall()[0][0])

    def _name(self, stage: str, table: str) -> str:
        if stage == self.stage:
            return table
        self.attach(stage)
        return f"{_alias(stage)}.{table}"

    # staging
    def staged(self, entity: str) -> str:
        return self._name(STAGED, f"staged_{entity}")

    def raw(self, file_index: int) -> str:
        """A source file's rows as read: `row_number` and `c0`..`cN` in its own column order."""
        return self._name(STAGED, f"raw_{file_index}")

    def rejected(self, file_index: int) -> str:
        """A source file's rows of the wrong width: `row_number`, `error_type`, `found`."""
        return self._name(STAGED, f"rejected_{file_index}")

    @property
    def batch_files(self) -> str:
        return self._name(STAGED, "batch_files")

    @property
    def header_map(self) -> str:
        return self._name(STAGED, "header_map")

    # row checks
    def checked(self, entity: str) -> str:
        return self._name(CHECKS, f"checked_{entity}")

    def outcome(self, entity: str) -> str:
        """Per row: `rid`, `file_index`, `row_number`, `errored`, `warned`, `messages`."""
        return self._name(CHECKS, f"row_outcome_{entity}")

    @property
    def row_messages(self) -> str:
        return self._name(CHECKS, "row_messages")

    # normalize
    def normalized(self, entity: str) -> str:
        return self._name(entity_stage(entity), entity)

    # publish
    @property
    def row_log(self) -> str:
        """One row per source row, as the results file and the target's row log have it (`ROW_LOG_COLUMNS`)."""
        return self._name(PUBLISH, ROW_LOG)

    @property
    def reviewed_log(self) -> str:
        """An approval's row log with `since_preview` (present only when this run approved a held batch)."""
        return self._name(PUBLISH, REVIEWED_LOG)

    def published_outcome(self, entity: str) -> str:
        """Per applied row: `rid`, `key` (the ID it was published under), `status` (Created, Updated, Unchanged,
        Conflict, Ambiguous), `changed_fields`, `message`. Absent when the run reported a recovered outcome."""
        return self._name(PUBLISH, f"outcome_{entity}")

    # linkage
    @property
    def possible_duplicates(self) -> str:
        """Per flagged pair: the batch row (`rid`, `row_number`, `external_id`), what it may duplicate
        (`duplicate_in` batch|target, `duplicate_of`, `duplicate_of_rid`), `match_probability`, `strength`,
        `agreed_fields`, `similar_fields` (see `patient_etl.linkage.link.PAIR_COLUMNS`)."""
        return self._name(LINKAGE, "possible_duplicates")

    @property
    def linkage_target(self) -> str:
        """The linkage stage's copy of the target's members: in memory, never in the batch's folder."""
        return self.scratch("target_members")

    @property
    def known_different(self) -> str:
        """The linkage stage's copy of the pairs a person decided are different people (in memory)."""
        return self.scratch("known_different")

    def scratch(self, table: str) -> str:
        """A table in an in-memory database beside this stage's: gone when the connection closes."""
        if "scratch" not in self._attached:
            self.con.execute("ATTACH ':memory:' AS scratch")
            self._attached.add("scratch")
        return f"scratch.{table}"
