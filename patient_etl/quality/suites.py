"""Great Expectations suites, derived from the entity spec, run on DataFrames read from DuckDB.

GX 1.x's SQL engine cannot read DuckDB, so the checked rows go to its pandas engine in chunks of
Arrow-backed frames. Each expectation carries the message its failing rows get; results come back
as row ids only (GX also returns the failing values, which are PHI and are dropped here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import pandas as pd

from patient_etl.entities.kinds import Check
from patient_etl.entities.spec import Column, Entity
from patient_etl.workspace import checked_number, checked_value

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402

_EXPECTATIONS = {
    "not_null": gxe.ExpectColumnValuesToNotBeNull,
    "match_regex": gxe.ExpectColumnValuesToMatchRegex,
    "not_match_regex": gxe.ExpectColumnValuesToNotMatchRegex,
    "in_set": gxe.ExpectColumnValuesToBeInSet,
    "between": gxe.ExpectColumnValuesToBeBetween,
    "not_before": gxe.ExpectColumnPairValuesAToBeGreaterThanB,
}


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

    def expectation(self, index: int) -> gxe.Expectation:
        if self.kind == "not_before":
            return _EXPECTATIONS[self.kind](column_A=self.column, or_equal=True, ignore_row_if="either_value_is_missing",
                                            meta={"rule": index}, **dict(self.args))
        extra = {"row_condition": self.row_condition, "condition_parser": "pandas"} if self.row_condition else {}
        return _EXPECTATIONS[self.kind](column=self.column, meta={"rule": index}, **dict(self.args), **extra)


def frame_column(column: Column, check: Check) -> str:
    return {"raw": column.name, "value": checked_value(column.name), "number": checked_number(column.name)}[check.column]


def rules_for(entity: Entity, present: list[str], relaxed: frozenset[str] = frozenset()) -> list[Rule]:
    """The suite for a file that has the staged columns `present`.

    `relaxed` (from a mapping template) names fields and groups whose errors become warnings.
    """
    by_name = {c.name: c for c in entity.columns()}
    rules: list[Rule] = []
    for name in present:
        column = by_name[name]
        lenient = column.field.name in relaxed or (column.group is not None and column.group.name in relaxed)
        if column.group is None and column.field.required:
            rules.append(Rule(name, "error", column.label, "is required", "not_null", ()))
        for check in column.field.checks():
            condition = f"{name}.notnull()" if check.only_if_present else None
            severity = "warning" if lenient else check.severity
            rules.append(Rule(frame_column(column, check), severity, column.label, check.message,
                              check.kind, tuple(check.args.items()), condition))
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


def group_indexes(entity: Entity, present: list[str]):
    by_name = {c.name: c for c in entity.columns()}
    seen = sorted({(by_name[p].group.name, by_name[p].index) for p in present if by_name[p].group})
    groups = {g.name: g for g in entity.groups}
    return [(groups[name], index) for name, index in seen if groups[name].complete]


@cache
def _context():
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per validation on stderr: noise in the CLI and in every step's log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


_runs = iter(range(1, 1 << 62))

# Failing row ids only: GX then returns them as one list instead of a dict per row with its value,
# which is both PHI and, at 100k failing rows, most of the validation time.
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["rid"],
                 "return_unexpected_index_query": False, "partial_unexpected_count": 0,
                 "exclude_unexpected_values": True}


def columns_read(rule: Rule) -> tuple[str, ...]:
    conditions = re.findall(r"(\w+)\.notnull\(\)", rule.row_condition or "")
    pair = [value for name, value in rule.args if name == "column_B"]
    return tuple(sorted({rule.column, *conditions, *pair}))


def _failing_rids(result: dict) -> list[int]:
    rids: list[int] = []
    for item in result.get("unexpected_index_list") or []:
        value = item["rid"]
        rids.extend(int(v) for v in value) if isinstance(value, list) else rids.append(int(value))
    return rids


def validate(frames: Iterator[pd.DataFrame], rules: list[Rule], suite_name: str) -> Iterator[tuple[int, list[int]]]:
    """Run the suite over each frame; yield (rule index, failing row ids) for every failing rule.

    Rules run in groups by the columns they read, each on a frame of just those columns: GX's
    pandas engine copies the whole frame it filters for every metric, so narrow frames are ~10x faster.
    """
    context = _context()
    run = next(_runs)
    source = context.data_sources.add_pandas(f"{suite_name}-{run}")
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, rule in enumerate(rules):
        groups.setdefault(columns_read(rule), []).append(i)
    definitions = []
    for g, (columns, members) in enumerate(groups.items()):
        name = f"{suite_name}-{run}-{g}"
        batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(
            name=name, expectations=[rules[i].expectation(i) for i in members]))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
        definitions.append((["rid", *columns], definition))
    try:
        for frame in frames:
            for columns, definition in definitions:
                result = definition.run(batch_parameters={"dataframe": frame[columns]}, result_format=RESULT_FORMAT)
                for outcome in result.results:
                    index = outcome.expectation_config.meta["rule"]
                    if outcome.success:
                        continue
                    if "unexpected_index_list" not in (outcome.result or {}):
                        raise RuntimeError(f"row check {rules[index].kind} on {rules[index].label} could not run")
                    yield index, _failing_rids(outcome.result)
    finally:
        for _, definition in definitions:
            context.validation_definitions.delete(definition.name)
            context.suites.delete(definition.suite.name)
        context.data_sources.delete(source.name)
