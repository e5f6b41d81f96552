"""One dynamic partition per import batch; its key is the batch ID.

The batch registry under the home is the record of every batch. An instance that lacks some of its
partitions (a new instance, a restart of one kept in a temporary folder, imports run elsewhere) gets
them back from `batch_partitions_sensor`, so a backfill of any batch finds its partition.
"""

import dagster as dg

from patient_etl.resources import PatientEtl

batches = dg.DynamicPartitionsDefinition(name="batches")
ADD_AT_MOST = 1000  # per tick: a home with many thousands of batches catches up over a few ticks


@dg.sensor(name="batch_partitions_sensor", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def batch_partitions_sensor(context: dg.SensorEvaluationContext, etl: PatientEtl) -> dg.SensorResult:
    """Batches the registry knows and the instance's `batches` partitions lack are added back."""
    known = set(context.instance.get_dynamic_partitions(batches.name))
    missing = [batch_id for batch_id in etl.registry().ids() if batch_id not in known][:ADD_AT_MOST]
    if not missing:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"all {len(known)} batch partitions are present"))
    return dg.SensorResult(dynamic_partitions_requests=[batches.build_add_request(missing)])
