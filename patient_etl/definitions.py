"""The code location: the flow's stages, assembled, with the shared resources and policy."""

from __future__ import annotations

import dagster as dg

from patient_etl import failure, partitions, schedules
from patient_etl.duck import memory_limit
from patient_etl.jobs import import_job
from patient_etl.linkage import assets as linkage_assets
from patient_etl.normalize import assets as normalize_assets
from patient_etl.publish import assets as publish_assets
from patient_etl.quality import assets as quality_assets
from patient_etl.resources import patient_etl_from_env
from patient_etl.sources import assets as source_assets
from patient_etl.sources import delivery, sensors
from patient_etl.sources.resources import sources_from_env
from patient_etl.staging import assets as staging_assets


def build_defs(resources: dict | None = None) -> dg.Definitions:
    """`resources` replace the ones built from the environment (the CLI and tests pass their own). A
    setting read as the runs go (DuckDB's memory limit) is checked here: a code location that loads
    runs no batch into it."""
    memory_limit()
    resources = {"etl": patient_etl_from_env(), "sources": sources_from_env(), **(resources or {})}
    return dg.Definitions.merge(
        source_assets.defs(),
        staging_assets.defs(),
        quality_assets.defs(),
        normalize_assets.defs(),
        linkage_assets.defs(),
        publish_assets.defs(),
        delivery.defs(),
        sensors.defs(),
        schedules.defs(),
        dg.Definitions(
            jobs=[import_job],
            sensors=[failure.batch_failure_sensor, partitions.batch_partitions_sensor],
            # The two processes a run starts as it starts (GX's validator, the linkage) are resources too.
            resources={"row_check_validator": quality_assets.RowCheckValidator(etl=resources["etl"]),
                       "linkage_process": linkage_assets.LinkageProcess(), **resources},
            # Every launch (the job, asset-graph Materialize, backfills) runs a batch in one process: a
            # step process would spend seconds importing the code location, a dozen times, and DuckDB
            # already uses both cores; batches run side by side as separate runs.
            executor=dg.in_process_executor,
        ),
    )


defs = build_defs()
