"""The code location: the flow's stages, assembled, with the shared resources."""

import dagster as dg

from patient_etl import schedules
from patient_etl.entities import assets as entity_assets
from patient_etl.jobs import import_job
from patient_etl.publish import assets as publish_assets
from patient_etl.quality import assets as quality_assets
from patient_etl.resources import patient_etl_from_env
from patient_etl.sources import assets as source_assets
from patient_etl.sources import delivery, sensors
from patient_etl.sources.resources import sources_from_env
from patient_etl.staging import assets as staging_assets


def build_defs() -> dg.Definitions:
    return dg.Definitions.merge(
        source_assets.defs(),
        staging_assets.defs(),
        quality_assets.defs(),
        entity_assets.defs(),
        publish_assets.defs(),
        delivery.defs(),
        sensors.defs(),
        schedules.defs(),
        dg.Definitions(jobs=[import_job], resources={"etl": patient_etl_from_env(), "sources": sources_from_env()}),
    )


defs = build_defs()
