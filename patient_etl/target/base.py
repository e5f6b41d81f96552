"""What the pipeline asks of a target database, written once; the implementations supply the dialect.

A publish runs in one transaction: `serialize_publishes` (one publish at a time per target),
`migrate` (the spec's tables, columns and indexes added where missing, recorded in `schema_migration`),
then per entity `decide_entity` (bulk load into a temporary table, outcome per row), then per entity
`write_entity` (one upsert generated from the spec), then `write_logs`. A publish that dies half-way
leaves the target as it was.

Implementations give: `TYPES` (logical type -> their type), the engine options, the publish lock,
`catalog` and `same_type` for the migration, and the two bulk moves `load` and `fetch`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import sqlalchemy as sa

from patient_etl.entities.spec import MAX_GROUP_INDEX, Entity, derived_key_sql
from patient_etl.target import SQL_DIR, TargetSchemaError, utc_now
from patient_etl.target.schema import (
    AUDIT_COLUMNS,
    IMPORT_BATCH,
    IMPORT_ROW,
    MIGRATION_TABLE,
    SCHEMA_MIGRATION,
    Column,
    Index,
    Table,
    entity_table,
    schema_tables,
    spec_version,
    stored_columns,
)

SCHEMA_DIFFERS = "target_schema_differs"  # TargetSchemaError.code: a column to retype or a key to add by hand
DEFER_INDEXES_FROM_ROWS = 50_000  # new rows into an empty table from which its indexes are built after


@dataclass
class EntityOutcome:
    entity: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    conflicts: int = 0
    was_empty: bool = False  # the entity's table held no rows (the incoming ones are then loaded in key order)


@dataclass(frozen=True)
class TableCatalog:
    """A table as the target's catalog describes it: its columns' types as the database names them."""

    columns: dict[str, str]
    indexes: frozenset[str]


@dataclass(frozen=True)
class Migration:
    description: str
    statement: str


class Target:
    dialect: str
    TYPES: dict[str, str]  # logical type (schema.py) -> this database's type
    INCOMING_KEYED = True  # whether the batch's incoming rows get an index on rid (SQLite joins by index)

    def __init__(self, url: str, work_dir: Path | None = None):
        self.url = url
        self.work_dir = work_dir
        self.engine = sa.create_engine(url, **self.engine_options())
        self._migrated: set[str] = set()

    def engine_options(self) -> dict:
        return {}

    # -- connections and the publish lock ------------------------------------------------------------

    def connect(self) -> sa.Connection:
        """A connection; the caller begins the transaction (`conn.begin()`) and ends it."""
        return self.engine.connect()

    def begin(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A connection in a transaction that commits when the block ends without an error."""
        return self.engine.begin()

    def serialize_publishes(self, conn: sa.Connection) -> None:
        """One publish at a time per target, held until the transaction ends: outcomes are decided
        against a target no one else is changing."""
        raise NotImplementedError

    def bulk_settings(self, conn: sa.Connection) -> None:
        """Settings for the publish's transaction, whose statements each move a whole batch (none here)."""

    def dispose(self) -> None:
        self.engine.dispose()

    # -- DDL, generated from the schema (class methods: `ddl.py` writes sql/ without a database) --------

    @classmethod
    def column_sql(cls, column: Column) -> str:
        sql = f"{column.name} {cls.TYPES[column.type]}"
        if column.not_null:
            sql += " NOT NULL"
        if column.default is not None:
            sql += f" DEFAULT {column.default}"
        return sql

    @classmethod
    def create_table_statement(cls, table: Table) -> str:
        single_key = table.primary_key[0] if len(table.primary_key) == 1 else None
        lines = [cls.column_sql(c) + (" PRIMARY KEY" if c.name == single_key else "") for c in table.columns]
        if single_key is None:
            lines.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
        lines += [f"FOREIGN KEY ({c.name}) REFERENCES {c.references[0]} ({c.references[1]})"
                  for c in table.columns if c.references]
        return f"CREATE TABLE IF NOT EXISTS {table.name} (\n    " + ",\n    ".join(lines) + "\n)"

    @classmethod
    def create_index_statement(cls, table: Table, index: Index) -> str:
        return f"CREATE INDEX IF NOT EXISTS {index.name} ON {table.name} ({', '.join(index.columns)})"

    @classmethod
    def add_column_statement(cls, table: Table, column: Column) -> str:
        sql = f"ALTER TABLE {table.name} ADD COLUMN {cls.column_sql(column)}"
        if column.references:
            sql += f" REFERENCES {column.references[0]} ({column.references[1]})"
        return sql

    @classmethod
    def create_table_sql(cls, table: Table) -> str:
        """The table and its indexes, as a script."""
        statements = [cls.create_table_statement(table), *(cls.create_index_statement(table, i) for i in table.indexes)]
        return "".join(s + ";\n" for s in statements)

    def temp_table(self, conn: sa.Connection, name: str, columns: dict[str, str],
                   primary_key: str | None = None) -> None:
        """A fresh temporary table `name` (dropped first if this connection has one) of logical types."""
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {name} ("
            + ", ".join(f"{c} {self.TYPES[t]}" + (" PRIMARY KEY" if c == primary_key else "") for c, t in columns.items())
            + ")")

    # -- schema migration ------------------------------------------------------------------------------

    def catalog(self, conn: sa.Connection) -> dict[str, TableCatalog]:
        """The target's tables (not temporary ones), as its own catalog describes them."""
        raise NotImplementedError

    def views(self, conn: sa.Connection) -> set[str]:
        """The names of the target's views."""
        raise NotImplementedError

    def same_type(self, logical: str, found: str) -> bool:
        """Whether a column the catalog describes as `found` holds the spec's `logical` type."""
        raise NotImplementedError

    def plan_migration(self, conn: sa.Connection, entities: list[Entity]) -> list[Migration]:
        """What the target lacks of the spec: tables, columns, indexes. Nothing is ever dropped or
        retyped: a column of another type, or a missing key column, raises `TargetSchemaError`."""
        catalog = self.catalog(conn)
        plan: list[Migration] = []
        problems: list[str] = []
        for table in [SCHEMA_MIGRATION, *schema_tables(entities)]:
            found = catalog.get(table.name)
            if found is None:
                plan.append(Migration(f"create table {table.name}", self.create_table_statement(table)))
                plan += [Migration(f"create index {i.name} on {table.name}", self.create_index_statement(table, i))
                         for i in table.indexes]
                continue
            for column in table.columns:
                if column.name not in found.columns:
                    if column.name in table.primary_key or (column.not_null and column.default is None):
                        problems.append(f"column {table.name}.{column.name} is missing and, being part of the "
                                        "key or required, cannot be added to a table that has rows")
                    else:
                        plan.append(Migration(f"add column {table.name}.{column.name}",
                                              self.add_column_statement(table, column)))
                elif not self.same_type(column.type, found.columns[column.name]):
                    problems.append(f"column {table.name}.{column.name} is {found.columns[column.name]} in the "
                                    f"target but {self.TYPES[column.type]} in the spec")
            plan += [Migration(f"create index {i.name} on {table.name}", self.create_index_statement(table, i))
                     for i in table.indexes if i.name not in found.indexes]
        if IMPORT_ROW.name in catalog:
            plan += self._row_log_into_history(catalog[IMPORT_ROW.name])
        elif IMPORT_ROW.name not in self.views(conn):
            plan.append(Migration(f"create view {IMPORT_ROW.name}", IMPORT_ROW.create_statement()))
        if problems:
            raise TargetSchemaError(SCHEMA_DIFFERS, "the target's schema differs from the spec ("
                                    + "; ".join(problems) + "); a migration never retypes or drops a column: "
                                    "change the target by hand, then reprocess the batch")
        return plan

    @staticmethod
    def _row_log_into_history(found: TableCatalog) -> list[Migration]:
        """An earlier release kept each batch's latest row log in a table `import_row` beside the
        history: its rows go into the history (under their run, or one named after the batch where the
        release recorded none), each batch points at them, and the table gives way to the view."""
        def column(name: str) -> str:
            return f"r.{name}" if name in found.columns else "NULL"

        run = f"coalesce({column('run_id')}, 'import_row:' || r.batch_id)"
        same = " AND ".join(f"h.{c} = r.{c}" for c in ("entity", "file_index", "row_number"))
        return [
            Migration("copy import_row into import_run_row",
                      f"INSERT INTO import_run_row (run_id, {', '.join(ROW_LOG_COLUMNS)}) "
                      f"SELECT {run}, {', '.join(column(c) for c in ROW_LOG_COLUMNS)} FROM import_row r "
                      f"WHERE NOT EXISTS (SELECT 1 FROM import_run_row h WHERE h.run_id = {run} AND {same})"),
            Migration("point import_batch.row_log_run_id at it",
                      f"UPDATE import_batch SET row_log_run_id = (SELECT max({run}) FROM import_row r "
                      "WHERE r.batch_id = import_batch.batch_id) "
                      "WHERE batch_id IN (SELECT batch_id FROM import_row)"),
            Migration("drop table import_row (its rows are in import_run_row)", "DROP TABLE import_row"),
            Migration(f"create view {IMPORT_ROW.name}", IMPORT_ROW.create_statement()),
        ]

    def migrate(self, conn: sa.Connection, entities: list[Entity]) -> list[Migration]:
        """On first use in a run: apply `plan_migration` in the caller's transaction and record each
        step in `schema_migration`. Run it holding the publish lock."""
        wanted = ",".join(e.name for e in entities)
        if wanted in self._migrated:
            return []
        plan = self.plan_migration(conn, entities)
        if plan:
            for step in plan:
                conn.exec_driver_sql(step.statement)
            first = conn.execute(sa.text(f"SELECT coalesce(max(id), 0) + 1 FROM {MIGRATION_TABLE}")).scalar_one()
            version, now = spec_version(), utc_now()
            conn.execute(sa.text(f"INSERT INTO {MIGRATION_TABLE} (id, applied_at, description, statement, "
                                 "spec_version) VALUES (:id, :now, :description, :statement, :version)"),
                         [{"id": first + n, "now": now, "description": step.description, "statement": step.statement,
                           "version": version} for n, step in enumerate(plan)])
        self._migrated.add(wanted)
        return plan

    # -- moving rows between DuckDB and the target, set-based --------------------------------------------

    @contextlib.contextmanager
    def scratch_file(self) -> Iterator[Path]:
        """A private file in the batch's folder for one bulk move, removed however the move ends."""
        if self.work_dir is None:
            raise ValueError("bulk moves need the batch's folder: open_target(url, work_dir=folder)")
        fd, name = tempfile.mkstemp(prefix=f".target-{os.getpid()}-", suffix=".csv", dir=self.work_dir)
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def load(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, query: str, table: str,
             columns: list[str], constants: dict[str, str] | None = None) -> None:
        """Bulk-load the rows of a DuckDB query into a target table (the query's columns in order), and
        into the columns `constants` names the same text on every row: each target puts those in as it
        moves rows best (SQLite binds each value from Python: a 1M-row log's two repeated ids were a
        quarter of its load)."""
        raise NotImplementedError

    def analyze(self, conn: sa.Connection, table: str) -> None:
        """Planner statistics for a temporary table just filled. PostgreSQL's autovacuum never analyzes
        temporary tables; without statistics the planner takes a 1M-row one for a few thousand rows and
        joins it by nested loop (the other-member warning of a 1M re-import: over 10 minutes, 6 s with
        them). SQLite plans these joins by their indexes: nothing to do."""

    def fetch(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, query: str, into: str,
              columns: dict[str, str]) -> None:
        """Copy the rows of a target query into a new DuckDB table `into` with the given DuckDB types,
        through a file in the batch's folder. Not piped as `load` is on PostgreSQL: DuckDB reads a pipe
        with one thread, and a 1M-row fetch took 1.8 s that way against 0.9 s through a file."""
        with self.scratch_file() as path:
            self._fetch_csv(conn, query, path)
            spec = "{" + ", ".join(f"'{c}': '{t}'" for c, t in columns.items()) + "}"
            # An empty field is NULL, a quoted one (`""`) the empty string, as PostgreSQL writes them (the
            # csv module writes both as an empty field: from SQLite, an empty string comes back NULL).
            duck.execute(f"CREATE OR REPLACE TABLE {into} AS SELECT * FROM read_csv('{path}', header = false, "
                         f"columns = {spec}, delim = ',', quote = '\"', escape = '\"', auto_detect = false, "
                         "allow_quoted_nulls = false)")

    def _fetch_csv(self, conn: sa.Connection, query: str, path: Path) -> None:
        raise NotImplementedError

    # -- applying one entity ---------------------------------------------------------------------------

    @classmethod
    def list_agg(cls, expr: str) -> str:
        """`expr` of a group's rows joined with `, `, in the order the rows come."""
        return f"string_agg({expr}, ', ')"

    # Group lists are JSON text: stored compact, incoming positional (JSON null where a row has no value).
    @classmethod
    def list_item(cls, array: str, n: int) -> str:
        """The JSON list `array`'s item `n` (0-based), comparable; NULL when absent or JSON null."""
        return f"nullif(({array})::jsonb -> {n}, 'null'::jsonb)"

    @classmethod
    def lists_differ(cls, a: str, b: str) -> str:
        """Whether two JSON lists differ as values (not as text: spacing and key order aside). The same
        text is the same list, and most lists of a re-import are: only different texts are parsed (a
        1M-row re-import spent 8.8 s parsing lists that were equal as text in its list merge alone)."""
        return f"CASE WHEN ({a}) IS NOT DISTINCT FROM ({b}) THEN false ELSE ({a})::jsonb IS DISTINCT FROM ({b})::jsonb END"

    @classmethod
    def list_merge(cls, new: str, old: str) -> str:
        """`old` with each non-null item of `new` in its place, compacted; NULL when both are empty."""
        # json, not jsonb: items keep their text (an address's keys in the spec's order).
        item = "CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END"
        return (f"(SELECT json_agg({item} ORDER BY coalesce(i.n, o.n))::text "
                f"FROM json_array_elements(coalesce({new}, '[]')::json) WITH ORDINALITY AS i(v, n) "
                f"FULL JOIN json_array_elements(coalesce({old}, '[]')::json) WITH ORDINALITY AS o(v, n) "
                f"ON o.n = i.n WHERE {item} IS NOT NULL AND json_typeof({item}) <> 'null')")

    @classmethod
    def list_compact(cls, expr: str) -> str:
        """`expr` without its empty slots (JSON null items, after `[` or `,`), as it is stored. A null
        inside an item (`"address_line2":null`, after `:`) is no slot: matching it too rewrote every
        address list of a 1M-row batch. `%%`: a LIKE wildcard twice is one, whether or not the driver
        takes `%` for its placeholders."""
        gappy = f"({expr} LIKE '[null%%' OR {expr} LIKE '%%,null%%' OR {expr} LIKE '%%, null%%')"
        return f"CASE WHEN {gappy} THEN {cls.list_merge(expr, 'NULL')} ELSE {expr} END"

    @classmethod
    def upsert_statements(cls, entity: Entity, in_key_order: bool = False) -> list[str]:
        """Insert the batch's Created rows of `incoming_<entity>`, then update its Updated rows; an update
        never erases a value with an empty cell. Group lists arrive already merged with the stored ones by
        index (see `decide_entity`) and lose their empty slots here (`list_compact`), in the pass that
        writes them: only the rows written pay for it. Parameters `:batch_id` and `:now`.

        Two plain statements, not INSERT .. ON CONFLICT: outcomes were decided under the publish lock, so a
        Created key is absent and an Updated one present, and a plain insert skips the speculative insertion
        ON CONFLICT pays per row (a 1M-row first import: 8.9 s of upsert). Rows go in key order, so the key's
        index grows at its right edge (1M new records in a shuffled file's order: 5.2-6.8 s against 2.9-3.3 s
        sorted). Without an index on the incoming rows (`INCOMING_KEYED` false), the Created ones are those
        not among the few that are not (an anti-join: no join of every row; 3.7 s -> 2.5 s at 1M, 16 s -> 11 s
        at 4M), sorted here unless they were loaded `in_key_order` (see `decide_entity`). Otherwise (SQLite,
        whose subquery would scan the outcomes once per row) they are joined to their outcomes and sorted."""
        cols = [c for c, _ in stored_columns(entity)]
        table, key = entity.table, entity.key
        lists = [c for c in cols if c in {g.stored_as for g in entity.groups}]
        plain = [c for c in cols if c not in lists]

        def listed(items: list[str]) -> str:
            return textwrap.fill(", ".join(items), 100, subsequent_indent="    ", break_on_hyphens=False)

        # The columns in the spec's order, then the lists, each compacted on a line of its own.
        select = listed([f"s.{c}" for c in plain]) + "".join(f",\n    {cls.list_compact(f's.{c}')} AS {c}"
                                                             for c in lists)
        source = f"FROM incoming_{entity.name} s JOIN outcome_{entity.name} o ON o.rid = s.rid\n"
        if cls.INCOMING_KEYED:
            created = source + f"WHERE o.status = 'Created'\nORDER BY s.{key};\n"
        else:
            created = (f"FROM incoming_{entity.name} s\nWHERE NOT EXISTS (SELECT 1 FROM outcome_{entity.name} o "
                       "WHERE o.rid = s.rid AND o.status <> 'Created')" + ("" if in_key_order else f"\nORDER BY s.{key}")
                       + ";\n")
        insert = (f"INSERT INTO {table} (\n    {listed([*plain, *lists, *AUDIT_COLUMNS])})\n"
                  f"SELECT {select},\n    :batch_id, :batch_id, :now, :now\n" + created)
        assignments = [f"{c} = coalesce(u.{c}, {table}.{c})" for c in cols if c != key]
        assignments += ["updated_batch_id = :batch_id", "updated_at = :now"]
        update = (f"UPDATE {table} SET\n    " + ",\n    ".join(assignments) + "\n"
                  f"FROM (SELECT {select}\n{source}WHERE o.status = 'Updated') u\n"
                  f"WHERE {table}.{key} = u.{key};\n")
        return [insert, update]

    @classmethod
    def upsert_sql(cls, entity: Entity) -> str:
        """The upsert as one script (what `sql/upsert_<entity>.sql` shows)."""
        return "\n".join(cls.upsert_statements(entity))

    def decide_entity(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, entity: Entity) -> EntityOutcome:
        """Load the batch's normalized rows and decide each row's outcome against the target; nothing is
        written to the entity's table (`write_entity` does, in the same transaction).

        Leaves `outcome_<entity>` (rid, key, status, changed_fields, first_rid, message) in DuckDB; a row
        whose key resolves to the same record as an earlier row of the batch is a `Conflict`, a keyless row
        whose match key finds several stored records is `Ambiguous` (message names them). The target keeps
        the batch's `incoming_<entity>` and `outcome_<entity>` for `write_entity`.
        """
        key = entity.key
        stored = dict(stored_columns(entity))
        cols = list(stored)
        incoming = f"incoming_{entity.name}"
        self.temp_table(conn, incoming, {"rid": "bigint", "first_rid": "bigint", **stored},
                        primary_key="rid" if self.INCOMING_KEYED else None)
        # In index order, here and below: B-tree indexes then grow at their right edge instead of
        # splitting pages all over (a 1M-row log loaded in its arbitrary order took 7 s, most of it there).
        # Without an index on rid: in the entity's key order into an empty table (a first load, where
        # every row is Created: the insert then writes them as they lie), else as DuckDB produces them.
        # Sorting the batch's wide rows before the first block leaves PostgreSQL waiting (1.0-1.5 s of a
        # 1M-row load), for nothing when few rows are new (a re-import inserts none): the insert sorts
        # the rows it writes instead.
        was_empty = bool(conn.exec_driver_sql(f"SELECT NOT EXISTS (SELECT 1 FROM {entity.table})").scalar())
        order = ("ORDER BY s.rid" if self.INCOMING_KEYED else f"ORDER BY s.{key}, s.rid" if was_empty else "")
        # Each row with its key's first row of the batch (a later one is a Conflict), found by DuckDB: the
        # target's window over the key sorted 1M rows on disk first (1.4 s of a 1M-row outcome statement).
        # Only keys the batch repeats are aggregated (a window here carried every column through it: +1.3 s
        # to the load). NULL for a keyless row, whose key the target may yet resolve.
        repeated = (f"SELECT {key}, min(rid) AS first_rid FROM {entity.table} WHERE {key} IS NOT NULL "
                    f"GROUP BY {key} HAVING count(*) > 1")
        self.load(conn, duck, f"SELECT s.rid, CASE WHEN s.{key} IS NOT NULL THEN coalesce(r.first_rid, s.rid) END "
                              f"AS first_rid, {', '.join(f's.{c}' for c in cols)} FROM {entity.table} s "
                              f"LEFT JOIN ({repeated}) r ON r.{key} = s.{key} {order}",
                  incoming, ["rid", "first_rid", *cols])
        self.analyze(conn, incoming)
        outcome = f"outcome_{entity.name}"
        candidates = f"candidates_{entity.name}"
        self.temp_table(conn, candidates, {"rid": "bigint", "n": "bigint", "only_key": "text", "keys": "text"},
                        primary_key="rid")
        if entity.match_on:
            # No key: the one stored member with the same match key, else a key derived from it. Two or
            # more stored members with that match key: the row is Ambiguous, applied to none of them.
            conn.exec_driver_sql(f"""
                INSERT INTO {candidates} (rid, n, only_key, keys)
                SELECT rid, count(*), min(k), {self.list_agg('k')}
                FROM (SELECT s.rid, t.{key} AS k FROM {incoming} s JOIN {entity.table} t ON t.match_key = s.match_key
                      WHERE s.{key} IS NULL ORDER BY s.rid, t.{key}) m
                GROUP BY rid""")
            conn.exec_driver_sql(f"""
                UPDATE {incoming} SET {key} = coalesce(
                    (SELECT c.only_key FROM {candidates} c WHERE c.rid = {incoming}.rid),
                    {derived_key_sql('match_key')})
                WHERE {key} IS NULL AND rid NOT IN (SELECT rid FROM {candidates} WHERE n > 1)""")
            # A key a keyless row resolved to: its first row again, over the rows that now share it.
            conn.exec_driver_sql(f"""
                UPDATE {incoming} SET first_rid = f.first_rid
                FROM (SELECT {key}, min(rid) AS first_rid FROM {incoming} WHERE {key} IN
                          (SELECT {key} FROM {incoming} WHERE first_rid IS NULL AND {key} IS NOT NULL)
                      GROUP BY {key}) f
                WHERE {incoming}.{key} = f.{key}""")
        lists = [g.stored_as for g in entity.groups]
        compared = [c for c in cols if c not in (key, "match_key", *lists)]
        changed = " || ".join(
            [f"CASE WHEN s.{c} IS NOT NULL AND s.{c} IS DISTINCT FROM t.{c} THEN '{c},' ELSE '' END" for c in compared]
            # A list is compared item by item only when it differs as a whole (most rows of a re-import
            # do not; each item is a JSON parse per side).
            + [f"CASE WHEN s.{c} IS NOT NULL AND {self.lists_differ(f's.{c}', f't.{c}')} THEN "
               + " || ".join(f"CASE WHEN {self.list_item(f's.{c}', n)} IS NOT NULL AND {self.list_item(f's.{c}', n)} "
                             f"IS DISTINCT FROM {self.list_item(f't.{c}', n)} THEN '{c}[{n + 1}],' ELSE '' END"
                             for n in range(MAX_GROUP_INDEX))
               + " ELSE '' END" for c in lists]
        )
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {outcome}")
        # A found record is Updated or Unchanged by its changed fields, decided in the same pass (a
        # second pass over the outcomes rewrote every row of a 1M-row re-import: 0.5-0.7 s).
        conn.exec_driver_sql(f"""
            CREATE TEMPORARY TABLE {outcome} AS
            SELECT rid, key,
                   CASE WHEN status <> 'Found' THEN status
                        WHEN changed_fields = '' THEN 'Unchanged' ELSE 'Updated' END AS status,
                   changed_fields, first_rid, message
            FROM (SELECT s.rid, s.{key} AS key,
                         CASE WHEN s.{key} IS NULL THEN 'Ambiguous'
                              WHEN s.first_rid <> s.rid THEN 'Conflict'
                              WHEN t.{key} IS NULL THEN 'Created' ELSE 'Found' END AS status,
                         CASE WHEN t.{key} IS NULL THEN '' ELSE {changed} END AS changed_fields,
                         coalesce(s.first_rid, s.rid) AS first_rid,
                         CASE WHEN s.{key} IS NULL THEN 'error: {key}: no {key}, and the name, birth date and '
                              || 'sex match ' || c.n || ' stored records ({key} ' || c.keys || '); send the '
                              || '{key} of the right one' END AS message
                  FROM {incoming} s
                  LEFT JOIN {entity.table} t ON t.{key} = s.{key}
                  LEFT JOIN {candidates} c ON c.rid = s.rid) decided""")
        self.analyze(conn, outcome)
        if entity.match_on:
            # A key that finds one record while the name, birth date and sex match another: say so.
            # One join for the batch (a correlated lookup per row took most of a 1M-row re-import).
            # Only rows that found their record (a first import's Created rows skip the join).
            conn.exec_driver_sql(f"""
                UPDATE {outcome} SET message = 'warning: {key}: the name, birth date and sex also match '
                    || 'the stored record with {key} ' || w.keys || '; check this is the same patient'
                FROM (SELECT rid, {self.list_agg('k')} AS keys
                      FROM (SELECT s.rid, t.{key} AS k FROM {outcome} o JOIN {incoming} s ON s.rid = o.rid
                            JOIN {entity.table} t ON t.match_key = s.match_key AND t.{key} <> s.{key}
                            WHERE o.status IN ('Updated', 'Unchanged')
                            ORDER BY s.rid, t.{key}) m
                      GROUP BY rid) w
                WHERE w.rid = {outcome}.rid""")
        if lists:
            # Lists merge by index: the row's Nth item replaces the stored Nth, an empty slot keeps it.
            # Only for the rows to update, where both sides hold a list and they differ: a new record has
            # nothing to merge with, an Unchanged one is not written (a 1M-row re-import joined every
            # row to find none: 1.3-1.5 s), an empty cell keeps the stored list anyway (the upsert's
            # coalesce), an equal list is itself.
            differs = {c: f"{incoming}.{c} IS NOT NULL AND t.{c} IS NOT NULL AND "
                          f"{self.lists_differ(f'{incoming}.{c}', f't.{c}')}" for c in lists}
            conn.exec_driver_sql(
                f"UPDATE {incoming} SET " + ", ".join(
                    f"{c} = CASE WHEN {differs[c]} THEN {self.list_merge(f'{incoming}.{c}', f't.{c}')} "
                    f"ELSE {incoming}.{c} END" for c in lists)
                + f" FROM {entity.table} t WHERE t.{key} = {incoming}.{key}"
                + f" AND {incoming}.rid IN (SELECT rid FROM {outcome} WHERE status = 'Updated') AND ("
                + " OR ".join(f"({d})" for d in differs.values()) + ")")
        self.fetch(conn, duck, f"SELECT rid, key, status, changed_fields, first_rid, message FROM {outcome}",
                   outcome, {"rid": "BIGINT", "key": "VARCHAR", "status": "VARCHAR", "changed_fields": "VARCHAR",
                             "first_rid": "BIGINT", "message": "VARCHAR"})
        counts = dict(duck.execute(f"SELECT status, count(*) FROM {outcome} GROUP BY status").fetchall())
        return EntityOutcome(entity.name, counts.get("Created", 0), counts.get("Updated", 0),
                             counts.get("Unchanged", 0), counts.get("Conflict", 0) + counts.get("Ambiguous", 0),
                             was_empty)

    def write_entity(self, conn: sa.Connection, entity: Entity, decided: EntityOutcome, batch_id: str,
                     now: str) -> None:
        """Insert the Created rows and update the Updated ones that `decide_entity` left in the target."""
        # A statement only where it has rows to write: a re-import's insert of no new record still
        # read every incoming row to find none (0.6 s at 1M).
        rebuild = self._defer_indexes(conn, entity, decided)
        # Loaded in key order into an empty table (decide_entity); SQLite's insert sorts them anyway.
        insert, update = self.upsert_statements(entity, in_key_order=decided.was_empty)
        for statement in [insert] * bool(decided.created) + [update] * bool(decided.updated):
            conn.execute(sa.text(statement), {"batch_id": batch_id, "now": now})
        for statement in rebuild:
            conn.exec_driver_sql(statement)

    def _defer_indexes(self, conn: sa.Connection, entity: Entity, decided: EntityOutcome) -> list[str]:
        """Into an empty table, a large batch is inserted before its secondary indexes exist (built once
        after, in the same transaction: ~3x faster than maintaining a hash-ordered index row by row).
        Returns the statements that build them again. A table with rows keeps its indexes: dropping them
        would lock out its readers until the commit."""
        table = entity_table(entity)
        if not table.indexes or decided.created < DEFER_INDEXES_FROM_ROWS or not decided.was_empty:
            return []
        for index in table.indexes:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
        return [self.create_index_statement(table, index) for index in table.indexes]

    # -- the logs ---------------------------------------------------------------------------------------

    def write_logs(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, row_log_query: str,
                   batch_row: dict) -> None:
        """In the publish transaction: the run's row log and outcome into the history (`import_run_row`,
        `import_run`) and the batch's row, which now names this run's row log as its latest (`import_row`).
        `row_log_query` gives the rows in the history's key order (entity, file_index, row_number): they
        are loaded as they come, and the key's index grows at its right edge."""
        run_id, batch_id = batch_row["run_id"], batch_row["batch_id"]
        # The batch's row log: its batch_id is the batch's, on every row, as is the run's id.
        varying = [c for c in ROW_LOG_COLUMNS if c != "batch_id"]
        rows = f"SELECT {', '.join(varying)} FROM ({row_log_query})"
        self.load(conn, duck, rows, "import_run_row", varying, constants={"run_id": run_id, "batch_id": batch_id})
        self.write_batch_row(conn, batch_row)
        conn.execute(sa.text("UPDATE import_batch SET row_log_run_id = :r WHERE batch_id = :b"),
                     {"r": run_id, "b": batch_id})

    def record_batch(self, batch_row: dict, entities: list[Entity]) -> None:
        """A batch log row alone, in a transaction of its own (a batch that failed before publish). The
        schema is migrated as far as it can be: an entity table that differs from the spec does not stop
        the batch, which may have failed for that very reason, from being recorded."""
        with self.begin() as conn:
            self.serialize_publishes(conn)
            try:
                self.migrate(conn, entities)
            except TargetSchemaError:  # raised before anything was applied
                self.migrate(conn, [])
            self.write_batch_row(conn, batch_row)

    def write_batch_row(self, conn: sa.Connection, batch_row: dict) -> None:
        """The batch's row and, for a run that ended, its row in the history (`import_run`)."""
        row = {"run_id": None, "status_at": batch_row.get("finished_at"), **batch_row}
        conn.execute(sa.text((SQL_DIR / "upsert_batch_log.sql").read_text()), row)
        if row["run_id"] and row.get("finished_at"):
            conn.execute(sa.text((SQL_DIR / "upsert_run_log.sql").read_text()), row)

    def latest_run(self, conn: sa.Connection, batch_id: str) -> dict | None:
        """The batch's last run recorded in the history (committed with its data), or None."""
        found = conn.execute(sa.text(
            "SELECT run_id, status, reason, created, updated, unchanged, errored, results_file, finished_at "
            "FROM import_run WHERE batch_id = :b ORDER BY finished_at DESC, run_id DESC LIMIT 1"),
            {"b": batch_id}).mappings().first()
        return dict(found) if found else None

    def fetch_run_rows(self, conn: sa.Connection, duck: duckdb.DuckDBPyConnection, run_id: str, into: str) -> None:
        """A run's row log from the history into a DuckDB table (the shape publish writes)."""
        self.fetch(conn, duck, f"SELECT {', '.join(ROW_LOG_COLUMNS)} FROM import_run_row WHERE run_id = "
                               f"'{run_id.replace(chr(39), '')}'", into, ROW_LOG_TYPES)

    def record_status(self, batch_row: dict, entities: list[Entity]) -> None:
        """The batch's row at a stage of its lifecycle (Received, Landed, Staged, Checked, Publishing): its
        status, run and time; its counts stay its last finished run's. A short transaction that does not
        wait for other batches' publishes (it takes the publish lock only to create the log tables)."""
        with self.begin() as conn:
            if IMPORT_BATCH.name not in self._migrated:
                found = self.catalog(conn).get(IMPORT_BATCH.name)
                if found is None or not {c.name for c in IMPORT_BATCH.columns} <= set(found.columns):
                    self.serialize_publishes(conn)
                    try:
                        self.migrate(conn, entities)
                    except TargetSchemaError:
                        self.migrate(conn, [])
                self._migrated.add(IMPORT_BATCH.name)
            conn.execute(sa.text((SQL_DIR / "upsert_batch_status.sql").read_text()), batch_row)


ROW_LOG_TYPES = {"batch_id": "VARCHAR", "file_index": "INTEGER", "row_number": "BIGINT", "entity": "VARCHAR",
                 "external_id": "VARCHAR", "status": "VARCHAR", "messages": "VARCHAR", "changed_fields": "VARCHAR"}
ROW_LOG_COLUMNS = list(ROW_LOG_TYPES)  # a row log's columns, in the order publish builds them
