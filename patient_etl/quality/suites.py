"""Great Expectations suites, derived from the entity spec, run on DataFrames read from DuckDB.

GX 1.x's SQL engine cannot read DuckDB, so the checked rows go to its pandas engine in chunks of
Arrow-backed frames. Each expectation carries the message its failing rows get; results come back
as row ids only (GX also returns the failing values, which are PHI and are dropped here).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import pandas as pd

from patient_etl.entities.kinds import Check
from patient_etl.entities.spec import Column, Entity
from patient_etl.workspace import checked_number, checked_value

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def _import_gx_lean() -> None:
    """Import GX without what it loads for features we never use, ~1 s of the ~3 s it costs.

    GX imports pyspark when installed (the linkage's Spark engine installs it) to accept Spark
    frames; we give it pandas frames only, so pyspark is hidden while GX imports (it is importable
    again after). When pyspark is already loaded (a Spark linkage in this process), only its Spark
    Connect package is hidden: imported from a `__main__` without a file (`python -c`, a pytest-xdist
    worker) it takes itself for a doctest run and calls sys.exit(0). scipy.stats (0.6 s) serves one
    distribution expectation: it is bound lazily, loaded on first use.
    """
    hide = next((name for name in ("pyspark", "pyspark.sql.connect") if name not in sys.modules), None)
    if hide:
        sys.modules[hide] = None  # an import of it raises ImportError: GX takes it as absent
    try:
        if "scipy.stats" not in sys.modules and importlib.util.find_spec("scipy") is not None:
            import scipy

            spec = importlib.util.find_spec("scipy.stats")
            spec.loader = importlib.util.LazyLoader(spec.loader)
            stats = importlib.util.module_from_spec(spec)
            sys.modules["scipy.stats"] = stats
            spec.loader.exec_module(stats)
            scipy.stats = stats  # `from scipy import stats` takes the attribute, without loading it
        import great_expectations  # noqa: F401
    finally:
        if hide and sys.modules.get(hide, 0) is None:
            del sys.modules[hide]


_import_gx_lean()

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.execution_engine import pandas_execution_engine  # noqa: E402

# GX fingerprints every frame under 1 GB (an md5 of pandas' hash of each cell) only to label the batch
# in results we discard; at 1M rows that hashing costs as much as the checks.
pandas_execution_engine.HASH_THRESHOLD = 0

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
    supersedes: str | None = None  # the message of another rule on this label it explains (Check.supersedes)

    def expectation(self, index: int) -> gxe.Expectation:
        if self.kind == "not_before":
            return _EXPECTATIONS[self.kind](column_A=self.column, or_equal=True, ignore_row_if="either_value_is_missing",
                                            meta={"rule": index}, **dict(self.args))
        extra = {"row_condition": self.row_condition, "condition_parser": "pandas"} if self.row_condition else {}
        return _EXPECTATIONS[self.kind](column=self.column, meta={"rule": index}, **dict(self.args), **extra)


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


@cache
def _context():
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per validation on stderr: noise in the CLI and in every step's log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


_runs = iter(range(1, 1 << 62))

# Failing ids only: GX then returns them as one list instead of a dict per row with its value,
# which is both PHI and, at 100k failing rows, most of the validation time.
RESULT_FORMAT = {"result_format": "COMPLETE",
                 "return_unexpected_index_query": False, "partial_unexpected_count": 0,
                 "exclude_unexpected_values": True}


def columns_read(rule: Rule) -> tuple[str, ...]:
    conditions = re.findall(r"(\w+)\.notnull\(\)", rule.row_condition or "")
    pair = [value for name, value in rule.args if name == "column_B"]
    return tuple(sorted({rule.column, *conditions, *pair}))


def _failing_ids(result: dict, index_column: str) -> list[int]:
    ids: list[int] = []
    for item in result.get("unexpected_index_list") or []:
        value = item[index_column]
        ids.extend(int(v) for v in value) if isinstance(value, list) else ids.append(int(value))
    return ids


@dataclass
class RuleGroup:
    """Rules that read the same frame: `columns` (besides the index column) and the rules' indexes."""

    columns: tuple[str, ...]
    rules: list[int]


def validate(groups: list[RuleGroup], frames: Callable[[int], Iterator[pd.DataFrame]], rules: list[Rule],
             suite_name: str, index_column: str) -> Iterator[tuple[int, int, list[int]]]:
    """Run each group's suite over its frames; yield (group position, rule
    index, failing ids) for every failing rule. `frames(g)` gives group g's frames: each holds
    `index_column` and the group's columns.

    Each group's frame is only as wide as its rules read: GX's pandas engine copies the whole frame
    it filters for every metric, so narrow frames are ~10x faster.
    """
    context = _context()
    run = next(_runs)
    source = context.data_sources.add_pandas(f"{suite_name}-{run}")
    definitions = []
    try:
        for g, group in enumerate(groups):
            name = f"{suite_name}-{run}-{g}"
            batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            suite = context.suites.add(gx.ExpectationSuite(
                name=name, expectations=[rules[i].expectation(i) for i in group.rules]))
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
            definitions.append(definition)
            result_format = {**RESULT_FORMAT, "unexpected_index_column_names": [index_column]}
            for frame in frames(g):
                result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
                for outcome in result.results:
                    index = outcome.expectation_config.meta["rule"]
                    if outcome.success:
                        continue
                    if "unexpected_index_list" not in (outcome.result or {}):
                        raise RuntimeError(f"row check {rules[index].kind} on {rules[index].label} could not run")
                    yield g, index, _failing_ids(outcome.result, index_column)
    finally:
        for definition in definitions:
            context.validation_definitions.delete(definition.name)
            context.suites.delete(definition.suite.name)
        context.data_sources.delete(source.name)
