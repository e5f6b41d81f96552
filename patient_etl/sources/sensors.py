"""One sensor loop for every source: each complete pending item becomes a batch and a run.

Complete means safe to say so: the item looked the same on two consecutive ticks (size, modification
time, ETag), and either the partner marked it complete (`<name>.done`, a folder's manifest) or it has
not changed for the quiet period (`Sources.quiet_seconds`). Temporary names are never picked up. The
cursor holds only the items seen and not yet registered, so a tick costs one listing however many
files wait; at most MAX_NEW_BATCHES_PER_TICK batches are registered a tick.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import dagster as dg

from patient_etl.batches import Batch, Registry, partition_key
from patient_etl.jobs import import_job
from patient_etl.partitions import batches
from patient_etl.resources import PatientEtl
from patient_etl.sources.base import Pending, Source, SourceUnavailable, shown_name
from patient_etl.sources.resources import Sources

MAX_NEW_BATCHES_PER_TICK = 200


def batch_id_of(kind: str, item: Pending) -> str:
    """Deterministic per item version, so an item seen again on a later tick is the same batch."""
    when = dt.datetime.fromtimestamp(item.modified, dt.UTC)
    return partition_key(kind, item.label, item.fingerprint, when)


def look(source: Source, registry: Registry, pending: list[Pending], previous: dict, quiet_seconds: float,
         now: float) -> tuple[list[Batch], dict[str, list]]:
    """Register the complete new items; return them and the items still waiting (the next cursor)."""
    waiting: dict[str, list] = {}
    new_batches: list[Batch] = []
    for item in pending:
        batch_id = batch_id_of(source.kind, item)
        if registry.path(batch_id).exists():
            continue
        signature = list(item.signature)
        quiet = item.marked or now - item.modified >= quiet_seconds
        if previous.get(item.label) != signature or not quiet or len(new_batches) >= MAX_NEW_BATCHES_PER_TICK:
            waiting[item.label] = signature
            continue
        received = dt.datetime.fromtimestamp(item.modified, dt.UTC)  # the partner's upload, not our tick
        new_batches.append(registry.register(source.kind, list(item.files), "", mapping=item.mapping,
                                             now=received, batch_id=batch_id))
    return new_batches, waiting


def tick_result(new_batches: list[Batch], waiting: dict, process_on_arrival: bool,
                refused: list[Pending] = ()) -> dg.SensorResult:
    """The new batches' partitions and runs, or a skip saying what waits (and what is refused)."""
    cursor = json.dumps(waiting, sort_keys=True)
    if not new_batches:
        why = f"{len(waiting)} file(s) waiting to settle; no complete new file"
        if refused:
            why += "; not picked up: " + ", ".join(f"'{shown_name(p.label)}' ({p.refused})" for p in refused)
        return dg.SensorResult(
            skip_reason=dg.SkipReason(why),
            cursor=cursor,
        )
    keys = [b.batch_id for b in new_batches]
    runs = [dg.RunRequest(partition_key=k, run_key=k) for k in keys] if process_on_arrival else []
    return dg.SensorResult(
        dynamic_partitions_requests=[batches.build_add_request(keys)], run_requests=runs, cursor=cursor
    )


def source_sensor(kind: str, name: str, minimum_interval_seconds: int, description: str) -> dg.SensorDefinition:
    """The sensor of one source; a source that is not configured, or cannot be reached, skips with why."""

    @dg.sensor(name=name, job=import_job, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING, description=description)
    def _sensor(context: dg.SensorEvaluationContext, etl: PatientEtl, sources: Sources) -> dg.SensorResult:
        source = sources.of(kind)
        why = source.not_configured()
        if why:
            return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=context.cursor)
        home = etl.home_dir()
        try:
            pending = source.list_pending(home)
        except SourceUnavailable as exc:
            return dg.SensorResult(skip_reason=dg.SkipReason(f"{source.title} unavailable: {exc}"),
                                   cursor=context.cursor)
        refused = [p for p in pending if p.refused]
        for item in refused:
            context.log.warning(f"{source.title}: not picked up: '{shown_name(item.label)}': {item.refused}")
        previous = json.loads(context.cursor) if context.cursor else {}
        new_batches, waiting = look(source, etl.registry(), [p for p in pending if not p.refused], previous,
                                    sources.quiet_seconds, time.time())
        return tick_result(new_batches, waiting, etl.process_on_arrival, refused)

    return _sensor


upload_folder_sensor = source_sensor("upload", "upload_folder_sensor", 30,
                                     "Each complete file or closed folder in the home's inbox becomes a batch.")
sftp_sensor = source_sensor("sftp", "sftp_sensor", 60,
                            "Each complete file in the SFTP pending folder becomes a batch.")
s3_sensor = source_sensor("s3", "s3_sensor", 60,
                          "Each complete object under the object store's pending prefix becomes a batch.")


def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[upload_folder_sensor, sftp_sensor, s3_sensor])
