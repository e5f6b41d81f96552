"""Landing: a batch's raw bytes copied into the archive, sha256 and size recorded, before anything
else happens. The source leaves the inbox only once its landed copy is safe on disk."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from patient_etl.batches import Batch, Home, Registry
from patient_etl.sources.sftp import SftpServer
from patient_etl.staging.mappings import available

_CHUNK = 1 << 20


def archive_name(index: int, name: str) -> str:
    """The archived file's name: its position and a safe form of the partner's name."""
    safe = re.sub(r"[^\w.-]+", "_", Path(name).name, flags=re.UNICODE).strip("._") or "file"
    return f"{index:03d}_{safe}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def copy_with_digest(source: Path, dest: Path) -> tuple[int, str]:
    """Stream `source` to `dest` (via a temporary name), fsync'd; return (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    tmp = dest.with_name(dest.name + ".part")
    with source.open("rb") as src, tmp.open("wb") as out:
        while block := src.read(_CHUNK):
            digest.update(block)
            size += len(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)
    return size, digest.hexdigest()


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


def land_local(home: Home, registry: Registry, batch: Batch) -> list[dict]:
    """Land files from the upload inbox (moved out afterwards) or from CLI paths (left in place)."""
    if already_landed(home, batch):
        registry.set_status(batch, "Landed")
        return batch.landed
    folder = home.batch_archive(batch.batch_id)
    folder.mkdir(parents=True, exist_ok=True)
    landed = []
    for index, source in enumerate(batch.files):
        path = Path(source.location)
        if not path.is_file():
            raise FileNotFoundError(f"batch {batch.batch_id}: source file {index + 1} is gone before landing")
        dest = folder / archive_name(index, source.name)
        size, digest = copy_with_digest(path, dest)
        landed.append({"index": index, "name": source.name, "path": str(dest.relative_to(home.root)),
                       "size": size, "sha256": digest})
    registry.set_status(batch, "Landed", landed=landed)
    if batch.source == "upload":
        for source in batch.files:
            Path(source.location).unlink(missing_ok=True)
        folder = Path(batch.files[0].location).parent
        template_folder = folder.parent == home.inbox and folder.name in available()
        if folder != home.inbox and not template_folder:
            for manifest in ("_READY", "manifest.json", "MANIFEST"):  # a closed folder goes with its files
                (folder / manifest).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
    return landed


def landed_paths(home: Home, batch: Batch) -> list[tuple[str, Path]]:
    return [(item["name"], home.root / item["path"]) for item in batch.landed]


def land_sftp(home: Home, registry: Registry, batch: Batch, server: SftpServer) -> list[dict]:
    """Download each file (sha256 while streaming), then retire it from the pending folder.

    A backfill finds the batch landed and its files retired, and never contacts the server.
    """
    if already_landed(home, batch):
        registry.set_status(batch, "Landed")
    else:
        folder = home.batch_archive(batch.batch_id)
        folder.mkdir(parents=True, exist_ok=True)
        landed = []
        for index, source in enumerate(batch.files):
            size, digest = server.download(source.location, folder / archive_name(index, source.name))
            landed.append({"index": index, "name": source.name,
                           "path": str((folder / archive_name(index, source.name)).relative_to(home.root)),
                           "size": size, "sha256": digest})
        registry.set_status(batch, "Landed", landed=landed)
    retired = set(batch.remote.get("retired", []))
    for source in batch.files:
        if source.location not in retired:
            # FileNotFoundError: retired by an earlier attempt that died before recording it.
            with contextlib.suppress(FileNotFoundError):
                server.retire(source.location)
            retired.add(source.location)
            batch.remote["retired"] = sorted(retired)
            registry.save(batch)
    return batch.landed


def remote_results_name(batch: Batch) -> str:
    """`YYYY-MM-DD_<original name>_results.csv`: the partner's own name, dated by receipt."""
    return f"{batch.received_on.isoformat()}_{Path(batch.display_name).stem}_results.csv"


def deliver_results(registry: Registry, batch: Batch, server: SftpServer) -> str | None:
    """Upload the batch's results file into the results folder, once per results file."""
    if not batch.results_file:
        return None
    delivered = batch.remote.setdefault("delivered", {})
    if batch.results_file not in delivered:
        delivered[batch.results_file] = server.upload_result(Path(batch.results_file), remote_results_name(batch))
        registry.save(batch)
    return delivered[batch.results_file]
