"""The row-check suites, derived from the entity spec: each rule is one Great Expectations
expectation (built in `gx.py`) with the message its failing rows get.

This module does not import GX: rules are made and grouped in the step's process; GX runs them in
the validator process (`validator.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from patient_etl.entities.kinds import Check
from patient_etl.entities.spec import Column, Entity
from patient_etl.workspace import checked_number, checked_value


@dataclass(frozen=True)
class Rule:
    """One expectation in a suite and what a failing row is told."""

    column: str  # the frame column the expectation reads
    severity: str
    label: str  # the field as messages name it (`zip-2`)
    message: str
    kind: str
    args: tuple[tuple[str, object], ...]
    row_condition: str | None = None
    supersedes: str | None = None  # the message of another rule on this label it explains (Check.supersedes)


def frame_column(column: Column, check: Check) -> str:
    return {"raw": column.name, "value": checked_value(column.name), "number": checked_number(column.name)}[check.column]


def rules_for(entity: Entity, present: list[str], relaxed: frozenset[str] = frozenset(),
              not_month_first: frozenset[str] = frozenset()) -> list[Rule]:
    """The suite for a file that has the staged columns `present`.

    `relaxed` (from a mapping template) names fields and groups whose errors become warnings;
    `not_month_first` the fields whose dates it reads other than month first (checks that assume it are skipped).
    """
    by_name = {c.name: c for c in entity.columns()}
    rules: list[Rule] = []
    for name in present:
        column = by_name[name]
        lenient = column.field.name in relaxed or (column.group is not None and column.group.name in relaxed)
        if column.group is None and column.field.required:
            rules.append(Rule(name, "error", column.label, "is required", "not_null", ()))
        for check in column.field.checks():
            if check.month_first_only and column.field.name in not_month_first:
                continue
            condition = f"{name}.notnull()" if check.only_if_present else None
            severity = "warning" if lenient else check.severity
            rules.append(Rule(frame_column(column, check), severity, column.label, check.message,
                              check.kind, tuple(check.args.items()), condition, check.supersedes))
    for rule in entity.order_rules:
        if rule.later in present and rule.earlier in present:
            rules.append(Rule(checked_value(rule.later), "error", rule.later, f"is before {rule.earlier}", "not_before",
                              (("column_B", checked_value(rule.earlier)),)))
    for group, index in group_indexes(entity, present):
        members = [group.column(f.name, index) for f in group.fields]
        any_present = " | ".join(f"{m}.notnull()" for m in members)
        needs = ", ".join(group.complete)
        severity = "warning" if group.name in relaxed else "error"
        for member in group.complete:
            rules.append(Rule(group.column(member, index), severity, group.label(member, index),
                              f"is missing; an {group.name} needs {needs}", "not_null", (), any_present))
    return rules


def superseded(rules: list[Rule]) -> list[tuple[int, int]]:
    """(rule, the rule it supersedes) by index: when both fail on a row, only the first is reported."""
    by_message = {(r.label, r.message): i for i, r in enumerate(rules)}
    return [(i, by_message[(r.label, r.supersedes)]) for i, r in enumerate(rules)
            if r.supersedes and (r.label, r.supersedes) in by_message]


def group_indexes(entity: Entity, present: list[str]):
    by_name = {c.name: c for c in entity.columns()}
    seen = sorted({(by_name[p].group.name, by_name[p].index) for p in present if by_name[p].group})
    groups = {g.name: g for g in entity.groups}
    return [(groups[name], index) for name, index in seen if groups[name].complete]


def columns_read(rule: Rule) -> tuple[str, ...]:
    conditions = re.findall(r"(\w+)\.notnull\(\)", rule.row_condition or "")
    pair = [value for name, value in rule.args if name == "column_B"]
    return tuple(sorted({rule.column, *conditions, *pair}))


@dataclass
class RuleGroup:
    """Rules that read the same frame: `columns` (besides the index column) and the rules' indexes."""

    columns: tuple[str, ...]
    rules: list[int]
