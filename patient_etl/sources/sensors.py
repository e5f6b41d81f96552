"""The upload-folder sensor: each complete file in the inbox becomes a batch and a run.

A file is complete when its size and modification time are the same on two consecutive ticks (and
it is older than `settle_seconds`), and its name is not a temporary one. The cursor holds only the
files seen once and not yet registered, so a tick costs one directory scan however many files wait.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator

import dagster as dg

from patient_etl.batches import Batch, SourceFile, partition_key
from patient_etl.jobs import import_job
from patient_etl.partitions import batches
from patient_etl.resources import PartnerSftp, PatientEtl
from patient_etl.sources.sftp import RemoteFile, SftpError
from patient_etl.staging.mappings import available

TEMPORARY_SUFFIXES = (".part", ".tmp", ".filepart", ".partial", ".crdownload", ".uploading")
MAX_NEW_BATCHES_PER_TICK = 200
MANIFESTS = ("_READY", "manifest.json", "MANIFEST")


def is_candidate(name: str) -> bool:
    return not name.startswith((".", "~$")) and not name.lower().endswith(TEMPORARY_SUFFIXES)


def upload_batch_id(name: str, size: int, mtime_ns: int) -> str:
    """Deterministic per file version, so a file seen again on a later tick is the same batch."""
    when = dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.UTC)
    return partition_key("upload", name, f"{name}|{size}|{mtime_ns}", when)


def new_batches_result(new_batches: list[Batch], waiting: dict[str, list[int]],
                       process_on_arrival: bool) -> dg.SensorResult:
    """The tick's outcome: the new batches' partitions and runs, or a skip saying what waits; the cursor
    keeps the files seen once and not yet registered."""
    cursor = json.dumps(waiting, sort_keys=True)
    if not new_batches:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(f"{len(waiting)} file(s) waiting to settle; no complete new file"),
            cursor=cursor,
        )
    keys = [b.batch_id for b in new_batches]
    runs = [dg.RunRequest(partition_key=k, run_key=k) for k in keys] if process_on_arrival else []
    return dg.SensorResult(
        dynamic_partitions_requests=[batches.build_add_request(keys)], run_requests=runs, cursor=cursor
    )


def inbox_files(inbox) -> Iterator[tuple[os.DirEntry, str | None]]:
    """What the inbox offers: files; folders closed by a manifest (`_READY` or `manifest.json`), each
    one batch, stamped by the manifest; and the same inside sub-folders named after a saved mapping
    template, which then applies (`inbox/synthea/export.zip` is imported with `synthea`)."""
    templates = set(available())

    def scan(folder: str, mapping: str | None) -> Iterator[tuple[os.DirEntry, str | None]]:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and is_candidate(entry.name):
                    yield entry, mapping
                elif entry.is_dir(follow_symlinks=False) and is_candidate(entry.name):
                    manifest = next((m for m in os.scandir(entry.path) if m.name in MANIFESTS), None)
                    if manifest is not None:
                        yield manifest_entry(entry, manifest), mapping
                    elif mapping is None and entry.name in templates:
                        yield from scan(entry.path, entry.name)

    yield from scan(str(inbox), None)


class manifest_entry:  # noqa: N801 (stands in for an os.DirEntry)
    """A closed folder, seen as one entry whose signature is its manifest's."""

    def __init__(self, folder: os.DirEntry, manifest: os.DirEntry):
        self.name, self.path, self._manifest = folder.name, folder.path, manifest

    def is_dir(self, follow_symlinks: bool = False) -> bool:
        return True

    def stat(self, follow_symlinks: bool = False) -> os.stat_result:
        return self._manifest.stat(follow_symlinks=False)


@dg.sensor(job=import_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def upload_folder_sensor(context: dg.SensorEvaluationContext, etl: PatientEtl) -> dg.SensorResult | dg.SkipReason:
    home = etl.home_dir()
    registry = etl.registry()
    previous: dict[str, list[int]] = json.loads(context.cursor) if context.cursor else {}
    waiting: dict[str, list[int]] = {}
    new_batches = []
    now = time.time()
    for entry, mapping in inbox_files(home.inbox):
        stat = entry.stat(follow_symlinks=False)
        signature = [stat.st_size, stat.st_mtime_ns]
        label = f"{mapping}/{entry.name}" if mapping else entry.name
        batch_id = upload_batch_id(label, *signature)
        if registry.path(batch_id).exists():
            continue
        settled = now - stat.st_mtime_ns / 1e9 >= etl.settle_seconds
        if previous.get(label) != signature or not settled or len(new_batches) >= MAX_NEW_BATCHES_PER_TICK:
            waiting[label] = signature
            continue
        if entry.is_dir(follow_symlinks=False):  # a folder closed by its manifest: all its files, one batch
            sources = [SourceFile(f.name, f.path, f.stat().st_size, f.stat().st_mtime_ns)
                       for f in sorted(os.scandir(entry.path), key=lambda f: f.name)
                       if f.is_file(follow_symlinks=False) and is_candidate(f.name) and f.name not in MANIFESTS]
            if not sources:
                continue
        else:
            sources = [SourceFile(entry.name, entry.path, stat.st_size, stat.st_mtime_ns)]
        received = dt.datetime.fromtimestamp(stat.st_mtime_ns / 1e9, dt.UTC)
        new_batches.append(registry.register("upload", sources, "", mapping=mapping, now=received,
                                             batch_id=batch_id))
    return new_batches_result(new_batches, waiting, etl.process_on_arrival)


def sftp_batch_id(remote: RemoteFile) -> str:
    when = dt.datetime.fromtimestamp(remote.mtime, dt.UTC)
    return partition_key("sftp", remote.name, f"{remote.name}|{remote.size}|{remote.mtime}", when)


@dg.sensor(job=import_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def sftp_sensor(context: dg.SensorEvaluationContext, etl: PatientEtl, sftp: PartnerSftp) -> dg.SensorResult:
    """Each complete file in the SFTP pending folder becomes a batch and a run.

    Complete: the same size and modification time on two consecutive looks, and not a temporary
    name. A tick that cannot reach the server skips with the reason; the daemon carries on.
    """
    if sftp.server is None:
        return dg.SensorResult(skip_reason=dg.SkipReason("SFTP is not configured (PATIENT_ETL_SFTP_HOST)"),
                               cursor=context.cursor)
    try:
        pending = sftp.server.list_pending()
    except SftpError as exc:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"SFTP server unavailable: {exc}"), cursor=context.cursor)
    registry = etl.registry()
    previous: dict[str, list[int]] = json.loads(context.cursor) if context.cursor else {}
    waiting: dict[str, list[int]] = {}
    new_batches = []
    for remote in pending:
        batch_id = sftp_batch_id(remote)
        if registry.path(batch_id).exists():
            continue
        signature = [remote.size, remote.mtime]
        if previous.get(remote.name) != signature or len(new_batches) >= MAX_NEW_BATCHES_PER_TICK:
            waiting[remote.name] = signature
            continue
        source = SourceFile(remote.name, remote.name, remote.size, remote.mtime * 10**9)
        received = dt.datetime.fromtimestamp(remote.mtime, dt.UTC)  # the partner's upload, not our tick
        new_batches.append(registry.register("sftp", [source], "", now=received, batch_id=batch_id))
    return new_batches_result(new_batches, waiting, etl.process_on_arrival)


def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[upload_folder_sensor, sftp_sensor])
