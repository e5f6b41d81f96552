"""What the target holds, derived from the entity spec, in portable logical types.

Each implementation maps the logical types (`text`, `date`, `decimal(14,2)`, `timestamp`, `bigint`,
`integer`) to its own; the DDL, the migration and the upsert are all generated from these tables.
No database library is imported here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from patient_etl.entities.kinds import hash_column
from patient_etl.entities.spec import Entity

AUDIT_COLUMNS = ("created_batch_id", "updated_batch_id", "created_at", "updated_at")
MIGRATION_TABLE = "schema_migration"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # logical type
    not_null: bool = False
    default: str | None = None  # SQL literal
    references: tuple[str, str] | None = None  # (table, column)


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[Index, ...] = ()

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def stored_columns(entity: Entity) -> list[tuple[str, str]]:
    """(name, logical type) of every stored, comparable column of an entity, key first."""
    cols = [(f.name, f.kind.logical_type) for f in entity.fields]
    cols += [(hash_column(f.name), "text") for f in entity.fields if f.kind.hash_sql]
    cols += [(g.stored_as, "text") for g in entity.groups]
    cols.append(("extra", "text"))
    if entity.match_on:
        cols.append(("match_key", "text"))
    return cols


def entity_table(entity: Entity) -> Table:
    parents = {ref.field: (ref.entity, ref.field) for ref in entity.references}
    columns = [Column(name, kind, references=parents.get(name)) for name, kind in stored_columns(entity)]
    columns += [Column(name, "timestamp" if name.endswith("_at") else "text") for name in AUDIT_COLUMNS]
    indexes = (Index(f"{entity.table}_match_key", ("match_key",)),) if entity.match_on else ()
    return Table(entity.table, tuple(columns), (entity.key,), indexes)


def _counter(name: str) -> Column:
    return Column(name, "bigint", not_null=True, default="0")


_OUTCOME = (
    Column("status", "text", not_null=True), Column("reason", "text"),
    *(_counter(c) for c in ("rows_total", "created", "updated", "unchanged", "errored")),
    Column("results_file", "text"),
)
_ROW = (
    Column("external_id", "text"), Column("status", "text", not_null=True), Column("messages", "text"),
    Column("changed_fields", "text"),
)

# The batch as it stands: one row per batch, written when it is received and at each stage; its counts
# are its latest finished run's. `run_id` is the Dagster run that last changed it.
IMPORT_BATCH = Table("import_batch", (
    Column("batch_id", "text"), Column("source", "text", not_null=True), Column("file_names", "text", not_null=True),
    Column("sha256", "text"), *_OUTCOME, Column("registered_at", "timestamp"), Column("finished_at", "timestamp"),
    Column("run_id", "text"), Column("status_at", "timestamp"),
    # Review before publish: why the batch was held, who approved or rejected it and when.
    Column("held_reason", "text"), Column("decided_by", "text"), Column("decided_at", "timestamp"),
    # The run whose row log `import_row` shows: the last one that published (run_id may be a later
    # run that failed, or one under way).
    Column("row_log_run_id", "text"),
), ("batch_id",))

# History, never overwritten: one row per processing run that ended (published, dry runs excepted, or
# failed), written in the same transaction as the data it applied.
IMPORT_RUN = Table("import_run", (
    Column("run_id", "text"), Column("batch_id", "text", not_null=True), *_OUTCOME,
    Column("finished_at", "timestamp", not_null=True),
), ("run_id",), (Index("import_run_batch", ("batch_id", "finished_at")),))

IMPORT_RUN_ROW = Table("import_run_row", (
    Column("run_id", "text", not_null=True), Column("batch_id", "text", not_null=True),
    Column("file_index", "integer", not_null=True), Column("row_number", "bigint", not_null=True),
    Column("entity", "text", not_null=True), *_ROW,
), ("run_id", "entity", "file_index", "row_number"))

SCHEMA_MIGRATION = Table(MIGRATION_TABLE, (
    Column("id", "bigint"), Column("applied_at", "timestamp", not_null=True),
    Column("description", "text", not_null=True), Column("statement", "text", not_null=True),
    Column("spec_version", "text", not_null=True),
), ("id",))

LOG_TABLES = (IMPORT_BATCH, IMPORT_RUN, IMPORT_RUN_ROW)


@dataclass(frozen=True)
class View:
    name: str
    query: str

    def create_statement(self) -> str:
        return f"CREATE VIEW {self.name} AS\n{self.query}"


# Each batch's latest row log, as `import_row` has always answered: the rows its last publishing run
# wrote to the history. A view, not a copy: the copy was a second load of every row log (2-8 s of a
# 1M-row publish). An earlier release's table of that name is migrated into the history.
_ROW_LOG_VIEW_COLUMNS = ("batch_id", "file_index", "row_number", "entity", *(c.name for c in _ROW), "run_id")
IMPORT_ROW = View("import_row", (
    "SELECT " + ", ".join(f"r.{c}" for c in _ROW_LOG_VIEW_COLUMNS) + "\n"
    "FROM import_batch b JOIN import_run_row r ON r.run_id = b.row_log_run_id AND r.batch_id = b.batch_id"))

# Possible-duplicate members for a person to review (patient_etl/linkage): one row per pair of member IDs
# (`member_id_a` < `member_id_b`), kept across runs; IDs, probability and field names only, no values.
REVIEW_OPEN, REVIEW_SAME, REVIEW_DIFFERENT = "open", "same person", "different people"
POSSIBLE_DUPLICATE = Table("possible_duplicate", (
    Column("id", "bigint"), Column("member_id_a", "text", not_null=True), Column("member_id_b", "text", not_null=True),
    Column("match_probability", "double", not_null=True), Column("agreed_fields", "text"),
    Column("similar_fields", "text"), Column("status", "text", not_null=True, default=f"'{REVIEW_OPEN}'"),
    Column("first_batch_id", "text", not_null=True), Column("last_batch_id", "text"),
    Column("found_at", "timestamp", not_null=True), Column("last_seen_at", "timestamp"),
    Column("decided_by", "text"), Column("decided_at", "timestamp"),
), ("id",), (Index("possible_duplicate_pair", ("member_id_a", "member_id_b")),
             Index("possible_duplicate_status", ("status",))))


def schema_tables(entities: list[Entity]) -> list[Table]:
    """Every table the target needs for these entities (parents before children), logs first."""
    return [*LOG_TABLES, *(entity_table(e) for e in entities), POSSIBLE_DUPLICATE]


def spec_version() -> str:
    """A short fingerprint of the schema the whole spec asks for; recorded with each applied migration."""
    from patient_etl.entities import ENTITIES

    return hashlib.sha256(repr((schema_tables(list(ENTITIES.values())), IMPORT_ROW)).encode()).hexdigest()[:12]
