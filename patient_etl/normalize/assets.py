"""Normalize: the six entities, one partitioned asset each, built from the spec in one step.

One step normalizes every entity of the batch, parents first: a step per entity cost ~0.15 s of run
events each, most of a small batch's normalize time, for entities the batch mostly does not hold.
Each entity still writes its own DuckDB file in the batch's workspace and reads the checks
read-only; a subset of the entities (one asset materialized from the UI) normalizes only those.
"""

import dagster as dg

from patient_etl.duck import scalar
from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import Entity
from patient_etl.errors import phi_safe
from patient_etl.normalize.build import normalize
from patient_etl.partitions import batches
from patient_etl.quality.assets import row_checks
from patient_etl.quality.checks import absent_check, check_spec, rows_check
from patient_etl.resources import PatientEtl
from patient_etl.workspace import CHECKS, Workspace, entity_stage


def entity_spec(entity: Entity) -> dg.AssetSpec:
    parents = [dg.AssetKey(ref.entity) for ref in entity.references]
    return dg.AssetSpec(entity.name, group_name="normalize", deps=[row_checks, *parents],
                        description=entity.describe, partitions_def=batches, skippable=False)


def normalize_entity(workspace: Workspace, entity: Entity, present: list[str]) -> dg.MaterializeResult:
    if entity.name not in present:  # no file for it: publish reads only the entities staging found
        workspace.discard(entity_stage(entity.name))
        return dg.MaterializeResult(asset_key=entity.name, metadata={"rows": 0, "in_batch": False},
                                    check_results=[absent_check(entity)])
    with workspace.open(entity_stage(entity.name), reads=[CHECKS]) as db:
        checked = rows_check(db, entity)
        rows = normalize(db, entity)
        errored = scalar(db.con, f"SELECT count(*) FROM {db.outcome(entity.name)} WHERE errored")
    return dg.MaterializeResult(asset_key=entity.name, metadata={"rows": rows, "errored_rows": errored,
                                                                 "in_batch": True}, check_results=[checked])


@dg.multi_asset(specs=[entity_spec(e) for e in ENTITIES.values()], check_specs=[check_spec(e) for e in ENTITIES.values()],
                can_subset=True, name="normalized_entities")
def normalized_entities(context: dg.AssetExecutionContext, etl: PatientEtl):
    workspace = etl.workspace(context.partition_key)
    present = workspace.staged_entities()
    for entity in ENTITIES.values():  # parents first
        if dg.AssetKey(entity.name) not in context.selected_asset_keys:
            continue
        with phi_safe(etl.home_dir(), context.partition_key, f"normalizing {entity.name}"):
            yield normalize_entity(workspace, entity, present)


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[normalized_entities])
