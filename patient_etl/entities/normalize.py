"""Normalization, derived from the entity spec (the target's tables are derived in `patient_etl.target`).

The normalized table holds the rows that passed their checks, typed, with groups folded into JSON
lists, unknown columns kept in `extra`, and, for entities that match without a key, `match_key`.
"""

from __future__ import annotations

import duckdb

from patient_etl.duck import scalar
from patient_etl.entities.spec import Entity


def _name_part(expr: str) -> str:
    return f"coalesce(regexp_replace(lower(strip_accents({expr})), '[^a-z0-9]', '', 'g'), '')"


def match_key_sql(entity: Entity, column: str = "{name}") -> str:
    """Documented identity for rows without a key: md5 of the normalized match fields, `|`-joined.

    Names are lower-cased, accents stripped and everything but letters and digits dropped.
    `column` places each field's name in the column that holds it (`{name}__value` when checking).
    """
    parts = []
    for name in entity.match_on:
        col = column.format(name=name)
        kind = entity.field(name).kind.name
        parts.append(_name_part(col) if kind == "text" else f"coalesce(CAST({col} AS VARCHAR), '')")
    return "md5(" + " || '|' || ".join(parts) + ")"


def normalize(con: duckdb.DuckDBPyConnection, entity: Entity, checked: str, outcome: str) -> int:
    """Create `<entity>` in `con` from the checked rows that did not error; return its row count."""
    available = {r[0] for r in con.execute(f"SELECT * FROM {checked} LIMIT 0").description}
    typed: dict[str, str] = {}
    for f in entity.fields:
        if f"{f.name}__value" in available:
            expr = f.kind.normalize_sql.format(value=f"c.{f.name}__value")
            typed[f.name] = f"CAST({expr} AS {f.kind.sql_type})"
        else:
            typed[f.name] = f"CAST(NULL AS {f.kind.sql_type})"
    groups = {}
    for group in entity.groups:
        items = []
        for index in range(11):
            members = [(f, group.column(f.name, index)) for f in group.fields]
            if not any(f"{col}__value" in available for _, col in members):
                continue
            values = [
                (f.name, f.kind.normalize_sql.format(value=f"c.{col}__value") if f"{col}__value" in available
                 else "NULL")
                for f, col in members
            ]
            items.append(values[0][1] if len(values) == 1 else
                         "struct_pack(" + ", ".join(f"{n} := {v}" for n, v in values) + ")")
        if not items:
            groups[group.stored_as] = "CAST(NULL AS VARCHAR)"
            continue
        test = "x IS NOT NULL" if len(group.fields) == 1 else " OR ".join(
            f"x.{f.name} IS NOT NULL" for f in group.fields)
        listed = f"list_filter([{', '.join(items)}], lambda x: {test})"
        groups[group.stored_as] = f"CASE WHEN len({listed}) > 0 THEN CAST(to_json({listed}) AS VARCHAR) END"
    selects = [f"{expr} AS {name}" for name, expr in typed.items()]
    selects += [f"{expr} AS {name}" for name, expr in groups.items()]
    selects.append("CAST(c.extra AS VARCHAR) AS extra")
    con.execute(f"""
        CREATE OR REPLACE TABLE {entity.table} AS
        SELECT *{f", {match_key_sql(entity)} AS match_key" if entity.match_on else ""}
        FROM (SELECT c.rid, c.file_index, c.row_number, {', '.join(selects)}
              FROM {checked} c JOIN {outcome} o USING (rid)
              WHERE NOT o.errored)
    """)
    return scalar(con, f"SELECT count(*) FROM {entity.table}")
