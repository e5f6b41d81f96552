"""The source interface: where batches come from, in the spirit of a `FileSystem` resource.

Every source (the upload folder, the partners' SFTP server, an S3-compatible object store, and the
files named on the command line) answers the same five questions, so one sensor loop, one landing
step and one delivery function serve them all:

- `list_pending(home)`: what waits, each item with its size, modification time, ETag where the
  store has one, and whether the partner marked it complete (`<name>.done`, or a folder's manifest);
- `land(file, dest)`: stream one file to a local path, sha256 computed on the way, size verified;
  `SourceChanged` when the file is no longer the version that was registered;
- `unchanged(file)`: after landing and before retiring, is the file still that version?
- `retire(home, file)`: take a landed file out of pending (archived or removed, never overwriting);
- `deliver(local, name)`: put a results file back where the partner looks (sources that deliver).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import dagster as dg

from patient_etl.batches import Batch, Home, SourceFile

CHUNK_BYTES = 1 << 20
# Names clients use while a transfer is still running: never picked up.
TEMPORARY_SUFFIXES = (".part", ".tmp", ".filepart", ".partial", ".crdownload", ".uploading")
# `<name>.done`, written by the partner once `<name>` is complete.
DONE_SUFFIX = ".done"
CHANGED_REASON = "file changed while it was being read; it will be picked up again"
MAX_NAME_ATTEMPTS = 1000


class SourceUnavailable(Exception):
    """The source could not be listed or reached; the message names no secret."""


class SourceChanged(Exception):
    """A pending file is no longer the version that was registered (still being written, replaced)."""


@dataclass(frozen=True)
class Pending:
    """One item waiting in a source: a file, or a closed folder whose files make one batch.

    `signature` is compared across two looks; `modified` (epoch seconds) starts the quiet period;
    `marked` says the partner signalled completion, so the quiet period is not needed.
    """

    label: str
    files: tuple[SourceFile, ...]
    fingerprint: str
    signature: tuple
    modified: float
    marked: bool = False
    mapping: str | None = None
    refused: str | None = None  # why it can never become a batch (the sensor says so on every tick)


class Source(dg.ConfigurableResource):
    """Where batches come from. Subclasses implement the pending / land / re-check / retire / deliver
    contract; `kind` is what `Batch.source` records."""

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""
    delivers: ClassVar[bool] = False

    review: str = "off"  # "required": every batch of this source is held for review before publish

    def not_configured(self) -> str | None:
        """Why this source cannot be used, or None when it can."""
        return None

    def list_pending(self, home: Home) -> list[Pending]:
        raise NotImplementedError

    def land(self, file: SourceFile, dest: Path) -> tuple[int, str]:
        raise NotImplementedError

    def unchanged(self, file: SourceFile) -> bool:
        raise NotImplementedError

    def retire(self, home: Home, file: SourceFile) -> None:
        """Nothing to retire by default (files named on the command line stay where they are)."""

    def after_retiring(self, home: Home, batch: Batch) -> None:
        """Once every file of the batch is retired (a closed folder's manifest goes last)."""

    def review_reason(self, home: Home, batch: Batch) -> str | None:
        """Why this source's batch must be reviewed before publish, or None."""
        return f"the {self.title} requires review" if self.review == "required" else None

    def deliver(self, local: Path, name: str) -> str:
        raise NotImplementedError(f"{self.title or self.kind} does not take results files back")


def is_candidate(name: str) -> bool:
    """False for hidden files, office lock files, temporary upload names and completion markers."""
    lower = name.lower()
    return not name.startswith((".", "~$")) and not lower.endswith(TEMPORARY_SUFFIXES + (DONE_SUFFIX,))


def has_control_characters(name: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in name)


CONTROL_NAME = "its name holds a control character, which no file name we write or log may carry; rename it"


def shown_name(name: str) -> str:
    """A name fit for a log line: control characters as `\\xNN`, the rest as it is."""
    return "".join(c if unicodedata.category(c) != "Cc" else f"\\x{ord(c):02x}" for c in name)


def refused_item(name: str, size: int, modified: float) -> Pending:
    """An item the sensor reports and never registers (its name cannot be landed safely)."""
    return Pending(name, (), f"refused|{name}", (size,), modified, refused=CONTROL_NAME)


def archive_name(index: int, name: str) -> str:
    """The archived file's name: its position and a safe form of the partner's name."""
    safe = re.sub(r"[^\w.-]+", "_", Path(name).name, flags=re.UNICODE).strip("._") or "file"
    return f"{index:03d}_{safe}"


def results_name(batch: Batch) -> str:
    """`YYYY-MM-DD_<original name>_results.csv`: the partner's own name, dated by receipt."""
    return f"{batch.received_on.isoformat()}_{Path(batch.display_name).stem}_results.csv"


def numbered(name: str, attempt: int) -> str:
    """`name`, then `stem-2.ext`, `stem-3.ext`...: the names a results file may take, never overwriting."""
    stem, ext = os.path.splitext(name)
    return name if attempt == 1 else f"{stem}-{attempt}{ext}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def write_streamed(chunks, dest: Path, expected_size: int | None = None) -> tuple[int, str]:
    """Write `chunks` to `dest` through a temporary name, fsynced, sha256 on the way; (size, sha256).

    A size other than `expected_size` raises SourceChanged and leaves nothing behind.
    """
    digest = hashlib.sha256()
    size = 0
    tmp = dest.with_name(dest.name + ".part")
    try:
        with tmp.open("wb") as out:
            for block in chunks:
                digest.update(block)
                size += len(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if expected_size is not None and size != expected_size:
            raise SourceChanged(f"{size} bytes read where {expected_size} were registered")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def read_chunks(path: Path):
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            yield block
