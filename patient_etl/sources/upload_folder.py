"""Local sources: files named on the command line, and the upload folder (the home's `inbox/`).

The upload folder offers plain files and zips; folders closed by a manifest (`_READY`,
`manifest.json` or `MANIFEST`), each one batch; and the same inside sub-folders named after a saved
mapping template, which then applies (`inbox/synthea/export.zip` is imported with `synthea`).
Everything under `inbox/review/` (templates' sub-folders too) is held for review before publish.
A landed file is removed from the inbox: its archived copy is the one the pipeline keeps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from patient_etl.batches import Batch, Home, SourceFile
from patient_etl.saved_mappings import saved_mapping_names
from patient_etl.sources.base import (
    DONE_SUFFIX,
    Pending,
    Source,
    SourceChanged,
    has_control_characters,
    is_candidate,
    read_chunks,
    refused_item,
    write_streamed,
)

MANIFESTS = ("_READY", "manifest.json", "MANIFEST")
REVIEW_FOLDER = "review"


class LocalFiles(Source):
    """Files named on the command line: landed from where they are, and left there."""

    kind = "cli"
    title = "local files"

    def land(self, file: SourceFile, dest: Path) -> tuple[int, str]:
        path = Path(file.location)
        if not path.is_file():
            raise FileNotFoundError(f"source file {file.name!r} is gone before landing")
        if not self.unchanged(file):
            raise SourceChanged(f"{file.name!r} is not the version that was registered")
        return write_streamed(read_chunks(path), dest, expected_size=file.size)

    def unchanged(self, file: SourceFile) -> bool:
        try:
            now = os.stat(file.location, follow_symlinks=False)
        except OSError:
            return False
        return (now.st_size, now.st_mtime_ns) == (file.size, file.mtime_ns)


class UploadFolder(LocalFiles):
    """The upload folder under the home: what waits in `inbox/`, removed once landed."""

    kind = "upload"
    title = "upload folder"

    def list_pending(self, home: Home) -> list[Pending]:
        templates = set(saved_mapping_names())
        return [*_scan(home.inbox, None, templates), *_scan(home.inbox / REVIEW_FOLDER, None, templates, "review/")]

    def review_reason(self, home: Home, batch: Batch) -> str | None:
        if Path(batch.files[0].location).is_relative_to(home.inbox / REVIEW_FOLDER):
            return f"it was dropped into the upload folder's {REVIEW_FOLDER}/ sub-folder"
        return super().review_reason(home, batch)

    def retire(self, home: Home, file: SourceFile) -> None:
        Path(file.location).unlink(missing_ok=True)
        Path(file.location + DONE_SUFFIX).unlink(missing_ok=True)

    def after_retiring(self, home: Home, batch: Batch) -> None:
        folder = Path(batch.files[0].location).parent
        roots = (home.inbox, home.inbox / REVIEW_FOLDER)
        template_folder = folder.parent in roots and folder.name in saved_mapping_names()
        if folder not in roots and not template_folder:
            for manifest in MANIFESTS:  # a closed folder goes with its files
                (folder / manifest).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()


def _scan(folder: Path, mapping: str | None, templates: set[str], under: str = "") -> Iterator[Pending]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return
    names = {e.name for e in entries}
    for entry in entries:
        if not is_candidate(entry.name):
            continue
        label = under + (f"{mapping}/{entry.name}" if mapping else entry.name)
        if entry.is_file(follow_symlinks=False) and has_control_characters(entry.name):
            stat = entry.stat(follow_symlinks=False)
            yield refused_item(label, stat.st_size, stat.st_mtime_ns / 1e9)
        elif entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            file = SourceFile(entry.name, entry.path, stat.st_size, stat.st_mtime_ns)
            yield Pending(label, (file,), f"{label}|{stat.st_size}|{stat.st_mtime_ns}",
                          (stat.st_size, stat.st_mtime_ns), stat.st_mtime_ns / 1e9,
                          marked=entry.name + DONE_SUFFIX in names, mapping=mapping)
        elif entry.is_dir(follow_symlinks=False):
            manifest = next((m for m in MANIFESTS if (Path(entry.path) / m).is_file()), None)
            if manifest is not None:
                closed = _closed_folder(entry, label, manifest, mapping)
                if closed is not None:
                    yield closed
            elif mapping is None and entry.name in templates:
                yield from _scan(Path(entry.path), entry.name, templates, under)


def _closed_folder(entry: os.DirEntry, label: str, manifest: str, mapping: str | None) -> Pending | None:
    """A folder closed by its manifest: all its files, one batch, stamped by the manifest."""
    stamp = os.stat(Path(entry.path) / manifest, follow_symlinks=False)
    files = []
    for f in sorted(os.scandir(entry.path), key=lambda f: f.name):
        if f.is_file(follow_symlinks=False) and is_candidate(f.name) and f.name not in MANIFESTS:
            stat = f.stat(follow_symlinks=False)
            files.append(SourceFile(f.name, f.path, stat.st_size, stat.st_mtime_ns))
    if not files:
        return None
    signature = (stamp.st_size, stamp.st_mtime_ns, *(x for f in files for x in (f.size, f.mtime_ns)))
    return Pending(label, tuple(files), f"{label}|{stamp.st_size}|{stamp.st_mtime_ns}",
                   signature, stamp.st_mtime_ns / 1e9, marked=True, mapping=mapping)
