"""Normalize: one partitioned asset per entity, built from the spec.

Each writes its own DuckDB file in the batch folder and reads upstream files read-only, so entity
steps running in parallel processes never share a writer.
"""

import dagster as dg
import duckdb

from patient_etl.duck import scalar
from patient_etl.entities import ENTITIES
from patient_etl.entities.normalize import normalize
from patient_etl.entities.spec import Entity
from patient_etl.errors import phi_safe
from patient_etl.partitions import batches
from patient_etl.quality.assets import row_checks
from patient_etl.resources import PatientEtl


def entity_asset(entity: Entity) -> dg.AssetsDefinition:
    parents = [dg.AssetKey(ref.entity) for ref in entity.references if ref.entity in ENTITIES]

    @dg.asset(name=entity.name, partitions_def=batches, group_name="normalize", deps=[row_checks, *parents],
              description=entity.describe)
    def _asset(context: dg.AssetExecutionContext, etl: PatientEtl) -> dg.MaterializeResult:
        home = etl.home_dir()
        folder = home.batch_staging(context.partition_key)
        db = folder / f"{entity.name}.duckdb"
        db.unlink(missing_ok=True)
        with phi_safe(home, context.partition_key, f"normalizing {entity.name}"), duckdb.connect(str(db)) as con:
            con.execute(f"ATTACH '{folder / 'checks.duckdb'}' AS checks (READ_ONLY)")
            present = scalar(
                con, "SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'checks' AND table_name = ?",
                [f"checked_{entity.name}"],
            )
            if not present:
                return dg.MaterializeResult(metadata={"rows": 0, "in_batch": False})
            rows = normalize(con, entity, f"checks.checked_{entity.name}", f"checks.row_outcome_{entity.name}")
            errored = scalar(con, f"SELECT count(*) FROM checks.row_outcome_{entity.name} WHERE errored")
        return dg.MaterializeResult(metadata={"rows": rows, "errored_rows": errored, "in_batch": True})

    return _asset


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[entity_asset(e) for e in ENTITIES.values()])
