"""The nightly run: at midnight, every batch still pending is processed, and every batch held for
review longer than PATIENT_ETL_REVIEW_EXPIRES_DAYS ends Expired. The daily retention run: the landed
copies and staging of batches that ended more than PATIENT_ETL_RETENTION_DAYS ago are removed."""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg

from patient_etl.jobs import import_job
from patient_etl.publish.review import expiry_requests
from patient_etl.resources import PatientEtl

DEFAULT_TIMEZONE = "UTC"


def nightly_requests(etl: PatientEtl, night: str, now: dt.datetime | None = None) -> list[dg.RunRequest]:
    return [
        dg.RunRequest(partition_key=b.batch_id, run_key=f"nightly-{night}-{b.batch_id}", tags={"trigger": "nightly"})
        for b in etl.registry().pending()
    ] + expiry_requests(etl, night, now or dt.datetime.now(dt.UTC))


def nightly_import_schedule_for(timezone: str) -> dg.ScheduleDefinition:
    @dg.schedule(job=import_job, cron_schedule="0 0 * * *", execution_timezone=timezone,
                 name="nightly_import_schedule", default_status=dg.DefaultScheduleStatus.RUNNING)
    def nightly_import_schedule(context: dg.ScheduleEvaluationContext, etl: PatientEtl):
        night = context.scheduled_execution_time.date().isoformat()
        requests = nightly_requests(etl, night, context.scheduled_execution_time)
        return requests or dg.SkipReason("no batch is pending")

    return nightly_import_schedule


@dg.op(name="purge_ended_batches")
def purge_ended_batches(context, etl: PatientEtl) -> dg.Output:
    """Remove the landed copies and staging of batches that ended more than `retention_days` ago."""
    purged = etl.registry().purge(etl.retention_days)
    context.log.info(f"retention: purged {len(purged)} batch(es) that ended more than {etl.retention_days} days ago")
    return dg.Output(len(purged), metadata={"batches_purged": len(purged), "retention_days": etl.retention_days})


@dg.job(name="retention_job", description="Remove landed copies and staging of batches past retention.")
def retention_job():
    purge_ended_batches()


retention_schedule = dg.ScheduleDefinition(
    name="retention_schedule", job=retention_job, cron_schedule="30 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30: purge batches that ended more than PATIENT_ETL_RETENTION_DAYS (30) ago.",
)


def defs() -> dg.Definitions:
    """PATIENT_ETL_TIMEZONE (an IANA name) sets the nightly run's midnight; UTC by default."""
    timezone = os.environ.get("PATIENT_ETL_TIMEZONE", DEFAULT_TIMEZONE)
    return dg.Definitions(schedules=[nightly_import_schedule_for(timezone), retention_schedule],
                          jobs=[retention_job])
