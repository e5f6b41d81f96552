"""Review before publish: a held batch is previewed, then approved, rejected or left to expire.

A batch is held when it was imported with `--review`, when its source requires review (the upload
folder's `review/` sub-folder, `PATIENT_ETL_SFTP_REVIEW`/`PATIENT_ETL_S3_REVIEW=required`), when
`PATIENT_ETL_REVIEW` says so (`required`: every batch; `first`: the first batch of each source), or
when its would-be outcomes break a rule (`PATIENT_ETL_REVIEW_MAX_ERRORED_PERCENT`,
`PATIENT_ETL_REVIEW_MAX_UPDATES`). Its publish decides every row against the target and rolls back
(the dry-run machinery): a preview results file, the outcomes kept beside the batch's staging, and the
status Awaiting approval, which the nightly run leaves alone.

A decision is a run of `published_batch` with `decision` in its config (the `approve_batch_job` and
`reject_batch_job` jobs, or the CLI): approval re-checks that the landed bytes are the ones previewed,
decides the outcomes again and says per row what changed since the preview; rejection and expiry
publish nothing and end the batch with a results file carrying the reason.
"""

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb

from patient_etl import results
from patient_etl.batches import AWAITING_APPROVAL, Batch, Registry
from patient_etl.duck import in_memory, sql_literal
from patient_etl.entities import ENTITIES
from patient_etl.partitions import batches
from patient_etl.resources import PatientEtl
from patient_etl.sources import Sources
from patient_etl.sources.base import sha256_of
from patient_etl.target import open_target
from patient_etl.workspace import REVIEWED_LOG, Workspace

PREVIEW_OUTCOMES = "preview_outcomes.parquet"  # in the batch's staging folder: rid-free, value-free
DECISIONS = {"approve": "approved", "reject": "rejected", "expire": "expired"}
ENDED = {"reject": "Rejected", "expire": "Expired"}
# A decision publishes, looks for possible duplicates (on approval) and delivers.
PUBLISH_ASSETS = [dg.AssetKey("published_batch"), dg.AssetKey("possible_duplicates"), dg.AssetKey("delivered_results")]


class ReviewRefused(Exception):
    """A decision that cannot be taken (not awaiting approval, not an approver, no reason...)."""


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def approvers(etl: PatientEtl) -> set[str]:
    return {name.strip() for name in (etl.approvers or "").split(",") if name.strip()}


def check_approver(etl: PatientEtl, *names: str) -> None:
    allowed = approvers(etl)
    for name in names:
        if allowed and name not in allowed:
            raise ReviewRefused(f"{name!r} may not approve or reject batches (PATIENT_ETL_APPROVERS)")


# -- holding --------------------------------------------------------------------------------------------

def _first_from_source(registry: Registry, batch: Batch) -> bool:
    """No batch of the same source (and mapping template) has been published yet."""
    return not any(b.batch_id != batch.batch_id and (b.source, b.mapping) == (batch.source, batch.mapping)
                   and b.status in ("Finished", "Finished with Errors") for b in registry.all())


def requested_hold(etl: PatientEtl, sources: Sources, batch: Batch) -> str | None:
    """Why the batch is held whatever its outcomes, or None."""
    if batch.review.get("decision"):
        return None  # approved once: reprocessing the same landed bytes needs no second review
    if batch.review.get("held"):
        return batch.review["held"]  # a held batch reprocessed stays held until decided
    if batch.review.get("requested"):
        return batch.review["requested"]
    if etl.review == "required":
        return "every batch is reviewed (PATIENT_ETL_REVIEW=required)"
    why = sources.of_batch(batch).review_reason(etl.home_dir(), batch)
    if why:
        return why
    if etl.review == "first" and _first_from_source(etl.registry(), batch):
        return "it is the first batch from its source (PATIENT_ETL_REVIEW=first)"
    return None


def rule_hold(etl: PatientEtl, counts: dict[str, int]) -> str | None:
    """Why the batch's would-be outcomes hold it, or None."""
    total = sum(counts.values())
    limit = etl.review_max_errored_percent
    if limit is not None and total and counts.get("Errored", 0) * 100 > limit * total:
        return (f"{counts['Errored'] * 100 // total}% of its rows errored "
                f"(more than PATIENT_ETL_REVIEW_MAX_ERRORED_PERCENT={limit})")
    if etl.review_max_updates is not None and counts.get("Updated", 0) > etl.review_max_updates:
        return (f"it would update {counts['Updated']} rows "
                f"(more than PATIENT_ETL_REVIEW_MAX_UPDATES={etl.review_max_updates})")
    return None


def hold_rule(etl: PatientEtl, sources: Sources, batch: Batch) -> Callable[[dict[str, int]], str | None]:
    """For publish: given the would-be counts, why to hold the batch (None: publish it)."""
    requested = requested_hold(etl, sources, batch)
    if batch.review.get("decision"):
        return lambda counts: None
    return lambda counts: requested or rule_hold(etl, counts)


