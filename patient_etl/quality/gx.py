"""Great Expectations' side of the row checks: each rule an expectation, run by GX's pandas engine.

GX 1.x's SQL engine cannot read DuckDB, so the checked values reach its pandas engine as Arrow-backed
frames. Results come back as row ids only (GX also returns the failing values, which are PHI and are
dropped here). Only the validator process imports this module (`validator.py`): GX with pandas costs
~2.5 s to import, which that process pays while the run lands and stages the batch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import cache

import pandas as pd
import pyarrow as pa

from patient_etl.quality.suites import Rule, RuleGroup

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def _import_gx_lean() -> None:
    """Import GX without what it loads for features we never use, ~1 s of the ~3 s it costs.

    GX imports pyspark when installed (the linkage's Spark engine installs it) to accept Spark
    frames; we give it pandas frames only, so pyspark is hidden while GX imports (it is importable
    again after). When pyspark is already loaded, only its Spark Connect package is hidden: imported
    from a `__main__` without a file (`python -c`) it takes itself for a doctest run and calls
    sys.exit(0). scipy.stats (0.6 s) serves one distribution expectation: it is bound lazily, loaded
    on first use.
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

# Failing ids only: GX then returns them as one list instead of a dict per row with its value,
# which is both PHI and, at 100k failing rows, most of the validation time.
RESULT_FORMAT = {"result_format": "COMPLETE",
                 "return_unexpected_index_query": False, "partial_unexpected_count": 0,
                 "exclude_unexpected_values": True}


def expectation(rule: Rule, index: int) -> gxe.Expectation:
    """`rule` as a GX expectation; `index` (its place in the suite) comes back in its results."""
    if rule.kind == "not_before":
        return _EXPECTATIONS[rule.kind](column_A=rule.column, or_equal=True, ignore_row_if="either_value_is_missing",
                                        meta={"rule": index}, **dict(rule.args))
    extra = {"row_condition": rule.row_condition, "condition_parser": "pandas"} if rule.row_condition else {}
    return _EXPECTATIONS[rule.kind](column=rule.column, meta={"rule": index}, **dict(rule.args), **extra)


@cache
def context():
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ephemeral = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per validation on stderr: noise in the CLI and in every step's log.
    ephemeral.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ephemeral


_runs = iter(range(1, 1 << 62))


def to_pandas(table: pa.Table) -> pd.DataFrame:
    # Text stays Arrow-backed (no Python strings); numbers become numpy, the dtype GX vectorizes ranges on.
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_string(t)
                           or pa.types.is_large_string(t) else None)


def _failing_ids(result: dict, index_column: str) -> list[int]:
    ids: list[int] = []
    for item in result.get("unexpected_index_list") or []:
        value = item[index_column]
        ids.extend(int(v) for v in value) if isinstance(value, list) else ids.append(int(value))
    return ids


class Suites:
    """One validation's suites, a suite per rule group, registered in the ephemeral context until closed.

    Each group's frame is only as wide as its rules read: GX's pandas engine copies the whole frame
    it filters for every metric, so narrow frames are ~10x faster.
    """

    def __init__(self, groups: list[RuleGroup], rules: list[Rule], suite_name: str, index_column: str):
        self.rules, self.index_column = rules, index_column
        ctx = context()
        run = next(_runs)
        self.source = ctx.data_sources.add_pandas(f"{suite_name}-{run}")
        self.definitions = []
        for g, group in enumerate(groups):
            name = f"{suite_name}-{run}-{g}"
            batch_definition = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            suite = ctx.suites.add(gx.ExpectationSuite(
                name=name, expectations=[expectation(rules[i], i) for i in group.rules]))
            self.definitions.append(ctx.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)))

    def run(self, g: int, table: pa.Table) -> list[tuple[int, list[int]]]:
        """(rule index, failing ids) for each rule of group `g` that fails on `table`."""
        result_format = {**RESULT_FORMAT, "unexpected_index_column_names": [self.index_column]}
        result = self.definitions[g].run(batch_parameters={"dataframe": to_pandas(table)}, result_format=result_format)
        failing = []
        for outcome in result.results:
            index = outcome.expectation_config.meta["rule"]
            if outcome.success:
                continue
            if "unexpected_index_list" not in (outcome.result or {}):
                rule = self.rules[index]
                raise RuntimeError(f"row check {rule.kind} on {rule.label} could not run")
            failing.append((index, _failing_ids(outcome.result, self.index_column)))
        return failing

    def close(self) -> None:
        ctx = context()
        for definition in self.definitions:
            ctx.validation_definitions.delete(definition.name)
            ctx.suites.delete(definition.suite.name)
        ctx.data_sources.delete(self.source.name)
