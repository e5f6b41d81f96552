"""Referential integrity across a batch and the target, decided inside the publish transaction.

A reference resolves to a good row of the same batch or to a row the target already holds. A child
whose parent row is Errored in this batch is Errored too, saying so, and so on down the references.
The spec's totals rules (`TotalNotAbove`: payments on a claim within its billed amount) run here
too, since they count what the target already holds. Results go to `ref_messages(entity, rid,
severity, message)` in the publish database.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

import duckdb

from patient_etl.duck import sql_literal
from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import Entity, TotalNotAbove
from patient_etl.workspace import StageDb, checked_value

if TYPE_CHECKING:  # the target's implementations (and SQLAlchemy) load when a publish opens one
    import sqlalchemy as sa

    from patient_etl.target.base import Target

_NOT_ERRORED = "rid NOT IN (SELECT rid FROM ref_messages WHERE entity = '{entity}' AND severity = 'error')"


def target_lookup(conn: sa.Connection, target: Target, duck: duckdb.DuckDBPyConnection, values_query: str,
                  table: str, key: str, into: str, extra: dict[str, str] | None = None) -> None:
    """`into(key, *extra)`: the keys of `values_query` that `table` in the target holds."""
    extra = extra or {}
    target.temp_table(conn, "ref_lookup", {"key": "text"}, primary_key="key")
    target.load(conn, duck, values_query, "ref_lookup", ["key"])
    columns = "".join(f", t.{c}" for c in extra)
    target.fetch(conn, duck, f"SELECT l.key{columns} FROM ref_lookup l JOIN {table} t ON t.{key} = l.key", into,
                 {"key": "VARCHAR", **extra})


def check_references(conn: sa.Connection, target: Target, db: StageDb, entities: list[Entity]) -> None:
    """Fill `ref_messages`; `entities` in publish order."""
    duck = db.con
    duck.execute("CREATE OR REPLACE TABLE ref_messages (entity VARCHAR, rid BIGINT, severity VARCHAR, "
                 "message VARCHAR)")
    present = {e.name for e in entities}
    for entity in entities:
        for ref in entity.references:
            parent = ENTITIES[ref.entity]
            child = db.normalized(entity.name)
            good, bad = f"good_{entity.name}_{ref.field}", f"bad_{entity.name}_{ref.field}"
            parent_checked = db.checked(parent.name) if ref.entity in present else None
            checked_cols = {r[0] for r in duck.execute(f"SELECT * FROM {parent_checked} LIMIT 0").description} \
                if parent_checked else set()
            parent_key = checked_value(parent.key)
            if parent_key in checked_cols:
                duck.execute(f"""
                    CREATE OR REPLACE TEMP TABLE {good} AS
                    SELECT {parent.key} AS key FROM {db.normalized(parent.name)} p
                    WHERE {parent.key} IS NOT NULL AND p.{_NOT_ERRORED.format(entity=parent.name)}""")
                duck.execute(f"""
                    CREATE OR REPLACE TEMP TABLE {bad} AS
                    SELECT c.{parent_key} AS key, min(c.row_number) AS row_number
                    FROM {parent_checked} c
                    WHERE c.{parent_key} IS NOT NULL AND c.{parent_key} NOT IN (SELECT g.key FROM {good} g)
                      AND (c.rid IN (SELECT rid FROM {db.outcome(parent.name)} WHERE errored)
                           OR NOT c.{_NOT_ERRORED.format(entity=parent.name)})
                    GROUP BY 1""")
            else:
                duck.execute(f"CREATE OR REPLACE TEMP TABLE {good} (key VARCHAR)")
                duck.execute(f"CREATE OR REPLACE TEMP TABLE {bad} (key VARCHAR, row_number BIGINT)")
            found = f"found_{entity.name}_{ref.field}"
            target_lookup(conn, target, duck, f"""
                SELECT DISTINCT {ref.field} AS key FROM {child}
                WHERE {ref.field} IS NOT NULL AND {ref.field} NOT IN (SELECT g.key FROM {good} g)""",
                parent.table, parent.key, found)
            duck.execute(f"""
                INSERT INTO ref_messages
                SELECT '{entity.name}', c.rid, 'error',
                       CASE WHEN b.key IS NOT NULL
                            THEN 'error: {ref.field}: its {parent.name} ' || c.{ref.field} || ' (row '
                                 || b.row_number || ') is Errored'
                            ELSE 'error: {ref.field}: no {parent.name} ' || c.{ref.field}
                                 || ' in this batch or the target' END
                FROM {child} c
                LEFT JOIN {bad} b ON b.key = c.{ref.field}
                WHERE c.{ref.field} IS NOT NULL
                  AND (b.key IS NOT NULL OR (c.{ref.field} NOT IN (SELECT g.key FROM {good} g)
                                             AND c.{ref.field} NOT IN (SELECT f.key FROM {found} f)))""")
    for entity in entities:
        for rule in entity.totals:
            _total_not_above(conn, target, db, entity, rule, present)


def _says_sql(says: str, values: dict[str, str]) -> str:
    """A rule's message template as a SQL string expression, its placeholders filled from `values`."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(says):
        if literal:
            parts.append(sql_literal(literal))
        if name:
            parts.append(f"CAST({values[name]} AS VARCHAR)")
    return " || ".join(parts)