def preview_outcomes(workspace: Workspace) -> Path:
    return workspace.folder / PREVIEW_OUTCOMES


def preview_base(batch: Batch) -> str:
    return results.results_base(batch, held=True)


def save_preview(duck: duckdb.DuckDBPyConnection, row_log: str, path: Path) -> None:
    """Each row's would-be outcome, without values, for the comparison at approval."""
    tmp = path.with_name(path.name + ".writing")
    duck.execute(f"COPY (SELECT file_index, row_number, entity, status FROM {row_log}) TO '{tmp}' (FORMAT parquet)")
    tmp.replace(path)


def compare_with_preview(duck: duckdb.DuckDBPyConnection, row_log: str, preview: Path) -> dict[str, int]:
    """A table `REVIEWED_LOG`: the row log plus `since_preview` where a row's outcome differs from the
    preview; returns the changes counted by transition (`Created -> Updated`)."""
    duck.execute(f"""
        CREATE OR REPLACE TABLE {REVIEWED_LOG} AS
        SELECT r.*, CASE WHEN p.status IS DISTINCT FROM r.status
                         THEN coalesce(p.status, 'not in the preview') || ' in the preview' END AS since_preview,
               p.status AS preview_status
        FROM {row_log} r LEFT JOIN read_parquet('{preview}') p USING (file_index, row_number, entity)""")
    return {f"{before or 'absent'} -> {after}": n for before, after, n in duck.execute(
        f"SELECT preview_status, status, count(*) FROM {REVIEWED_LOG} WHERE since_preview IS NOT NULL "
        "GROUP BY ALL ORDER BY ALL").fetchall()}


def hold(registry: Registry, batch: Batch, summary) -> Batch:
    """The batch waits for a decision, with its preview."""
    now = utc_now()
    review = {**batch.review, "held": summary.held, "held_at": batch.review.get("held_at") or now,
              "previewed_at": now, "preview_file": summary.results_file,
              "preview_errors_files": summary.errors_files, "preview_counts": summary.counts,
              "sha256": {item["name"]: item["sha256"] for item in batch.landed}}
    return registry.set_status(batch, AWAITING_APPROVAL, counts=summary.counts, results_file=summary.results_file,
                               reason=None, failure=None, dry_run=False, review=review)


# -- deciding ---------------------------------------------------------------------------------------------

def decider(context: dg.AssetExecutionContext, etl: PatientEtl, decision: str, decided_by: str) -> str:
    """Who decides: the config's `decided_by` (the CLI's user, or `--as`), else the run's user tag (set
    by Dagster+); a run user outside PATIENT_ETL_APPROVERS is refused."""
    if decision == "expire":
        return "nightly schedule"
    user = context.run.tags.get("dagster/user")
    if user:
        check_approver(etl, user)
    return decided_by or user or "dagster"


def check_decidable(etl: PatientEtl, batch: Batch, decision: str, reason: str) -> None:
    if decision not in DECISIONS:
        raise ReviewRefused(f"unknown decision {decision!r} (approve, reject or expire)")
    done = batch.review.get("decision")
    if done:
        raise ReviewRefused(f"batch {batch.batch_id} was already {done} by {batch.review.get('decided_by')} at "
                            f"{batch.review.get('decided_at')}" + ("; a new upload of the file makes a new batch"
                                                                   if done != "approved" else ""))
    if batch.status != AWAITING_APPROVAL:
        raise ReviewRefused(f"batch {batch.batch_id} is {batch.status}, not {AWAITING_APPROVAL}")
    if decision == "reject" and not reason.strip():
        raise ReviewRefused("a rejection needs a reason")
    if decision == "expire" and not expired(etl, batch, dt.datetime.now(dt.UTC)):
        raise ReviewRefused(f"batch {batch.batch_id} has not waited {etl.review_expires_days} days yet")


def check_previewed_bytes(etl: PatientEtl, batch: Batch) -> None:
    """Approval publishes exactly the landed bytes that were previewed."""
    home = etl.home_dir()
    previewed = batch.review.get("sha256", {})
    for item in batch.landed:
        path = home.root / item["path"]
        if previewed.get(item["name"]) != item["sha256"] or not path.exists() or sha256_of(path) != item["sha256"]:
            raise ReviewRefused(f"file {item['index'] + 1} of batch {batch.batch_id} is not the one previewed "
                                "(its sha256 differs); reprocess the batch to preview it again")
    if not preview_outcomes(etl.workspace(batch.batch_id)).exists():
        raise ReviewRefused(f"the preview of batch {batch.batch_id} is gone; reprocess it to preview it again")


def restore_decided(registry: Registry, batch: Batch) -> None:
    """A rejected or expired batch reprocessed (a backfill) went through landing and staging again: it
    ends as it was decided, not Failed, and nothing is published."""
    decision = batch.review.get("decision")
    ended = {DECISIONS[d]: status for d, status in ENDED.items()}.get(decision)
    if ended and batch.status != ended:
        registry.set_status(batch, ended)


