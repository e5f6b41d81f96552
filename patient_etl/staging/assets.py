"""Stage: the batch loaded into its own DuckDB database, all text, with row numbers."""

import shutil

import dagster as dg

from patient_etl.entities.kinds import ssn_token_macro
from patient_etl.errors import phi_safe
from patient_etl.failure import fail_batch
from patient_etl.partitions import batches
from patient_etl.resources import PatientEtl
from patient_etl.sources import Sources
from patient_etl.sources.assets import landed_batch
from patient_etl.sources.landing import landed_paths
from patient_etl.staging.load import FileRejected, Limits, stage_files
from patient_etl.staging.mappings import MappingError, load_mapping
from patient_etl.workspace import STAGED


@dg.asset(partitions_def=batches, group_name="stage", deps=[landed_batch])
def staged_rows(context: dg.AssetExecutionContext, etl: PatientEtl, sources: Sources) -> dg.MaterializeResult:
    """Every row of the batch's files in DuckDB (one database per batch), header mapped to fields."""
    home, registry = etl.home_dir(), etl.registry()
    batch = registry.require(context.partition_key)
    workspace = etl.workspace(batch.batch_id)
    try:
        with phi_safe(home, batch.batch_id, "staging"), workspace.open(STAGED) as db:
            db.con.execute(ssn_token_macro(etl.ssn_hash_key()))
            mapping = load_mapping(batch.mapping) if batch.mapping else None
            staged = stage_files(db, landed_paths(home, batch), mapping=mapping, limits=Limits.of(etl),
                                 delimiter=batch.delimiter)
    except (FileRejected, MappingError) as exc:
        batch = fail_batch(context.log, etl, batch, exc.reason, sources=sources, run_id=context.run_id)
        raise dg.Failure(
            description=f"Batch failed at file level ({exc.code}): {exc.reason}",
            metadata={"failure": exc.code, "results_file": dg.MetadataValue.path(batch.results_file)},
            allow_retries=False,
        ) from None
    finally:
        shutil.rmtree(workspace.unpacked, ignore_errors=True)  # a zip's members in clear: staged, or failed
    registry.set_status(batch, "Staged")
    return dg.MaterializeResult(metadata={
        "mapping": batch.mapping or "none",
        "rows": sum(s.rows for s in staged),
        "rows_with_wrong_width": sum(s.rejected_rows for s in staged),
        "files": dg.MetadataValue.md("\n".join(
            f"- file {s.file_index + 1}: {s.entity}, {s.rows} rows, {len(s.header.unknown)} unknown columns"
            for s in staged)),
        "staging_db": dg.MetadataValue.path(str(workspace.path(STAGED))),
    })


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[staged_rows])
