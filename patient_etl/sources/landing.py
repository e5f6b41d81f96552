"""Landing: a batch's raw bytes copied into the archive, sha256 and size recorded, before anything
else happens. The source leaves pending only once its landed copy is safe on disk and the source
still holds the very version that was landed; a backfill reuses the landed copy and never contacts
the source."""

from __future__ import annotations

from pathlib import Path

from patient_etl.batches import Batch, Home, Registry
from patient_etl.sources.base import Source, SourceChanged, archive_name, sha256_of


def already_landed(home: Home, batch: Batch) -> bool:
    """A landed batch is reused by backfills, once its archived bytes still match their sha256."""
    if not batch.landed:
        return False
    for item in batch.landed:
        path = home.root / item["path"]
        if not path.exists() or sha256_of(path) != item["sha256"]:
            raise RuntimeError(f"landed copy of batch {batch.batch_id} file {item['index']} is missing or "
                               "altered; refusing to reprocess it")
    return True


def land_batch(home: Home, registry: Registry, batch: Batch, source: Source) -> list[dict]:
    """Land every file of the batch, re-check them at the source, then retire them from pending.

    SourceChanged (the partner was still writing, or replaced the file) leaves nothing landed and
    nothing retired: the file stays pending and its next version is a new batch.
    """
    if already_landed(home, batch):
        registry.set_status(batch, "Landed")
    else:
        folder = home.batch_archive(batch.batch_id)
        folder.mkdir(parents=True, exist_ok=True)
        landed: list[dict] = []
        try:
            for index, file in enumerate(batch.files):
                dest = folder / archive_name(index, file.name)
                size, digest = source.land(file, dest)
                landed.append({"index": index, "name": file.name, "path": str(dest.relative_to(home.root)),
                               "size": size, "sha256": digest})
            if not all(source.unchanged(file) for file in batch.files):
                raise SourceChanged("a file changed after it was landed")
        except BaseException:
            for item in landed:
                (home.root / item["path"]).unlink(missing_ok=True)
            raise
        registry.set_status(batch, "Landed", landed=landed)
    retired = set(batch.remote.get("retired", []))
    retiring = [file for file in batch.files if file.location not in retired]
    for file in retiring:
        # Only the landed version leaves pending: a file since replaced under the same name (or
        # already gone) is not this batch's to retire.
        if source.unchanged(file):
            source.retire(home, file)
        retired.add(file.location)
        batch.remote["retired"] = sorted(retired)
        registry.save(batch)
    if retiring:
        source.after_retiring(home, batch)
    return batch.landed


def landed_paths(home: Home, batch: Batch) -> list[tuple[str, Path]]:
    return [(item["name"], home.root / item["path"]) for item in batch.landed]