def approving(batch: Batch, decided_by: str) -> Batch:
    """The batch as it will be recorded once published (in memory until then)."""
    batch.review = {**batch.review, "decision": "approved", "decided_by": decided_by, "decided_at": utc_now()}
    return batch


def end_unpublished(log, etl: PatientEtl, batch: Batch, decision: str, decided_by: str, reason: str) -> Batch:
    """Rejected or Expired: nothing published; a results file with the reason, the batch log, the webhook."""
    status = ENDED[decision]
    if decision == "expire":
        reason = f"not approved within {etl.review_expires_days} days of being held for review"
    message = f"{status.lower()} in review: {reason}"
    batch.review = {**batch.review, "decision": DECISIONS[decision], "decided_by": decided_by,
                    "decided_at": utc_now(), "decision_reason": reason}
    path = _write_ended(etl.home_dir().results, batch, status, message)
    target = open_target(etl.target())
    try:
        target.record_batch(results.batch_row(batch, status, {}, path.name, message), list(ENTITIES.values()))
    finally:
        target.dispose()
    batch = etl.registry().set_status(batch, status, reason=message, results_file=str(path), counts={},
                                      review=batch.review)
    etl.notify(log, batch)
    return batch


def _write_ended(folder: Path, batch: Batch, status: str, message: str) -> Path:
    tmp, final = results.claim_name(folder, results.results_base(batch))
    duck = in_memory()
    try:
        text = results.neutralize(sql_literal(message))
        results.write_csv(duck, f"SELECT NULL::BIGINT AS row_number, NULL AS entity, NULL AS external_id, "
                                f"'{status}' AS status, {text} AS messages", tmp)
    finally:
        duck.close()
    return results.link_into_place(tmp, final)


def expired(etl: PatientEtl, batch: Batch, now: dt.datetime) -> bool:
    held_at = batch.review.get("held_at")
    return (batch.status == AWAITING_APPROVAL and held_at is not None
            and now - dt.datetime.fromisoformat(held_at) >= dt.timedelta(days=etl.review_expires_days))


def expiry_requests(etl: PatientEtl, night: str, now: dt.datetime) -> list[dg.RunRequest]:
    """For the nightly schedule: each held batch past PATIENT_ETL_REVIEW_EXPIRES_DAYS ends Expired."""
    return [
        dg.RunRequest(partition_key=b.batch_id, run_key=f"expire-{night}-{b.batch_id}", asset_selection=PUBLISH_ASSETS,
                      run_config=decision_config("expire"), tags={"trigger": "review-expiry"})
        for b in etl.registry().all() if expired(etl, b, now)
    ]


def decision_config(decision: str, reason: str = "", decided_by: str = "") -> dict:
    return {"ops": {"published_batch": {"config": {"decision": decision, "reason": reason,
                                                   "decided_by": decided_by}}}}


def review_metadata(batch: Batch) -> dict:
    """What a person sees on the partition's materialization: never a row value."""
    review = batch.review
    if not review:
        return {}
    metadata: dict = {"held_for_review": review.get("held", "")}
    if batch.status == AWAITING_APPROVAL:
        metadata["review"] = dg.MetadataValue.md(
            f"**Awaiting approval** since {review['held_at']}: held because {review['held']}. Approve with "
            f"`patient-etl approve {batch.batch_id}` or by launching `approve_batch_job` on this partition.")
    for key in ("decision", "decided_by", "decided_at", "decision_reason"):
        if review.get(key):
            metadata[key] = review[key]
    if "changed_since_preview" in review:
        metadata["changed_since_preview"] = dg.MetadataValue.json(review["changed_since_preview"])
    return metadata


HELD_CHECK = dg.AssetCheckSpec("published_batch_was_not_held", asset="published_batch",
                               description="Warns while the batch waits for review.")


def held_check(batch: Batch) -> dg.AssetCheckResult:
    """A held batch shows as a failed (WARN) check on its partition until someone decides (evaluated in
    the publish step, from the batch as it ends there)."""
    held = batch.status == AWAITING_APPROVAL
    metadata = {"status": batch.status, **{k: v for k, v in batch.review.items()
                                          if k in ("held", "held_at", "decided_by", "decided_at")}}
    if held:
        metadata["preview_counts"] = dg.MetadataValue.json(batch.review.get("preview_counts", {}))
    return dg.AssetCheckResult(check_name=HELD_CHECK.name, passed=not held, severity=dg.AssetCheckSeverity.WARN,
                               metadata=metadata)


approve_batch_job = dg.define_asset_job(
    "approve_batch_job", selection=dg.AssetSelection.assets(*PUBLISH_ASSETS), partitions_def=batches,
    config=decision_config("approve"),
    description="Approve a batch held for review: launch on its partition (set decided_by if the UI has no user).")
reject_batch_job = dg.define_asset_job(
    "reject_batch_job", selection=dg.AssetSelection.assets(*PUBLISH_ASSETS), partitions_def=batches,
    config=decision_config("reject", reason=""),
    description="Reject a batch held for review: launch on its partition with a reason in the config.")

