"""Results back to the partner, for the sources that take them (SFTP results folder, object store
results prefix); the upload folder and the command line keep theirs in the home's `results/`."""

from pathlib import Path

import dagster as dg

from patient_etl.batches import AWAITING_APPROVAL, Batch, Registry
from patient_etl.partitions import batches
from patient_etl.resources import PatientEtl, retry_policy
from patient_etl.sources.base import results_name
from patient_etl.sources.resources import Sources


def deliver_results(registry: Registry, batch: Batch, sources: Sources, log=None) -> str | None:
    """Deliver the batch's results file to its source, once per results file; the name used, or None.

    A no-op for sources that do not deliver, for dry runs and for batches without a results file.
    With `log` (a failed batch's path) a delivery problem is a warning instead of an error.
    """
    source = sources.of_batch(batch)
    if not source.delivers or batch.dry_run or not batch.results_file or batch.status == AWAITING_APPROVAL:
        return None  # a held batch's preview is for the reviewer, not the partner
    delivered = batch.remote.setdefault("delivered", {})
    if batch.results_file not in delivered:
        try:
            delivered[batch.results_file] = source.deliver(Path(batch.results_file), results_name(batch))
        except Exception as exc:
            if log is None:
                raise
            log.warning(f"results of batch {batch.batch_id} not delivered to the {source.title}: "
                        f"{type(exc).__name__}")
            return None
        registry.save(batch)
    return delivered[batch.results_file]


# After possible_duplicates, whose warnings go into the results file (that stage never fails).
@dg.asset(partitions_def=batches, group_name="publish",
          deps=[dg.AssetKey("published_batch"), dg.AssetKey("possible_duplicates")],
          output_required=False,
          retry_policy=retry_policy(4, delay=15, backoff=True))
def delivered_results(context: dg.AssetExecutionContext, etl: PatientEtl, sources: Sources):
    """The results file back where the partner looks (sources that deliver: SFTP, object store).

    Materialized only for batches whose source delivers: an upload-folder or command-line batch keeps
    its results in the home, and a dry run delivers nothing, so the partition shows no delivery."""
    registry = etl.registry()
    batch = registry.require(context.partition_key)
    if not sources.of_batch(batch).delivers or batch.dry_run or batch.status == AWAITING_APPROVAL:
        why = "dry run" if batch.dry_run else "held for review" if batch.status == AWAITING_APPROVAL else batch.source
        context.log.info(f"batch {batch.batch_id}: nothing to deliver ({why})")
        return
    remote = deliver_results(registry, batch, sources)
    yield dg.MaterializeResult(metadata={"delivered": True, "remote_name": remote})


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[delivered_results])
