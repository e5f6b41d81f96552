"""Settings shared by every stage. Secrets (the target URL) only through `dg.EnvVar`."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from patient_etl.batches import Home, Registry
from patient_etl.workspace import Workspace

DEFAULT_MAX_BYTES = 2 * 1024**3


class PatientEtl(dg.ConfigurableResource):
    """Where patient_etl keeps its files and where it publishes.

    `home` defaults to PATIENT_ETL_HOME or `./patient_etl_home`; `target_url` to the embedded SQLite
    database under the home.
    """

    home: str | None = None
    target_url: str | None = None
    max_file_bytes: int = DEFAULT_MAX_BYTES
    process_on_arrival: bool = True
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # Review before publish (publish/review.py): which batches are held, for how long, who decides.
    review: str = "off"  # required: every batch; first: the first batch of each source; off
    review_max_errored_percent: int | None = None  # hold a batch with more errored rows than this
    review_max_updates: int | None = None  # hold a batch that would update more rows than this
    review_expires_days: int = 14
    approvers: str | None = None  # comma-separated names allowed to approve or reject

    def home_dir(self) -> Home:
        if self.home:
            return Home(Path(self.home).absolute()).ensure()
        return Home.from_env().ensure()

    def registry(self) -> Registry:
        return Registry(self.home_dir())

    def workspace(self, batch_id: str) -> Workspace:
        return Workspace(self.home_dir(), batch_id)

    def target(self) -> str:
        return self.target_url or self.home_dir().embedded_target_url

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
    "review": ("PATIENT_ETL_REVIEW", False),
    "review_max_errored_percent": ("PATIENT_ETL_REVIEW_MAX_ERRORED_PERCENT", True),
    "review_max_updates": ("PATIENT_ETL_REVIEW_MAX_UPDATES", True),
    "review_expires_days": ("PATIENT_ETL_REVIEW_EXPIRES_DAYS", True),
    "approvers": ("PATIENT_ETL_APPROVERS", False),
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
