"""The nightly run: at midnight, every batch still pending is processed, and every batch held for
review longer than PATIENT_ETL_REVIEW_EXPIRES_DAYS ends Expired."""

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


def defs() -> dg.Definitions:
    """PATIENT_ETL_TIMEZONE (an IANA name) sets the nightly run's midnight; UTC by default."""
    return dg.Definitions(schedules=[nightly_import_schedule_for(os.environ.get("PATIENT_ETL_TIMEZONE",
                                                                                DEFAULT_TIMEZONE))])
