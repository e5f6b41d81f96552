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
from typing import TYPE_CHECKING

import duckdb

from patient_etl.duck import first_row, scalar, select_lists, sharing_memory, unordered
from patient_etl.entities.spec import MESSAGES_HEADERS, Entity, match_key_sql
from patient_etl.quality.suites import (
    Rule,
    RuleGroup,
    columns_read,
    group_indexes,
    rules_for,
    superseded,
)
from patient_etl.quality.validator import Validator
from patient_etl.workspace import StageDb, checked_number, checked_value

if TYPE_CHECKING:
    import pyarrow as pa

CHUNK_ROWS = 250_000  # rows (or distinct values) per validation: GX copies its frame per metric; 1M peaked ~100 MB higher
ONE_FRAME_ROWS = 20_000  # up to this many rows, all rules run in one validation on one frame
VALUE_ID = "value_id"  # in a rule group's frame, the number of a distinct combination of its raw columns
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


def _checked_select(entity: Entity, present: list[str]) -> tuple[str, dict[str, str]]:
    """The checked table's select list, and for each column a rule can read, the raw column it is
    computed from (the raw text itself, its candidate value, its numeric view)."""
    by_name = {c.name: c for c in entity.columns()}
    wanted = list(present)
    for group, index in group_indexes(entity, present):
        wanted += [c for f in group.fields if (c := group.column(f.name, index)) not in wanted]
    parts = ["rid", "file_index", "row_number", "extra", "width_error"]
    source: dict[str, str] = {}
    for name in wanted:
        kind = by_name[name].field.kind
        raw = name if name in present else "CAST(NULL AS VARCHAR)"
        value = kind.value_sql.format(v=raw)
        parts += [f"{raw} AS {name}", f"{value} AS {checked_value(name)}"]
        source[name] = source[checked_value(name)] = name
        if kind.number_sql:
            parts.append(f"{kind.number_sql.format(value=value)} AS {checked_number(name)}")
            source[checked_number(name)] = name
    return ", ".join(parts), source


def rule_groups(rules: list[Rule], source: dict[str, str]) -> list[tuple[tuple[str, ...], RuleGroup]]:
    """Rules grouped by the raw columns their verdicts depend on: every column a rule reads is a
    function of one raw column, so a group's rules can be checked on its raw columns' distinct values."""
    by_raw: dict[tuple[str, ...], RuleGroup] = {}
    for i, rule in enumerate(rules):
        read = columns_read(rule)
        raw = tuple(sorted({source[c] for c in read}))
        group = by_raw.setdefault(raw, RuleGroup((), []))
        group.columns = tuple(dict.fromkeys([*group.columns, *read]))
        group.rules.append(i)
    return list(by_raw.items())


@dataclass
class _GroupFrames:
    """Where one rule group's frames come from: the distinct combinations of its raw columns,
    numbered into `table`, or, when most rows are distinct anyway, the rows (numbered by rid)."""

    raw: tuple[str, ...]
    group: RuleGroup
    table: str | None

    def prepare(self, con: duckdb.DuckDBPyConnection, checked: str) -> None:
        if self.table:
            columns = ", ".join(dict.fromkeys([*self.raw, *self.group.columns]))
            con.execute(f"CREATE OR REPLACE TABLE {self.table} AS SELECT row_number() OVER () AS {VALUE_ID}, * "
                        f"FROM (SELECT DISTINCT {columns} FROM {checked} WHERE width_error IS NULL)")

    def frames(self, con: duckdb.DuckDBPyConnection, checked: str) -> Iterator[pa.Table]:
        """The group's frames, each of at most CHUNK_ROWS rows, each a query of its own over an interval
        of ids. One streaming query for them all had DuckDB's threads convert rows to Arrow ahead of
        GX: ~95 MB waiting in the run process at 10M rows against ~46 MB at 1M (memray at the peak)."""
        columns = ", ".join(self.group.columns)
        if self.table:
            query = f"SELECT {VALUE_ID}, {columns} FROM {self.table} WHERE {VALUE_ID} BETWEEN ? AND ?"
            values = scalar(con, f"SELECT count(*) FROM {self.table}")  # numbered 1..n by `prepare`
            intervals = frame_intervals([(1, values)] if values else [], CHUNK_ROWS)
        else:
            query = (f"SELECT rid AS {VALUE_ID}, {columns} FROM {checked} "
                     "WHERE width_error IS NULL AND rid BETWEEN ? AND ?")
            # A file's rows have consecutive ids (file_index * 10^10 + row number): one span per file.
            intervals = frame_intervals(con.execute(
                f"SELECT min(rid), max(rid) FROM {checked} WHERE width_error IS NULL "
                "GROUP BY file_index ORDER BY 1").fetchall(), CHUNK_ROWS)
        for low, high in intervals:
            yield con.sql(query, params=[low, high]).to_arrow_table()

    def failing_rows_sql(self, checked: str, verdicts: str) -> str:
        """`rid, rule` of every row whose values failed a rule; `verdicts` holds (rule, value id)."""
        if not self.table:
            return f"SELECT {VALUE_ID} AS rid, rule FROM {verdicts}"
        same = " AND ".join(f"c.{r} IS NOT DISTINCT FROM v.{r}" for r in self.raw)
        return (f"SELECT c.rid, v.rule FROM (SELECT t.*, f.rule FROM {self.table} t JOIN {verdicts} f "
                f"USING ({VALUE_ID})) v JOIN {checked} c ON {same} WHERE c.width_error IS NULL")

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.table:
            con.execute(f"DROP TABLE IF EXISTS {self.table}")


