"""Normalization: the checked rows that did not error, typed, with groups folded into positional JSON lists,
unknown columns kept in `extra`, and, for entities that match without a key, `match_key`."""

from __future__ import annotations

from patient_etl.duck import scalar
from patient_etl.entities.kinds import hash_column
from patient_etl.entities.spec import MAX_GROUP_INDEX, Entity, match_key_sql
from patient_etl.workspace import StageDb, checked_value


def normalize(db: StageDb, entity: Entity) -> int:
    """Create the entity's table in its own database from the checked rows that did not error; return
    its row count."""
    con, checked, outcome, table = db.con, db.checked(entity.name), db.outcome(entity.name), db.normalized(entity.name)
    available = {r[0] for r in con.execute(f"SELECT * FROM {checked} LIMIT 0").description}
    typed: dict[str, str] = {}
    for f in entity.fields:
        if checked_value(f.name) in available:
            expr = f.kind.normalize_sql.format(value=f"c.{checked_value(f.name)}")
            typed[f.name] = f"CAST({expr} AS {f.kind.sql_type})"
        else:
            typed[f.name] = f"CAST(NULL AS {f.kind.sql_type})"
    for f in entity.fields:
        if f.kind.hash_sql:
            typed[hash_column(f.name)] = (f.kind.hash_sql.format(value=f"c.{checked_value(f.name)}")
                                          if checked_value(f.name) in available else "CAST(NULL AS VARCHAR)")
    groups = {}
    for group in entity.groups:
        # Positional: the list's Nth item is the row's Nth slot (plain or -1 is the first, -N the Nth),
        # JSON null where the row has no value, so publish can merge it into the stored list by index.
        slots: dict[int, list[str]] = {}
        for index in range(MAX_GROUP_INDEX + 1):
            members = [(f, group.column(f.name, index)) for f in group.fields]
            if not any(checked_value(col) in available for _, col in members):
                continue
            values = [
                (f.name, f.kind.normalize_sql.format(value=f"c.{checked_value(col)}") if checked_value(col) in available
                 else "NULL")
                for f, col in members
            ]
            if len(values) == 1:
                item = values[0][1]
            else:
                item = (f"CASE WHEN {' OR '.join(f'({v}) IS NOT NULL' for _, v in values)} THEN struct_pack("
                        + ", ".join(f"{n} := {v}" for n, v in values) + ") END")
            slots.setdefault(max(index, 1), []).append(item)
        if not slots:
            groups[group.stored_as] = "CAST(NULL AS VARCHAR)"
            continue
        items = {slot: f"coalesce({', '.join(found)})" for slot, found in slots.items()}
        last = "greatest(" + ", ".join(f"CASE WHEN {item} IS NOT NULL THEN {slot} ELSE 0 END"
                                       for slot, item in items.items()) + ", 0)"
        listed = "[" + ", ".join(items.get(slot, "NULL") for slot in range(1, max(items) + 1)) + "]"
        groups[group.stored_as] = (f"CASE WHEN {last} > 0 THEN CAST(to_json(list_slice({listed}, 1, {last})) "
                                   "AS VARCHAR) END")
    selects = [f"{expr} AS {name}" for name, expr in typed.items()]
    selects += [f"{expr} AS {name}" for name, expr in groups.items()]
    selects.append("CAST(c.extra AS VARCHAR) AS extra")
    con.execute(f"""
        CREATE OR REPLACE TABLE {table} AS
        SELECT *{f", {match_key_sql(entity)} AS match_key" if entity.match_on else ""}
        FROM (SELECT c.rid, c.file_index, c.row_number, {', '.join(selects)}
              FROM {checked} c
              WHERE c.rid NOT IN (SELECT rid FROM {outcome} WHERE errored))
    """)
    return scalar(con, f"SELECT count(*) FROM {table}")
