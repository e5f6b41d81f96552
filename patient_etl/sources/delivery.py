"""Results back to the partner: the results file uploaded into the SFTP results folder."""

import dagster as dg

from patient_etl.batches import Batch, Registry
from patient_etl.partitions import batches
from patient_etl.publish.assets import published_batch
from patient_etl.resources import PartnerSftp, PatientEtl
from patient_etl.sources.landing import deliver_results
from patient_etl.sources.sftp import SftpError


def deliver_or_warn(log, registry: Registry, batch: Batch, sftp: PartnerSftp) -> None:
    """For a failed batch: its results file goes out now, or a warning says why it could not."""
    try:
        deliver_results(registry, batch, sftp.require())
    except (SftpError, OSError) as exc:
        log.warning(f"results of failed batch {batch.batch_id} not delivered: {type(exc).__name__}")


@dg.asset(partitions_def=batches, group_name="publish", deps=[published_batch],
          retry_policy=dg.RetryPolicy(max_retries=4, delay=15, backoff=dg.Backoff.EXPONENTIAL,
                                      jitter=dg.Jitter.PLUS_MINUS))
def delivered_results(context: dg.AssetExecutionContext, etl: PatientEtl, sftp: PartnerSftp) -> dg.MaterializeResult:
    """The results file in the partner's SFTP results folder (SFTP batches only)."""
    registry = etl.registry()
    batch = registry.require(context.partition_key)
    if batch.source != "sftp" or batch.dry_run:
        return dg.MaterializeResult(metadata={"delivered": False, "why": "not an SFTP batch"})
    remote = deliver_results(registry, batch, sftp.require())
    return dg.MaterializeResult(metadata={"delivered": True, "remote_name": remote})


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[delivered_results])
