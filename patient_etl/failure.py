"""How a batch ends Failed, whichever stage it failed in and whoever launched the run.

One path: a results file carrying the reason, the batch log in the target, the registry's status and
the webhook; nothing of the batch is published. A file-level problem ends its batch from the staging
step itself (the partner's file is at fault; retrying cannot help). Any other failed run (the target
unreachable, a bug, a killed run) is ended by `end_failed_run`, which the run-failure sensor calls for
runs launched through the instance (sensors, schedules, backfills, the UI) and the CLI calls for its
own in-process runs. A Failed batch is never retried by the nightly schedule; `patient-etl rerun` or a
backfill reprocesses it.

Reasons are written for partners and engineers and name no row values: a step that failed with our
own `dg.Failure` gives its description (made PHI-safe by `errors.phi_safe`); anything else gives only
the exception's type.
"""

from __future__ import annotations

import dagster as dg

from patient_etl import results
from patient_etl.batches import Batch
from patient_etl.entities import ENTITIES
from patient_etl.resources import PatientEtl
from patient_etl.sources import Sources, deliver_results
from patient_etl.target import open_target

PARTITION_TAG = "dagster/partition"


def fail_batch(log, etl: PatientEtl, batch: Batch, reason: str, failure: str = "file", scope: str = "file",
               sources: Sources | None = None, run_id: str | None = None) -> Batch:
    """Record `batch` as Failed with `reason`; return it as saved. `failure` says whose fault it is
    ("file": the partner's; "run": ours), `scope` what the results file's message names (file, target,
    batch). With `sources`, the results file goes back to the batch's source (SFTP, object store). The failed
    `run_id` gets a row in the target's run history, unless that run had committed an outcome before it
    failed: that row stays, and the next reprocess reports it (see `publish_batch`)."""
    path = results.write_failed(etl.home_dir().results, batch, reason, scope)
    target = open_target(etl.target())
    try:
        target.record_batch(results.batch_row(batch, "Failed", {}, path.name, reason, run_id=run_id),
                            list(ENTITIES.values()))
    except Exception as exc:  # the target may be what failed: the results file and registry still say why
        log.warning(f"batch {batch.batch_id}: the Failed status could not be written to the target "
                    f"({type(exc).__name__})")
    finally:
        target.dispose()
    batch = etl.registry().set_status(batch, "Failed", reason=reason, results_file=str(path), counts={},
                                      failure=failure)
    etl.notify(log, batch)
    if sources is not None:
        deliver_results(etl.registry(), batch, sources, log=log)
    return batch


def run_failure_reason(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run failed, from its step failures, without row values."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.step_failure_data if event else None
        if data is None:
            continue
        step = event.step_key or "a step"
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        error = data.error
        kind = error.cls_name if error is not None else "an error"
        if kind == "DagsterAssetCheckFailedError":  # its message names the checks, never values
            return f"step {step}: {error.message.strip().splitlines()[-1]} failed (a blocking check); see run {run_id}"
        return f"step {step} failed with {kind}; see run {run_id} in Dagster"
    return f"run {run_id} failed before any step reported an error (it may have been stopped or killed)"


def end_failed_run(log, etl: PatientEtl, instance: dg.DagsterInstance, run: dg.DagsterRun,
                   sources: Sources | None = None) -> Batch | None:
    """End the batch of a failed run as Failed, unless it already ended (Failed at file level, or its
    publish had finished before a later step failed). Returns the batch when it was ended here."""
    batch_id = run.tags.get(PARTITION_TAG)
    batch = etl.registry().get(batch_id) if batch_id else None
    if batch is None or not batch.is_pending:
        return None
    return fail_batch(log, etl, batch, run_failure_reason(instance, run.run_id), failure="run", scope="batch",
                      sources=sources, run_id=run.run_id)


@dg.run_failure_sensor(name="batch_failure_sensor", minimum_interval_seconds=15,
                       default_status=dg.DefaultSensorStatus.RUNNING)
def batch_failure_sensor(context: dg.RunFailureSensorContext, etl: PatientEtl, sources: Sources):
    """Every failed batch run ends its batch Failed: results file, batch log, webhook, delivery."""
    batch = end_failed_run(context.log, etl, context.instance, context.dagster_run, sources)
    if batch is None:
        return dg.SkipReason(f"run {context.dagster_run.run_id}: its batch had already ended")
    return None
