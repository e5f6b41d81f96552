"""Publish: the batch upserted into the target, and its result logs."""

import dagster as dg

from patient_etl.entities import ENTITIES
from patient_etl.errors import phi_safe
from patient_etl.failure import fail_batch
from patient_etl.partitions import batches
from patient_etl.publish import review
from patient_etl.publish.batch import publish_batch
from patient_etl.resources import PatientEtl, retry_policy
from patient_etl.sources import Sources
from patient_etl.target import TargetSchemaError, safe_url


class PublishConfig(dg.Config):
    dry_run: bool = False
    # Review before publish (publish/review.py): approve | reject | expire a batch held for review.
    decision: str = ""
    reason: str = ""  # why it is rejected (required to reject)
    decided_by: str = ""  # who decides, when the run carries no user (the CLI's user or --as NAME)


# Possible duplicates come after (linkage/assets.py): a slow or failing linkage never delays this.
@dg.asset(partitions_def=batches, group_name="publish", deps=[dg.AssetKey(name) for name in ENTITIES],
          retry_policy=retry_policy(2, delay=2), check_specs=[review.HELD_CHECK])
def published_batch(context: dg.AssetExecutionContext, config: PublishConfig, etl: PatientEtl,
                    sources: Sources) -> dg.MaterializeResult:
    """The batch applied to the target in one transaction, with its results file and row log."""
    registry = etl.registry()
    batch = registry.require(context.partition_key)
    hold, previewed = None, None
    try:
        if config.decision or batch.review.get("decision") not in (None, "approved"):
            decision = config.decision or "approve"  # a rejected or expired batch is never published
            review.check_decidable(etl, batch, decision, config.reason)
            decided_by = review.decider(context, etl, decision, config.decided_by)
            if decision != "approve":
                batch = review.end_unpublished(context.log, etl, batch, decision, decided_by, config.reason)
                return dg.MaterializeResult(metadata={"status": batch.status, **review.review_metadata(batch),
                                                      "results_file": dg.MetadataValue.path(batch.results_file)},
                                            check_results=[review.held_check(batch)])
            review.check_previewed_bytes(etl, batch)
            batch, previewed = review.approving(batch, decided_by), review.preview_outcomes(etl.workspace(batch.batch_id))
        elif not config.dry_run:
            hold = review.hold_rule(etl, sources, batch)
    except review.ReviewRefused as exc:  # nothing published: the batch stays (or is again) as it was decided
        review.restore_decided(registry, batch)
        raise dg.Failure(description=f"Decision refused: {exc}", allow_retries=False,
                         metadata={"failure": "review_refused"}) from None
    batch = registry.set_status(batch, "Publishing", dry_run=config.dry_run)
    try:
        with phi_safe(etl.home_dir(), batch.batch_id, "publishing"):
            summary = publish_batch(etl.home_dir(), batch, etl.target(), dry_run=config.dry_run,
                                    run_id=context.run_id, hold=hold, previewed=previewed)
    except TargetSchemaError as exc:  # nothing was applied; retrying cannot help until someone fixes the target
        batch = fail_batch(context.log, etl, batch, exc.reason, failure="run", scope="target", sources=sources,
                           run_id=context.run_id)
        raise dg.Failure(description=f"Batch failed: {exc.reason}", allow_retries=False,
                         metadata={"failure": exc.code, "results_file": dg.MetadataValue.path(batch.results_file)},
                         ) from None
    if summary.recovered_from:
        context.log.warning(f"batch {batch.batch_id}: run {summary.recovered_from} had published it and ended before "
                            "recording its outcome; that outcome is reported, nothing was applied again")
    if summary.held:
        batch = review.hold(registry, batch, summary)
    else:
        if previewed is not None:
            batch.review["changed_since_preview"] = summary.changed_since_preview
        batch = registry.set_status(batch, summary.status, counts=summary.counts, results_file=summary.results_file,
                                    reason=None, failure=None, dry_run=config.dry_run, review=batch.review,
                                    run_id=summary.recovered_from or context.run_id)
    if not config.dry_run:
        etl.notify(context.log, batch)
    counts = " · ".join(f"{status} **{n}**" for status, n in summary.counts.items())
    label = " (dry run)" if config.dry_run else " (preview: nothing published)" if summary.held else ""
    return dg.MaterializeResult(metadata={
        "status": batch.status,
        "dry_run": config.dry_run,
        **{status.lower(): n for status, n in summary.counts.items()},
        "summary": dg.MetadataValue.md(f"**{batch.status}**{label}: {counts}"),
        **review.review_metadata(batch),
        "by_entity": dg.MetadataValue.md(by_entity_table(summary.by_entity)),
        "results_file": dg.MetadataValue.path(summary.results_file),
        "target": safe_url(etl.target()),
        **({"recovered_from_run": summary.recovered_from} if summary.recovered_from else {}),
    }, check_results=[review.held_check(batch)])


def by_entity_table(by_entity: dict[str, dict[str, int]]) -> str:
    statuses = ("Created", "Updated", "Unchanged", "Errored")
    lines = ["| entity | " + " | ".join(statuses) + " |", "| --- |" + " --- |" * len(statuses)]
    lines += [f"| {name} | " + " | ".join(str(counts.get(s, 0)) for s in statuses) + " |"
              for name, counts in sorted(by_entity.items())]
    return "\n".join(lines)


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[published_batch], jobs=[review.approve_batch_job, review.reject_batch_job])
