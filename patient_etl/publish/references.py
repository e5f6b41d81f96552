"""Referential integrity across a batch and the target, decided inside the publish transaction.

A reference resolves to a good row of the same batch or to a row the target already holds. A child
whose parent row is Errored in this batch is Errored too, saying so, and so on down the references.
Results go to `ref_messages(entity, rid, severity, message)` in the publish DuckDB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import Entity

if TYPE_CHECKING:  # the target's implementations (and SQLAlchemy) load when a publish opens one
    import sqlalchemy as sa

    from patient_etl.target.base import Target


def target_lookup(conn: sa.Connection, target: Target, duck: duckdb.DuckDBPyConnection, values_query: str,
                  table: str, key: str, into: str, extra: dict[str, str] | None = None) -> None:
    """`into(key, *extra)`: the keys of `values_query` that `table` in the target holds."""
    extra = extra or {}
    target.temp_table(conn, "ref_lookup", {"key": "text"}, primary_key="key")
    target.load(conn, duck, values_query, "ref_lookup", ["key"])
    columns = "".join(f", t.{c}" for c in extra)
    target.fetch(conn, duck, f"SELECT l.key{columns} FROM ref_lookup l JOIN {table} t ON t.{key} = l.key", into,
                 {"key": "VARCHAR", **extra})


def check_references(conn: sa.Connection, target: Target, duck: duckdb.DuckDBPyConnection,
                     entities: list[Entity]) -> None:
    """Fill `ref_messages`; `entities` in publish order, each normalized as `ent_<name>.<name>`."""
    duck.execute("CREATE OR REPLACE TABLE ref_messages (entity VARCHAR, rid BIGINT, severity VARCHAR, "
                 "message VARCHAR)")
    present = {e.name for e in entities}
    for entity in entities:
        for ref in entity.references:
            parent = ENTITIES[ref.entity]
            child = f"ent_{entity.name}.{entity.table}"
            good, bad = f"good_{entity.name}_{ref.field}", f"bad_{entity.name}_{ref.field}"
            checked_cols = {r[0] for r in duck.execute(
                f"SELECT * FROM checks.checked_{parent.name} LIMIT 0").description} if ref.entity in present else set()
            if f"{parent.key}__value" in checked_cols:
                duck.execute(f"""
                    CREATE OR REPLACE TEMP TABLE {good} AS
                    SELECT {parent.key} AS key FROM ent_{parent.name}.{parent.table} p
                    WHERE {parent.key} IS NOT NULL
                      AND p.rid NOT IN (SELECT rid FROM ref_messages WHERE entity = '{parent.name}'
                                        AND severity = 'error')""")
                duck.execute(f"""
                    CREATE OR REPLACE TEMP TABLE {bad} AS
                    SELECT c.{parent.key}__value AS key, min(c.row_number) AS row_number
                    FROM checks.checked_{parent.name} c
                    WHERE c.{parent.key}__value IS NOT NULL AND c.{parent.key}__value NOT IN (SELECT g.key FROM {good} g)
                      AND (c.rid IN (SELECT rid FROM checks.row_outcome_{parent.name} WHERE errored)
                           OR c.rid IN (SELECT rid FROM ref_messages WHERE entity = '{parent.name}'
                                        AND severity = 'error'))
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
    _payments_over_billed(conn, target, duck, present)


def _payments_over_billed(conn: sa.Connection, target: Target, duck: duckdb.DuckDBPyConnection,
                          present: set[str]) -> None:
    """A warning on each payment of a claim whose payments add up to more than it billed."""
    if "eop" not in present:
        return
    claims = "(SELECT claim_id, billed_amount FROM ent_claim.claim)" if "claim" in present else \
        "(SELECT NULL::VARCHAR AS claim_id, NULL::DECIMAL(14,2) AS billed_amount WHERE false)"
    target_lookup(conn, target, duck, f"SELECT DISTINCT claim_id AS key FROM ent_eop.eop WHERE claim_id NOT IN "
                                      f"(SELECT claim_id FROM {claims})",
                  "claim", "claim_id", "target_claims", {"billed_amount": "DECIMAL(14,2)"})
    # What earlier batches already paid on those claims (this batch's own payments not counted twice).
    target.temp_table(conn, "ref_batch_eops", {"eop_id": "text"}, primary_key="eop_id")
    target.load(conn, duck, "SELECT DISTINCT eop_id FROM ent_eop.eop", "ref_batch_eops", ["eop_id"])
    target.temp_table(conn, "ref_lookup", {"key": "text"}, primary_key="key")
    target.load(conn, duck, "SELECT DISTINCT claim_id AS key FROM ent_eop.eop", "ref_lookup", ["key"])
    target.fetch(conn, duck, """
        SELECT e.claim_id, sum(e.paid_amount) FROM eop e JOIN ref_lookup l ON l.key = e.claim_id
        WHERE NOT EXISTS (SELECT 1 FROM ref_batch_eops b WHERE b.eop_id = e.eop_id) GROUP BY e.claim_id""",
                 "target_paid", {"claim_id": "VARCHAR", "paid": "DECIMAL(18,2)"})
    duck.execute(f"""
        INSERT INTO ref_messages
        SELECT 'eop', e.rid, 'warning',
               'warning: paid_amount: payments on claim ' || e.claim_id || ' add up to ' || t.paid
               || ', more than its billed amount ' || b.billed_amount
        FROM ent_eop.eop e
        JOIN (SELECT claim_id, sum(paid_amount) + coalesce(any_value(p.paid), 0) AS paid FROM ent_eop.eop
              LEFT JOIN target_paid p USING (claim_id)
              WHERE rid NOT IN (SELECT rid FROM ref_messages WHERE entity = 'eop' AND severity = 'error')
              GROUP BY claim_id) t USING (claim_id)
        JOIN (SELECT * FROM {claims} UNION ALL SELECT key, billed_amount FROM target_claims) b USING (claim_id)
        WHERE t.paid > b.billed_amount
          AND e.rid NOT IN (SELECT rid FROM ref_messages WHERE entity = 'eop' AND severity = 'error')""")
