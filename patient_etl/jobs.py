"""The one job: a batch through the whole flow."""

import dagster as dg

from patient_etl.partitions import batches

FLOW = ("ingest", "stage", "validate", "normalize", "publish", "linkage")

import_job = dg.define_asset_job(
    "import_job",
    selection=dg.AssetSelection.groups(*FLOW),
    partitions_def=batches,
    description="Land, stage, check, normalize and publish one batch, then look for possible duplicates.",
)
