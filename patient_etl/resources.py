"""Settings shared by every stage. Secrets (the target URL) only through `dg.EnvVar`."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from patient_etl.batches import Home, Registry
from patient_etl.staging.load import DEFAULT_MAX_BYTES


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

    def home_dir(self) -> Home:
        if self.home:
            return Home(Path(self.home).absolute()).ensure()
        return Home.from_env().ensure()

    def registry(self) -> Registry:
        return Registry(self.home_dir())

    def target(self) -> str:
        return self.target_url or self.home_dir().embedded_target_url

    def notify(self, log, batch) -> None:
        """The finished-batch webhook, when one is configured; a failed delivery is a warning."""
        if not self.webhook_url:
            return
        from patient_etl.publish.notify import send

        problem = send(self.webhook_url, batch, self.webhook_secret)
        if problem:
            log.warning(f"webhook for batch {batch.batch_id} not delivered: {problem}")


def patient_etl_from_env() -> PatientEtl:
    """Built when the code location loads: only the presence of a variable is read here, its value
    is resolved by Dagster at run time."""
    env = {}
    if "PATIENT_ETL_HOME" in os.environ:
        env["home"] = dg.EnvVar("PATIENT_ETL_HOME")
    if "PATIENT_ETL_TARGET_URL" in os.environ:
        env["target_url"] = dg.EnvVar("PATIENT_ETL_TARGET_URL")
    for name in ("webhook_url", "webhook_secret"):
        if f"PATIENT_ETL_{name.upper()}" in os.environ:
            env[name] = dg.EnvVar(f"PATIENT_ETL_{name.upper()}")
    if "PATIENT_ETL_MAX_FILE_BYTES" in os.environ:
        env["max_file_bytes"] = dg.EnvVar.int("PATIENT_ETL_MAX_FILE_BYTES")
    return PatientEtl(**env)
