"""Row quality in Dagster: one asset check per entity that fails (severity WARN) when the batch has
errored rows, so a batch with row errors does not look like a clean success in the UI. Non-blocking:
good rows are still published. Metadata holds counts by rule only, never values."""

import dagster as dg

from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import Entity
from patient_etl.resources import PatientEtl
from patient_etl.workspace import CHECKS

TOP_RULES = 15


def entity_rows_check(entity: Entity) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=dg.AssetKey(entity.name), name=f"{entity.name}_rows_pass_their_checks", blocking=False,
                    description=f"Every {entity.name} row of the batch passes its row checks.")
    def _check(context: dg.AssetCheckExecutionContext, etl: PatientEtl) -> dg.AssetCheckResult:
        workspace = etl.workspace(context.run.tags["dagster/partition"])
        with workspace.read(CHECKS) as db:
            if not db.has_table(db.outcome(entity.name)):
                return dg.AssetCheckResult(passed=True, metadata={"rows": 0, "in_batch": False})
            rows, errored, warned = db.con.execute(
                f"SELECT count(*), count(*) FILTER (errored), count(*) FILTER (warned AND NOT errored) "
                f"FROM {db.outcome(entity.name)}").fetchall()[0]
            by_rule = db.con.execute(
                f"SELECT severity || ': ' || label || ': ' || message AS rule, count(DISTINCT rid) AS n "
                f"FROM {db.row_messages} WHERE entity = ? GROUP BY 1 ORDER BY n DESC, rule LIMIT {TOP_RULES}",
                [entity.name]).fetchall()
        table = "\n".join(f"| {rule} | {n} |" for rule, n in by_rule)
        return dg.AssetCheckResult(
            passed=errored == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "rows": rows, "errored_rows": errored, "warned_rows": warned,
                "by_rule": dg.MetadataValue.md("| rule | rows |\n| --- | --- |\n" + table if by_rule else "none"),
            },
        )

    return _check


def defs() -> dg.Definitions:
    return dg.Definitions(asset_checks=[entity_rows_check(e) for e in ENTITIES.values()])
