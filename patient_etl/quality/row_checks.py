"""Row checks for one entity of a batch: the GX suite per row, then the cross-row rules in SQL.

Writes, in the batch's checks database (names from the workspace): the checked rows (each field's
raw text and candidate value), the row messages (one row per message) and the row outcomes (errored
flag and the joined messages per row). Validation never halts the batch; only a check that cannot
run does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from patient_etl.duck import first_row, scalar
from patient_etl.entities.spec import MESSAGES_HEADERS, Entity, match_key_sql
from patient_etl.quality.suites import group_indexes, rules_for, validate
from patient_etl.workspace import StageDb, checked_number, checked_value

CHUNK_ROWS = 1_000_000  # per-validation overhead is fixed; ~350 MB of Arrow-backed frame at 1M rows
_META = ("rid", "file_index", "row_number", "extra", "width_error")


@dataclass
class CheckSummary:
    entity: str
    rows: int = 0
    errored_rows: int = 0
    warned_rows: int = 0
    failures_by_rule: Counter = field(default_factory=Counter)


def staged_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    names = [r[0] for r in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
    return [n for n in names if n not in _META]


def _checked_select(entity: Entity, present: list[str]) -> tuple[str, list[str]]:
    by_name = {c.name: c for c in entity.columns()}
    wanted = list(present)
    for group, index in group_indexes(entity, present):
        wanted += [c for f in group.fields if (c := group.column(f.name, index)) not in wanted]
    parts = ["rid", "file_index", "row_number", "extra", "width_error"]
    for name in wanted:
        kind = by_name[name].field.kind
        raw = name if name in present else "CAST(NULL AS VARCHAR)"
        value = kind.value_sql.format(v=raw)
        parts += [f"{raw} AS {name}", f"{value} AS {checked_value(name)}"]
        if kind.number_sql:
            parts.append(f"{kind.number_sql.format(value=value)} AS {checked_number(name)}")
    frame_columns = [p.rsplit(" AS ", 1)[-1] for p in parts[5:]]
    return ", ".join(parts), frame_columns


def _frames(con: duckdb.DuckDBPyConnection, table: str, columns: list[str]) -> Iterator[pd.DataFrame]:
    reader = con.cursor().sql(
        f"SELECT rid, {', '.join(columns)} FROM {table} WHERE width_error IS NULL ORDER BY rid"
    ).to_arrow_reader(CHUNK_ROWS)
    for batch in reader:
        yield batch.to_pandas(types_mapper=pd.ArrowDtype)


def run_row_checks(db: StageDb, entity: Entity, relaxed: frozenset[str] = frozenset()) -> CheckSummary:
    """`db` is the batch's checks database."""
    con, staged_table, messages = db.con, db.staged(entity.name), db.row_messages
    present = staged_columns(con, staged_table)
    select, frame_columns = _checked_select(entity, present)
    checked = db.checked(entity.name)
    con.execute(f"CREATE OR REPLACE TABLE {checked} AS SELECT {select} FROM {staged_table}")
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {messages} (entity VARCHAR, rid BIGINT, severity VARCHAR, label VARCHAR, "
        "message VARCHAR, rule INTEGER)"
    )
    summary = CheckSummary(entity.name, scalar(con, f"SELECT count(*) FROM {checked}"))

    rules = rules_for(entity, present, relaxed)
    for index, rids in validate(_frames(con, checked, frame_columns), rules, entity.name):
        rule = rules[index]
        summary.failures_by_rule[f"{rule.label} {rule.message}"] += len(rids)
        failing = pd.DataFrame({"rid": pd.array(rids, dtype="int64")})
        con.register("failing", failing)
        con.execute(
            f"INSERT INTO {messages} SELECT ?, rid, ?, ?, ?, ? FROM failing",
            [entity.name, rule.severity, rule.label, rule.message, index],
        )
        con.unregister("failing")

    _cross_row_checks(db, entity, present, len(rules))
    outcome = db.outcome(entity.name)
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {outcome} AS
        SELECT c.rid, c.file_index, c.row_number, coalesce(m.errored, false) AS errored,
               coalesce(m.warned, false) AS warned, m.messages
        FROM {checked} c
        LEFT JOIN (SELECT rid, bool_or(severity = 'error') AS errored, bool_or(severity = 'warning') AS warned,
                          string_agg(severity || ': ' || label || ': ' || message, '; '
                                     ORDER BY severity, rule, label) AS messages
                   FROM {messages} WHERE entity = '{entity.name}' GROUP BY rid) m USING (rid)
        """
    )
    summary.errored_rows, summary.warned_rows = first_row(
        con, f"SELECT count(*) FILTER (errored), count(*) FILTER (warned AND NOT errored) FROM {outcome}"
    )
    return summary


def _cross_row_checks(db: StageDb, entity: Entity, present: list[str], first_rule: int) -> None:
    con, checked = db.con, db.checked(entity.name)
    insert = f"INSERT INTO {db.row_messages} SELECT '{entity.name}', rid, ?, ?, message, {first_rule} FROM "
    con.execute(insert + f"(SELECT rid, width_error AS message FROM {checked} WHERE width_error IS NOT NULL)",
                ["error", "row"])
    # A row repeating an earlier row's key; without a key, the match fields stand in for it.
    identities = []
    if entity.key in present:
        key = checked_value(entity.key)
        identities.append((entity.key, key, f"{key} IS NOT NULL", "same "
                           + entity.key))
    if entity.match_on and all(f in present for f in entity.match_on):
        key_empty = f"{checked_value(entity.key)} IS NULL" if entity.key in present else "true"
        identities.append((entity.key, match_key_sql(entity, checked_value("{name}")), f"{key_empty} AND " + " AND ".join(
            f"{checked_value(f)} IS NOT NULL" for f in entity.match_on), "same " + ", ".join(entity.match_on)
            + f" and no {entity.key}"))
    for label, partition, condition, why in identities:
        con.execute(
            insert + f"""(
                SELECT rid, 'repeats row ' || first_row
                       || CASE WHEN first_file <> file_index THEN ' of file ' || (first_file + 1) ELSE '' END
                       || ' (' || ? || ')' AS message
                FROM (SELECT rid, file_index,
                             first_value(row_number) OVER w AS first_row,
                             first_value(file_index) OVER w AS first_file,
                             first_value(rid) OVER w AS first_rid
                      FROM {checked} WHERE {condition}
                      WINDOW w AS (PARTITION BY {partition} ORDER BY rid))
                WHERE rid <> first_rid)""",
            ["error", label, why],
        )
    # Unknown columns are kept (as `extra`) and reported once, on each file's first data row; the
    # messages column of a fixed errors file is neither.
    ignored = "(" + ", ".join(f"'{h}'" for h in sorted(MESSAGES_HEADERS)) + ")"
    con.execute(
        insert + f"""(
            SELECT first.rid, 'not a known column; kept as extra data: ' || unknown.headers AS message
            FROM (SELECT file_index, min(rid) AS rid FROM {checked} GROUP BY file_index) first
            JOIN (SELECT file_index, string_agg(header, ', ' ORDER BY position) AS headers
                  FROM {db.header_map} WHERE column_name IS NULL
                    AND regexp_replace(lower(header), '[^0-9a-z]', '', 'g') NOT IN {ignored}
                  GROUP BY file_index) unknown USING (file_index))""",
        ["warning", "columns"],
    )
