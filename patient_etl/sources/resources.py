"""The `sources` resource: every place batches come from, and the settings their sensors share.

Settings and secrets only through `dg.EnvVar`; at load time only the presence of a variable is read.
"""

from __future__ import annotations

import os

import dagster as dg

from patient_etl.batches import Batch
from patient_etl.sources.base import Source
from patient_etl.sources.s3 import ObjectStore
from patient_etl.sources.sftp import PartnerSftp, sftp_server_from_env
from patient_etl.sources.upload_folder import LocalFiles, UploadFolder

DEFAULT_QUIET_SECONDS = 300
S3_ENV = {
    "bucket": "PATIENT_ETL_S3_BUCKET", "pending_prefix": "PATIENT_ETL_S3_PENDING_PREFIX",
    "results_prefix": "PATIENT_ETL_S3_RESULTS_PREFIX", "archive_prefix": "PATIENT_ETL_S3_ARCHIVE_PREFIX",
    "endpoint_url": "PATIENT_ETL_S3_ENDPOINT_URL", "after_landing": "PATIENT_ETL_S3_AFTER_LANDING",
    "review": "PATIENT_ETL_S3_REVIEW",
}


class Sources(dg.ConfigurableResource):
    """The upload folder, the SFTP server and the object store; a source left unset is not configured.

    `quiet_seconds`: a file nobody marked complete is picked up only once it has not changed for this
    long (and looked the same on two ticks). A `<name>.done` marker or a folder's manifest skips it.
    """

    quiet_seconds: int = DEFAULT_QUIET_SECONDS
    upload: UploadFolder | None = None
    sftp: PartnerSftp | None = None
    s3: ObjectStore | None = None

    def of(self, kind: str) -> Source:
        """The source of that kind (`Batch.source`): upload | sftp | s3 | cli."""
        chosen = {"upload": self.upload or UploadFolder(), "sftp": self.sftp or PartnerSftp(),
                  "s3": self.s3 or ObjectStore(), "cli": LocalFiles()}.get(kind)
        if chosen is None:
            raise ValueError(f"unknown source {kind!r}")
        return chosen

    def of_batch(self, batch: Batch) -> Source:
        return self.of(batch.source)


def sources_from_env(resolve: bool = False) -> Sources:
    """Built when the code location loads: only the presence of a variable is read here, Dagster resolves
    the values at run time. The CLI, its own launcher, reads the same variables now (`resolve`)."""
    def value(variable: str, is_int: bool = False):
        if resolve:
            return int(os.environ[variable]) if is_int else os.environ[variable]
        return dg.EnvVar.int(variable) if is_int else dg.EnvVar(variable)

    sftp_review = {"review": value("PATIENT_ETL_SFTP_REVIEW")} if os.environ.get("PATIENT_ETL_SFTP_REVIEW") else {}
    settings: dict = {"sftp": PartnerSftp(server=sftp_server_from_env(resolve), **sftp_review)}
    if "PATIENT_ETL_QUIET_SECONDS" in os.environ:
        settings["quiet_seconds"] = value("PATIENT_ETL_QUIET_SECONDS", is_int=True)
    if os.environ.get("PATIENT_ETL_S3_BUCKET"):
        settings["s3"] = ObjectStore(**{f: value(v) for f, v in S3_ENV.items() if os.environ.get(v)})
    return Sources(**settings)
