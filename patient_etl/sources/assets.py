"""Ingest: the landed copy of each batch."""

import dagster as dg

from patient_etl.errors import phi_safe
from patient_etl.partitions import batches
from patient_etl.resources import PatientEtl, retry_policy
from patient_etl.sources.base import CHANGED_REASON, SourceChanged, sha256_of
from patient_etl.sources.landing import land_batch
from patient_etl.sources.resources import Sources


@dg.asset(
    partitions_def=batches,
    group_name="ingest",
    retry_policy=retry_policy(3, delay=5, backoff=True),
    # Checks run in their asset's step: a step of its own costs ~0.1 s of run events, a tenth of a small batch.
    check_specs=[dg.AssetCheckSpec(
        "landed_batch_matches_its_sha256", asset="landed_batch", blocking=True,
        description="The archived bytes are the bytes that were received: nothing downstream reads a damaged copy.")],
)
def landed_batch(context: dg.AssetExecutionContext, etl: PatientEtl, sources: Sources) -> dg.MaterializeResult:
    """The batch's raw files, copied into the archive with their sha256 and size."""
    home, registry = etl.home_dir(), etl.registry()
    batch = registry.require(context.partition_key)
    if batch.purged_at:  # retention removed the landed copy: the one failure path ends the batch Failed
        registry.set_status(batch, "Received")
        raise dg.Failure(description=batch.purged_reason, metadata={"failure": "purged"}, allow_retries=False)
    with phi_safe(home, batch.batch_id, "landing"):
        try:
            landed = land_batch(home, registry, batch, sources.of_batch(batch))
        except SourceChanged:
            # Nothing landed, nothing retired: the file stays pending, its next version is a new batch.
            batch = registry.set_status(batch, "Failed", reason=CHANGED_REASON, counts={})
            etl.notify(context.log, batch)
            raise dg.Failure(description=f"Batch failed at landing: {CHANGED_REASON}",
                             metadata={"failure": "source_changed"}, allow_retries=False) from None
        # The check: the archive re-read from disk, against the sha256 computed while it was streamed in.
        bad = [i["index"] + 1 for i in landed if sha256_of(home.root / i["path"]) != i["sha256"]]
    return dg.MaterializeResult(metadata={
        "source": batch.source,
        "files": len(landed),
        "bytes": sum(item["size"] for item in landed),
        "sha256": dg.MetadataValue.json({str(i["index"] + 1): i["sha256"] for i in landed}),
        "archive": dg.MetadataValue.path(str(home.batch_archive(batch.batch_id))),
    }, check_results=[dg.AssetCheckResult(
        check_name="landed_batch_matches_its_sha256", passed=not bad,
        metadata={"files_checked": len(landed), "mismatched": len(bad)})])


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[landed_batch])