def _total_not_above(conn: sa.Connection, target: Target, db: StageDb, entity: Entity, rule: TotalNotAbove,
                     present: set[str]) -> None:
    """Each good row of `entity` whose parent's amounts (this batch plus earlier batches) exceed the
    parent's limit gets the rule's message."""
    duck = db.con
    parent = ENTITIES[next(r.entity for r in entity.references if r.field == rule.reference)]
    rows, ref, amount, limit = db.normalized(entity.name), rule.reference, rule.amount, rule.limit
    limit_type = parent.field(limit).kind.sql_type
    parents = f"(SELECT {parent.key} AS key, {limit} AS limit_value FROM {db.normalized(parent.name)})" \
        if parent.name in present else f"(SELECT NULL::VARCHAR AS key, NULL::{limit_type} AS limit_value WHERE false)"
    held, paid = f"target_{parent.name}_{limit}", f"target_{entity.name}_{amount}"
    target_lookup(conn, target, duck, f"SELECT DISTINCT {ref} AS key FROM {rows} WHERE {ref} NOT IN "
                                      f"(SELECT key FROM {parents})",
                  parent.table, parent.key, held, {limit: limit_type})
    # What earlier batches already hold against those parents (this batch's own rows not counted twice).
    batch_keys = f"ref_batch_{entity.name}"
    target.temp_table(conn, batch_keys, {entity.key: "text"}, primary_key=entity.key)
    target.load(conn, duck, f"SELECT DISTINCT {entity.key} FROM {rows}", batch_keys, [entity.key])
    target.temp_table(conn, "ref_lookup", {"key": "text"}, primary_key="key")
    target.load(conn, duck, f"SELECT DISTINCT {ref} AS key FROM {rows}", "ref_lookup", ["key"])
    target.fetch(conn, duck, f"""
        SELECT e.{ref}, sum(e.{amount}) FROM {entity.table} e JOIN ref_lookup l ON l.key = e.{ref}
        WHERE NOT EXISTS (SELECT 1 FROM {batch_keys} b WHERE b.{entity.key} = e.{entity.key}) GROUP BY e.{ref}""",
                 paid, {"key": "VARCHAR", "total": "DECIMAL(18,2)"})
    good = _NOT_ERRORED.format(entity=entity.name)
    message = _says_sql(rule.says, {"key": f"e.{ref}", "total": "t.total", "limit": "p.limit_value"})
    duck.execute(f"""
        INSERT INTO ref_messages
        SELECT '{entity.name}', e.rid, '{rule.severity}', '{rule.severity}: {amount}: ' || {message}
        FROM {rows} e
        JOIN (SELECT {ref} AS key, sum({amount}) + coalesce(any_value(t.total), 0) AS total FROM {rows}
              LEFT JOIN {paid} t ON t.key = {ref}
              WHERE {good}
              GROUP BY {ref}) t ON t.key = e.{ref}
        JOIN (SELECT * FROM {parents} UNION ALL SELECT key, {limit} FROM {held}) p ON p.key = e.{ref}
        WHERE t.total > p.limit_value AND e.{good}""")
