"""Row quality in Dagster: one asset check per entity that fails (severity WARN) when the batch has
errored rows, so a batch with row errors does not look like a clean success in the UI. Non-blocking:
good rows are still published. Metadata holds counts by rule only, never values.

The check is evaluated in its entity's normalize step (`check_spec` there, `rows_check` the result):
a step of its own would cost more in run events than the counting does.
"""

import dagster as dg

from patient_etl.entities.spec import Entity
from patient_etl.workspace import StageDb

TOP_RULES = 15


def check_name(entity: Entity) -> str:
    return f"{entity.name}_rows_pass_their_checks"


def check_spec(entity: Entity) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(check_name(entity), asset=entity.name, blocking=False,
                             description=f"Every {entity.name} row of the batch passes its row checks.")


def absent_check(entity: Entity) -> dg.AssetCheckResult:
    """The check's result when the batch holds no rows of `entity`."""
    return dg.AssetCheckResult(asset_key=entity.name, check_name=check_name(entity), passed=True,
                               metadata={"rows": 0, "in_batch": False})


def rows_check(db: StageDb, entity: Entity) -> dg.AssetCheckResult:
    """The check's result from the batch's checks (`db` reads them)."""
    rows, errored, warned = db.con.execute(
        f"SELECT count(*), count(*) FILTER (errored), count(*) FILTER (warned AND NOT errored) "
        f"FROM {db.outcome(entity.name)}").fetchall()[0]
    by_rule = db.con.execute(
        f"SELECT severity || ': ' || label || ': ' || message AS rule, count(DISTINCT rid) AS n "
        f"FROM {db.row_messages} WHERE entity = ? GROUP BY 1 ORDER BY n DESC, rule LIMIT {TOP_RULES}",
        [entity.name]).fetchall()
    table = "\n".join(f"| {rule} | {n} |" for rule, n in by_rule)
    return dg.AssetCheckResult(
        asset_key=entity.name, check_name=check_name(entity),
        passed=errored == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rows": rows, "errored_rows": errored, "warned_rows": warned,
            "by_rule": dg.MetadataValue.md("| rule | rows |\n| --- | --- |\n" + table if by_rule else "none"),
        },
    )
