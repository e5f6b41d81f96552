"""Batches: the unit of import. Where they live on disk, their IDs and their status lifecycle.

A batch is registered (by a sensor or the CLI) before it is processed: its manifest records where
its files come from, so the landing step, the nightly schedule and backfills all find it by its
partition key alone. Status moves Registered -> Landed -> Finished | Finished with Errors | Failed.
A batch held for review waits as Awaiting approval (not pending: the nightly run leaves it alone)
until it is approved (then Finished...), Rejected or Expired.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_HOME = "patient_etl_home"
FINAL_STATUSES = ("Finished", "Finished with Errors", "Failed", "Rejected", "Expired")
AWAITING_APPROVAL = "Awaiting approval"


@dataclass(frozen=True)
class Home:
    """Everything patient_etl keeps on disk, under PATIENT_ETL_HOME."""

    root: Path

    @classmethod
    def from_env(cls) -> Home:
        return cls(Path(os.environ.get("PATIENT_ETL_HOME", DEFAULT_HOME)).absolute())

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def registry(self) -> Path:
        return self.root / "batches"

    @property
    def dagster(self) -> Path:
        """The Dagster instance of this home (used when DAGSTER_HOME is not set)."""
        return self.root / "dagster"

    @property
    def embedded_target_url(self) -> str:
        return f"sqlite:///{self.root / 'target.sqlite'}"

    def ensure(self) -> Home:
        for folder in (self.inbox, self.archive, self.results, self.staging, self.registry):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def batch_staging(self, batch_id: str) -> Path:
        return self.staging / batch_id

    def batch_archive(self, batch_id: str) -> Path:
        return self.archive / batch_id


@dataclass
class SourceFile:
    name: str  # the name the partner gave it
    location: str  # local path, the remote name in the SFTP pending folder, or the object key
    size: int
    mtime_ns: int
    etag: str | None = None  # object stores: the version that was registered


@dataclass
class Batch:
    batch_id: str
    source: str  # upload | sftp | s3 | cli: the `Source.kind` that lands, retires and answers it
    files: list[SourceFile]
    registered_at: str
    status: str = "Registered"
    reason: str | None = None
    mapping: str | None = None
    landed: list[dict] = field(default_factory=list)  # name, path, size, sha256 per landed file
    counts: dict[str, int] = field(default_factory=dict)
    results_file: str | None = None
    history: list[dict] = field(default_factory=list)
    dry_run: bool = False
    remote: dict = field(default_factory=dict)  # source bookkeeping: files retired, results delivered
    failure: str | None = None  # for a Failed batch: "file" (the partner's file) or "run" (ours to fix)
    review: dict = field(default_factory=dict)  # held for review: why, the preview, the decision (publish/review.py)

    @property
    def display_name(self) -> str:
        return self.files[0].name if len(self.files) == 1 else f"{Path(self.files[0].name).stem}_and_more"

    @property
    def received_on(self) -> dt.date:
        return dt.datetime.fromisoformat(self.registered_at).date()

    @property
    def is_pending(self) -> bool:
        return self.status not in (*FINAL_STATUSES, AWAITING_APPROVAL)


def partition_key(source: str, name: str, fingerprint: str, when: dt.datetime) -> str:
    """A partition key that is short, readable, unique and safe: date, source, the file's name, a short
    hash (`20261122-sftp-roster-march-3f9a1c2e`); no `..`, no control characters, no slashes. Short
    enough that the UI shows it whole."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(name).stem).strip("-")[:24].strip("-") or "file"
    digest = hashlib.sha256(f"{source}|{fingerprint}".encode()).hexdigest()[:8]
    return f"{when:%Y%m%d}-{source}-{stem}-{digest}"


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


class Registry:
    """Batch manifests, one JSON file per batch under the home's `batches/` folder."""

    def __init__(self, home: Home):
        self.home = home.ensure()

    def path(self, batch_id: str) -> Path:
        return self.home.registry / f"{batch_id}.json"

    def register(self, source: str, files: list[SourceFile], fingerprint: str, mapping: str | None = None,
                 now: dt.datetime | None = None, batch_id: str | None = None) -> Batch:
        now = now or dt.datetime.now(dt.UTC)
        batch_id = batch_id or partition_key(source, files[0].name, fingerprint, now)
        existing = self.get(batch_id)
        if existing is not None:
            return existing
        batch = Batch(batch_id, source, files, now.isoformat(timespec="seconds"), mapping=mapping)
        self.save(batch)
        return batch

    def get(self, batch_id: str) -> Batch | None:
        path = self.path(batch_id)
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["files"] = [SourceFile(**f) for f in raw["files"]]
        return Batch(**raw)

    def require(self, batch_id: str) -> Batch:
        batch = self.get(batch_id)
        if batch is None:
            raise LookupError(f"batch {batch_id} is not registered under {self.home.registry}")
        return batch

    def save(self, batch: Batch) -> None:
        _write_json(self.path(batch.batch_id), asdict(batch))

    def set_status(self, batch: Batch, status: str, **changes) -> Batch:
        for name, value in changes.items():
            setattr(batch, name, value)
        batch.status = status
        batch.history.append({"status": status, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
        self.save(batch)
        return batch

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.home.registry.glob("*.json"))

    def all(self) -> list[Batch]:
        return [b for p in sorted(self.home.registry.glob("*.json")) if (b := self.get(p.stem))]

    def pending(self) -> list[Batch]:
        return [b for b in self.all() if b.is_pending]
