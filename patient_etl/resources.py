"""Settings shared by every stage. Secrets (the target URL) only through `dg.EnvVar`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import dagster as dg

from patient_etl.batches import Home, Registry
from patient_etl.workspace import Workspace

DEFAULT_MAX_BYTES = 2 * 1024**3
# Bounds on the work one input can cause (each exceeded one fails the file with its own reason).
DEFAULT_MAX_COLUMNS = 5_000
DEFAULT_MAX_LINE_BYTES = 1024**2
DEFAULT_MAX_ZIP_MEMBERS = 500
DEFAULT_MAX_UNCOMPRESSED_BYTES = 2 * 1024**3
DEFAULT_MAX_COMPRESSION_RATIO = 200
DEFAULT_RETENTION_DAYS = 30


class PatientEtl(dg.ConfigurableResource):
    """Where patient_etl keeps its files and where it publishes.

    `home` defaults to PATIENT_ETL_HOME or `./patient_etl_home`; `target_url` to the embedded SQLite
    database under the home.
    """

    home: str | None = None
    target_url: str | None = None
    max_file_bytes: int = DEFAULT_MAX_BYTES
    max_columns: int = DEFAULT_MAX_COLUMNS
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_zip_members: int = DEFAULT_MAX_ZIP_MEMBERS
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO
    process_on_arrival: bool = True
    webhook_url: str | None = None
    webhook_secret: str | None = None
    hash_key: str | None = None  # the secret of SSN hashes (PATIENT_ETL_HASH_KEY); production sets one
    retention_days: int = DEFAULT_RETENTION_DAYS
    # Review before publish (publish/review.py): which batches are held, for how long, who decides.
    review: str = "off"  # required: every batch; first: the first batch of each source; off
    review_max_errored_percent: int | None = None  # hold a batch with more errored rows than this
    review_max_updates: int | None = None  # hold a batch that would update more rows than this
    review_expires_days: int = 14
    approvers: str | None = None  # comma-separated names allowed to approve or reject
    # Possible duplicates (patient_etl/linkage): on or off, the match-probability thresholds (text, as
    # environment variables are; read by `linkage_settings`), the engine and, for Spark, its master URL.
    linkage: str = "on"
    linkage_possible: str | None = None
    linkage_likely: str | None = None
    linkage_engine: str = "duckdb"
    linkage_spark_master: str | None = None
    linkage_max_pairs: str | None = None  # candidate pairs compared at most (LinkageSettings.max_pairs)
    linkage_timeout_seconds: int = 300  # the longest linkage may delay a batch's publish; then it goes without

    def home_dir(self) -> Home:
        if self.home:
            return Home(Path(self.home).absolute()).open()
        return Home.from_env().open()

    def registry(self) -> Registry:
        return Registry(self.home_dir(), on_status=self.record_status)

    def record_status(self, batch, status: str) -> None:
        """The target's batch row follows the lifecycle (Received, Landed, Staged, Checked, Publishing).
        Best effort: an unreachable target does not stop a stage (publish, which needs it, says so). A dry
        run writes nothing to the target."""
        if batch.dry_run:
            return
        from patient_etl.entities import ENTITIES
        from patient_etl.results import status_row
        from patient_etl.target import open_target

        target = open_target(self.target())
        try:
            target.record_status(status_row(batch, status), list(ENTITIES.values()))
        except Exception as exc:  # the type only: a driver's message may quote values
            logging.getLogger("patient_etl").warning(
                f"batch {batch.batch_id}: status {status} not written to the target ({type(exc).__name__})")
        finally:
            target.dispose()

    def workspace(self, batch_id: str) -> Workspace:
        return Workspace(self.home_dir(), batch_id)

    def target(self) -> str:
        return self.target_url or self.home_dir().embedded_target_url

    def ssn_hash_key(self) -> bytes:
        """The key of SSN hashes: PATIENT_ETL_HASH_KEY, else the embedded default's per-home random key
        (`hash.key`, 0600, made on first use). Hashes made under one key match only hashes made under it."""
        if self.hash_key:
            return self.hash_key.encode()
        return self.home_dir().default_hash_key()

    def linkage_on(self) -> bool:
        if self.linkage.strip().lower() not in ("on", "off"):
            raise ValueError("PATIENT_ETL_LINKAGE must be on or off")
        return self.linkage.strip().lower() == "on"

    def notify(self, log, batch) -> None:
        """The finished-batch webhook, when one is configured; a failed delivery is a warning."""
        if not self.webhook_url:
            return
        from patient_etl.notify import send

        problem = send(self.webhook_url, batch, self.webhook_secret)
        if problem:
            log.warning(f"webhook for batch {batch.batch_id} not delivered: {problem}")


# The settings every launcher honours: field -> (environment variable, int?).
SETTINGS = {
    "home": ("PATIENT_ETL_HOME", False),
    "target_url": ("PATIENT_ETL_TARGET_URL", False),
    "webhook_url": ("PATIENT_ETL_WEBHOOK_URL", False),
    "webhook_secret": ("PATIENT_ETL_WEBHOOK_SECRET", False),
    "max_file_bytes": ("PATIENT_ETL_MAX_FILE_BYTES", True),
    "max_columns": ("PATIENT_ETL_MAX_COLUMNS", True),
    "max_line_bytes": ("PATIENT_ETL_MAX_LINE_BYTES", True),
    "max_zip_members": ("PATIENT_ETL_MAX_ZIP_MEMBERS", True),
    "max_uncompressed_bytes": ("PATIENT_ETL_MAX_UNCOMPRESSED_BYTES", True),
    "max_compression_ratio": ("PATIENT_ETL_MAX_COMPRESSION_RATIO", True),
    "hash_key": ("PATIENT_ETL_HASH_KEY", False),
    "retention_days": ("PATIENT_ETL_RETENTION_DAYS", True),
    "review": ("PATIENT_ETL_REVIEW", False),
    "review_max_errored_percent": ("PATIENT_ETL_REVIEW_MAX_ERRORED_PERCENT", True),
    "review_max_updates": ("PATIENT_ETL_REVIEW_MAX_UPDATES", True),
    "review_expires_days": ("PATIENT_ETL_REVIEW_EXPIRES_DAYS", True),
    "approvers": ("PATIENT_ETL_APPROVERS", False),
    "linkage": ("PATIENT_ETL_LINKAGE", False),
    "linkage_possible": ("PATIENT_ETL_LINKAGE_POSSIBLE", False),
    "linkage_likely": ("PATIENT_ETL_LINKAGE_LIKELY", False),
    "linkage_engine": ("PATIENT_ETL_LINKAGE_ENGINE", False),
    "linkage_spark_master": ("PATIENT_ETL_LINKAGE_SPARK_MASTER", False),
    "linkage_max_pairs": ("PATIENT_ETL_LINKAGE_MAX_PAIRS", False),
    "linkage_timeout_seconds": ("PATIENT_ETL_LINKAGE_TIMEOUT_SECONDS", True),
}


def patient_etl_from_env(resolve: bool = False) -> PatientEtl:
    """The settings from the environment. In the code location (`resolve=False`) only the presence of
    a variable is read here; Dagster resolves its value at run time through `dg.EnvVar`. The CLI, which
    is its own launcher, resolves them now (`resolve=True`), from the same variables."""
    env = {}
    for name, (variable, is_int) in SETTINGS.items():
        if variable not in os.environ:
            continue
        if resolve:
            env[name] = int(os.environ[variable]) if is_int else os.environ[variable]
        else:
            env[name] = dg.EnvVar.int(variable) if is_int else dg.EnvVar(variable)
    return PatientEtl(**env)


def retry_policy(max_retries: int, delay: float, backoff: bool = False) -> dg.RetryPolicy:
    """A step's retries. `PATIENT_ETL_RETRY_DELAY_SCALE` (default 1), read when the code location
    loads, scales every delay: the test suite need not sleep through a minute of retry ladder."""
    scale = float(os.environ.get("PATIENT_ETL_RETRY_DELAY_SCALE", "1"))
    if backoff:
        return dg.RetryPolicy(max_retries=max_retries, delay=delay * scale, backoff=dg.Backoff.EXPONENTIAL,
                              jitter=dg.Jitter.PLUS_MINUS)
    return dg.RetryPolicy(max_retries=max_retries, delay=delay * scale)
