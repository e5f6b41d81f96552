"""Batches: the unit of import. Where they live on disk, their IDs and their status lifecycle.

A batch is registered (by a sensor or the CLI) before it is processed: its manifest records where
its files come from, so the landing step, the nightly schedule and backfills all find it by its
partition key alone. Status moves Received -> Landed -> Staged -> Checked -> Publishing -> Finished |
Finished with Errors | Failed; each change is kept in its history, and the target's `import_batch`
row follows it (`PatientEtl.registry()` passes `on_status`).
A batch held for review waits as Awaiting approval (not pending: the nightly run leaves it alone)
until it is approved (then Finished...), Rejected or Expired.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_HOME = "patient_etl_home"
FINAL_STATUSES = ("Finished", "Finished with Errors", "Failed", "Rejected", "Expired")
AWAITING_APPROVAL = "Awaiting approval"
PRIVATE_UMASK = 0o077  # everything written under the home is its owner's alone: folders 0700, files 0600
# A temporary file in the home is hidden and carries its writer's process id, so that the next start
# can tell a killed process's leftovers (removed) from a live process's work in progress (kept):
# `.target-<pid>-*.csv` (bulk moves), `.<name>.<pid>.writing` (results), `.<name>.<pid>.tmp` (the registry,
# staging's clean copies, and the folder `.unpacked.<pid>.tmp/` of a zip's members).
LEFTOVER = re.compile(r"^\.(?:target-(?P<pid>\d+)-.*\.csv|.+\.(?P<pid2>\d+)\.(?:writing|part|tmp))$")
# Landing's downloads (`archive/<batch>/<name>.part`) carry no process id: one untouched this long is dead.
STALE_DOWNLOAD_SECONDS = 3600
_opened: set[Path] = set()


def keep_private() -> None:
    """Files and folders this process creates (DuckDB, SQLite and Dagster's included) are 0600/0700,
    whatever umask it was started with. The CLI and the code location both call it through `Home`."""
    os.umask(PRIVATE_UMASK)


def temporary_name(name: str) -> str:
    """The name of a temporary file for `name`, in the same folder (see LEFTOVER)."""
    return f".{name}.{os.getpid()}.tmp"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    @property
    def logs(self) -> Path:
        """Tracebacks of failed steps (they may quote data)."""
        return self.root / "logs"

    @property
    def linkage_models(self) -> Path:
        """The possible-duplicates model, as versioned JSON files (`model-v<N>.json`)."""
        return self.root / "linkage"

    @property
    def hash_key_file(self) -> Path:
        """The embedded default's key for SSN hashes, when PATIENT_ETL_HASH_KEY is not set."""
        return self.root / "hash.key"

    def default_hash_key(self) -> bytes:
        """This home's random key for SSN hashes, created (0600, exclusively) on first use."""
        path = self.hash_key_file
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        for _ in range(50):  # another process may have created it a moment ago and be writing it
            key = path.read_text().strip()
            if len(key) == 64:
                return key.encode()
            time.sleep(0.01)
        raise ValueError(f"{path} does not hold a key; remove it to have a new one made")

    def ensure(self) -> Home:
        keep_private()
        for folder in (self.root, self.inbox, self.archive, self.results, self.staging, self.registry, self.logs):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if folder.stat().st_mode & 0o077:  # a home made before, or by hand, with a wider mode
                folder.chmod(0o700)
        return self

    def open(self) -> Home:
        """`ensure`, and once per process: remove what killed processes left behind (temporary files
        of bulk moves, results and downloads) and take group and other access off anything in the home."""
        self.ensure()
        if self.root not in _opened:
            _opened.add(self.root)
            self.sweep()
        return self

    def sweep(self) -> list[Path]:
        """Remove leftovers of dead processes; make every folder 0700 and file 0600. Returns what it removed."""
        removed = []
        for folder, dirs, files in os.walk(self.root):
            base = Path(folder)
            for name in list(dirs):
                path = base / name
                match = LEFTOVER.match(name)
                pid = match and (match.group("pid") or match.group("pid2"))
                if pid and not _alive(int(pid)) and not path.is_symlink():  # staging's unpacked members
                    shutil.rmtree(path, ignore_errors=True)
                    dirs.remove(name)
                    removed.append(path)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if path.lstat().st_mode & 0o077 and not path.is_symlink():
                        path.chmod(0o700)
            for name in files:
                path = base / name
                match = LEFTOVER.match(name)
                pid = match and (match.group("pid") or match.group("pid2"))
                # The inbox holds the partners' uploads in progress, the instance folder Dagster's own files.
                ours = not any(base == f or f in base.parents for f in (self.inbox, self.dagster))
                with contextlib.suppress(FileNotFoundError):
                    if ours and ((pid and not _alive(int(pid))) or (
                            name.endswith(".part") and base.parent == self.archive
                            and time.time() - path.lstat().st_mtime > STALE_DOWNLOAD_SECONDS)):
                        path.unlink()
                        removed.append(path)
                    elif not path.is_symlink() and path.lstat().st_mode & 0o077:
                        path.chmod(0o600)
        return removed

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
    status: str = "Received"
    reason: str | None = None
    mapping: str | None = None
    landed: list[dict] = field(default_factory=list)  # name, path, size, sha256 per landed file
    counts: dict[str, int] = field(default_factory=dict)
    results_file: str | None = None
    history: list[dict] = field(default_factory=list)
    dry_run: bool = False
    remote: dict = field(default_factory=dict)  # source bookkeeping: files retired, results delivered
    failure: str | None = None  # for a Failed batch: "file" (the partner's file) or "run" (ours to fix)
    delimiter: str | None = None  # the files' delimiter when the user named it (`import --delimiter`)
    purged_at: str | None = None  # when retention removed its landed copy and staging (results are kept)
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

    @property
    def run_ids(self) -> set[str]:
        """The runs whose outcome the registry recorded."""
        return {h["run_id"] for h in self.history if h.get("run_id")}

    @property
    def finished_at(self) -> dt.datetime | None:
        """When a finished (or failed) batch ended: its last status change."""
        if self.is_pending or not self.history:
            return None
        return dt.datetime.fromisoformat(self.history[-1]["at"])

    @property
    def purged_reason(self) -> str:
        return (f"landed copy purged on {self.purged_at[:10]} (retention); the batch cannot be reprocessed: "
                "send the file again")


def partition_key(source: str, name: str, fingerprint: str, when: dt.datetime) -> str:
    """A partition key that is short, readable, unique and safe: date, source, the file's name, a short
    hash (`20261122-sftp-roster-march-3f9a1c2e`); no `..`, no control characters, no slashes. Short
    enough that the UI shows it whole."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(name).stem).strip("-")[:24].strip("-") or "file"
    digest = hashlib.sha256(f"{source}|{fingerprint}".encode()).hexdigest()[:8]
    return f"{when:%Y%m%d}-{source}-{stem}-{digest}"


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(temporary_name(path.name))
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


class Registry:
    """Batch manifests, one JSON file per batch under the home's `batches/` folder."""

    def __init__(self, home: Home, on_status: Callable[[Batch, str], None] | None = None):
        self.home = home.ensure()
        self.on_status = on_status

    def path(self, batch_id: str) -> Path:
        return self.home.registry / f"{batch_id}.json"

    def register(self, source: str, files: list[SourceFile], fingerprint: str, mapping: str | None = None,
                 now: dt.datetime | None = None, batch_id: str | None = None, dry_run: bool = False) -> Batch:
        now = now or dt.datetime.now(dt.UTC)
        batch_id = batch_id or partition_key(source, files[0].name, fingerprint, now)
        existing = self.get(batch_id)
        if existing is not None:
            return existing
        batch = Batch(batch_id, source, files, now.isoformat(timespec="seconds"), mapping=mapping, dry_run=dry_run)
        self.set_status(batch, "Received")
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

    def set_status(self, batch: Batch, status: str, run_id: str | None = None, **changes) -> Batch:
        """A new status (`run_id`: the run whose outcome it records), saved, then announced to `on_status`
        (the target's batch row follows the lifecycle)."""
        for name, value in changes.items():
            setattr(batch, name, value)
        batch.status = status
        entry = {"status": status, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        if run_id:
            entry["run_id"] = run_id
        batch.history.append(entry)
        self.save(batch)
        if self.on_status is not None and status not in FINAL_STATUSES:  # final ones are written with the data
            self.on_status(batch, status)
        return batch

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.home.registry.glob("*.json"))

    def all(self) -> list[Batch]:
        return [b for p in sorted(self.home.registry.glob("*.json")) if (b := self.get(p.stem))]

    def pending(self) -> list[Batch]:
        return [b for b in self.all() if b.is_pending]

    def purge(self, older_than_days: float, now: dt.datetime | None = None) -> list[Batch]:
        """Retention: remove the landed copy (archive) and staging of every batch that ended (Finished,
        Finished with Errors, Failed) more than `older_than_days` ago; a pending batch is never touched.
        Results files, the target's logs and the batch record stay; the record gets `purged_at`."""
        now = now or dt.datetime.now(dt.UTC)
        cutoff = now - dt.timedelta(days=older_than_days)
        purged = []
        for batch in self.all():
            ended = batch.finished_at
            if batch.purged_at or ended is None or ended > cutoff:
                continue
            for folder in (self.home.batch_archive(batch.batch_id), self.home.batch_staging(batch.batch_id)):
                shutil.rmtree(folder, ignore_errors=True)
            batch.purged_at = now.isoformat(timespec="seconds")
            self.save(batch)
            purged.append(batch)
        return purged
