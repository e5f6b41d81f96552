"""Normalize: one partitioned asset per entity, built from the spec.

Each writes its own DuckDB file in the batch's workspace and reads the checks read-only, so entity
steps running in parallel processes never share a writer.
"""

import dagster as dg

from patient_etl.duck import scalar
from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import Entity
from patient_etl.errors import phi_safe
from patient_etl.normalize.build import normalize
from patient_etl.partitions import batches
from patient_etl.quality.assets import row_checks
from patient_etl.resources import PatientEtl
from patient_etl.workspace import CHECKS, entity_stage


def entity_asset(entity: Entity) -> dg.AssetsDefinition:
    parents = [dg.AssetKey(ref.entity) for ref in entity.references]

    @dg.asset(name=entity.name, partitions_def=batches, group_name="normalize", deps=[row_checks, *parents],
              description=entity.describe)
    def _asset(context: dg.AssetExecutionContext, etl: PatientEtl) -> dg.MaterializeResult:
        workspace = etl.workspace(context.partition_key)
        with phi_safe(etl.home_dir(), context.partition_key, f"normalizing {entity.name}"), \
                workspace.open(entity_stage(entity.name), reads=[CHECKS]) as db:
            if not db.has_table(db.checked(entity.name)):
                return dg.MaterializeResult(metadata={"rows": 0, "in_batch": False})
            rows = normalize(db, entity)
            errored = scalar(db.con, f"SELECT count(*) FROM {db.outcome(entity.name)} WHERE errored")
        return dg.MaterializeResult(metadata={"rows": rows, "errored_rows": errored, "in_batch": True})

    return _asset


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[entity_asset(e) for e in ENTITIES.values()])
