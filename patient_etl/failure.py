"""How a batch ends Failed, whichever stage it failed in: a results file carrying the reason, the batch
log in the target, the registry's status and the webhook. Nothing of the batch is published.

The reason is written for partners and engineers and names no row values.
"""

from __future__ import annotations

from patient_etl import results
from patient_etl.batches import Batch
from patient_etl.entities import ENTITIES
from patient_etl.publish.target import Target
from patient_etl.resources import PatientEtl


def fail_batch(log, etl: PatientEtl, batch: Batch, reason: str) -> Batch:
    """Record `batch` as Failed with `reason`; return it as saved."""
    path = results.write_failed(etl.home_dir().results, batch, reason)
    target = Target(etl.target())
    try:
        with target.engine.begin() as conn:
            target.serialize_publishes(conn)
            target.create_schema(conn, list(ENTITIES.values()))
            target.write_batch_row(conn, results.batch_row(batch, "Failed", {}, path.name, reason))
    finally:
        target.dispose()
    batch = etl.registry().set_status(batch, "Failed", reason=reason, results_file=str(path), counts={})
    etl.notify(log, batch)
    return batch