def frame_intervals(spans: list[tuple[int, int]], most: int) -> list[tuple[int, int]]:
    """Inclusive id intervals holding at most `most` ids of `spans` each (inclusive, ascending and
    disjoint): a span wider than `most` is cut into pieces; a span that fits in the interval before it
    joins it (the ids between two spans belong to no row)."""
    intervals: list[tuple[int, int]] = []
    used = most  # ids of spans inside the last interval
    for low, high in spans:
        width = high - low + 1
        if used + width <= most:
            intervals[-1] = (intervals[-1][0], high)
            used += width
            continue
        for start in range(low, high + 1, most):
            intervals.append((start, min(high, start + most - 1)))
        used = intervals[-1][1] - intervals[-1][0] + 1
    return intervals


def _plan_frames(con: duckdb.DuckDBPyConnection, checked: str,
                 grouped: list[tuple[tuple[str, ...], RuleGroup]]) -> list[_GroupFrames]:
    """Distinct values for the groups where they are at most half the rows (one scan estimates all)."""
    estimates = ", ".join(f"approx_count_distinct(hash({', '.join(raw)}))" for raw, _ in grouped)
    rows, *distinct = first_row(con, f"SELECT count(*), {estimates} FROM {checked} WHERE width_error IS NULL")
    return [_GroupFrames(raw, group, f"check_values_{g}" if 2 * (n or 0) <= rows else None)
            for g, ((raw, group), n) in enumerate(zip(grouped, distinct, strict=True))]


def run_row_checks(db: StageDb, entity: Entity, validator: Validator, relaxed: frozenset[str] = frozenset(),
                   not_month_first: frozenset[str] = frozenset(), last: bool = False) -> CheckSummary:
    """`db` is the batch's checks database; `validator` the process GX runs the rules in, released as
    soon as GX is done with the batch's `last` entity (beside the cross-row checks of a 10M-row batch,
    its ~330 MB were the import's peak).

    A rule's verdict depends only on the values it reads, and each of those is computed from one
    raw column: so a group of rules runs once per distinct combination of its raw columns (32 first
    names instead of 1M rows), and the failing combinations are joined back to their rows.
    """
    con, staged_table, messages = db.con, db.staged(entity.name), db.row_messages
    present = staged_columns(con, staged_table)
    select, source = _checked_select(entity, present)
    checked = db.checked(entity.name)
    with unordered(con):
        con.execute(f"CREATE OR REPLACE TABLE {checked} AS SELECT {select} FROM {staged_table}")
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {messages} (entity VARCHAR, rid BIGINT, severity VARCHAR, label VARCHAR, "
        "message VARCHAR, rule INTEGER)"
    )
    summary = CheckSummary(entity.name, scalar(con, f"SELECT count(*) FROM {checked}"))

    rules = rules_for(entity, present, relaxed, not_month_first)
    if summary.rows <= ONE_FRAME_ROWS:
        # A small file: one validation of every rule on its rows (each validation costs ~0.1 s).
        everything = RuleGroup(tuple(dict.fromkeys(c for r in rules for c in columns_read(r))), list(range(len(rules))))
        plans = [_GroupFrames((), everything, None)] if rules else []
    else:
        plans = _plan_frames(con, checked, rule_groups(rules, source)) if rules else []
    try:
        for plan in plans:
            plan.prepare(con, checked)
        failing: dict[int, list[tuple[int, list[int]]]] = {}
        with sharing_memory(con):  # DuckDB only reads frames while GX checks them in the validator
            for g, index, ids in validator.validate([p.group for p in plans], lambda g: plans[g].frames(con, checked),
                                                    rules, entity.name, VALUE_ID):
                failing.setdefault(g, []).append((index, ids))
        if last:
            validator.release()
        verdict_rules, params = select_lists({"rule": ("BIGINT", range(len(rules))),
                                              "severity": ("VARCHAR", [r.severity for r in rules]),
                                              "label": ("VARCHAR", [r.label for r in rules]),
                                              "message": ("VARCHAR", [r.message for r in rules])})
        con.execute(f"CREATE OR REPLACE TEMP TABLE verdict_rules AS {verdict_rules}", params)
        for g, found in failing.items():
            verdicts, params = select_lists({"rule": ("BIGINT", [index for index, ids in found for _ in ids]),
                                             VALUE_ID: ("BIGINT", [i for _, ids in found for i in ids])})
            con.execute(f"CREATE OR REPLACE TEMP TABLE verdicts AS {verdicts}", params)
            con.execute(
                f"""INSERT INTO {messages}
                    SELECT ?, f.rid, m.severity, m.label, m.message, m.rule
                    FROM ({plans[g].failing_rows_sql(checked, "verdicts")}) f JOIN verdict_rules m USING (rule)""",
                [entity.name],
            )
        con.execute("DROP TABLE IF EXISTS verdicts")
        con.execute("DROP TABLE verdict_rules")
    finally:
        for plan in plans:
            plan.drop(con)
    if pairs := superseded(rules):
        values = ", ".join(f"({a}, {b})" for a, b in pairs)
        con.execute(f"""
            DELETE FROM {messages} g USING (VALUES {values}) s(specific, generic)
            WHERE g.entity = ? AND g.rule = s.generic
              AND EXISTS (SELECT 1 FROM {messages} m WHERE m.entity = g.entity AND m.rid = g.rid
                                                       AND m.rule = s.specific)""", [entity.name])
    for rule_index, rows in con.execute(
            f"SELECT rule, count(*) FROM {messages} WHERE entity = ? GROUP BY rule", [entity.name]).fetchall():
        rule = rules[rule_index]
        summary.failures_by_rule[f"{rule.label} {rule.message}"] += rows

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
