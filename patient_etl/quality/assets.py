"""Validate: each row checked by its entity's Great Expectations suite and the cross-row SQL rules."""

import dagster as dg

from patient_etl.entities import ENTITIES
from patient_etl.errors import phi_safe
from patient_etl.partitions import batches
from patient_etl.quality.row_checks import run_row_checks
from patient_etl.quality.validator import Validator, park, prewarm, validator
from patient_etl.resources import PatientEtl
from patient_etl.staging.assets import staged_rows
from patient_etl.staging.mappings import load_mapping
from patient_etl.workspace import CHECKS, STAGED


class RowCheckValidator(dg.ConfigurableResource):
    """The process Great Expectations runs in (`validator.py`). Dagster sets a run's resources up as the
    run starts: the validator imports GX on the other core while the run lands and stages its batch,
    unless the batch is larger than DuckDB's memory limit (`park`: started when its checks need it)."""

    etl: dg.ResourceDependency[PatientEtl]

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        batch_id = context.dagster_run.tags.get("dagster/partition") if context.dagster_run else None
        batch = self.etl.registry().get(batch_id) if batch_id else None
        if batch is None or not park(sum(f.size for f in batch.files)):
            prewarm()

    def process(self) -> Validator:
        return validator()


@dg.asset(partitions_def=batches, group_name="validate", deps=[staged_rows])
def row_checks(context: dg.AssetExecutionContext, etl: PatientEtl,
               row_check_validator: RowCheckValidator) -> dg.MaterializeResult:
    """Per-row outcomes of the checks: errors and warnings, by row number (never the values)."""
    workspace = etl.workspace(context.partition_key)
    summaries = []
    with phi_safe(etl.home_dir(), context.partition_key, "row checks"), workspace.open(CHECKS, reads=[STAGED]) as db:
        batch = etl.registry().require(context.partition_key)
        mapping = load_mapping(batch.mapping) if batch.mapping else None
        checker = row_check_validator.process()
        names = workspace.staged_entities()
        for name in names:
            relaxed = mapping.relaxed(name) if mapping else frozenset()
            other_dates = mapping.not_month_first(name) if mapping else frozenset()
            summaries.append(run_row_checks(db, ENTITIES[name], checker, relaxed, other_dates, last=name == names[-1]))
    etl.registry().set_status(batch, "Checked")
    top = []
    for s in summaries:
        top += [(count, f"{s.entity}: {rule}") for rule, count in s.failures_by_rule.items()]
    table = "\n".join(f"| {rule} | {count} |" for count, rule in sorted(top, reverse=True)[:15])
    return dg.MaterializeResult(metadata={
        "rows": sum(s.rows for s in summaries),
        "errored_rows": sum(s.errored_rows for s in summaries),
        "warned_rows": sum(s.warned_rows for s in summaries),
        "failures_by_rule": dg.MetadataValue.md("| rule | rows |\n| --- | --- |\n" + table if top else "none"),
    })


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[row_checks])
