"""The linkage process a run hands its batch to (`python -m patient_etl.linkage.run`), started ahead.

It imports Python, Dagster, Splink and the rest of what a linkage loads (~2.5 s on this machine's two
cores) while the batch is landed, checked and published, then waits for its batch. When the command's
server runs (`command_server.py`), a worker of that server, which has all of that imported already, is
the linkage process: the process started here only hands it its streams. Dagster starts one
as a run starts (the `linkage_process` resource); the `patient-etl` command starts it earlier still,
before it imports Dagster itself (`prewarm`). A run that needs no linkage closes it unused. This module
imports neither Dagster nor Splink.
"""

from __future__ import annotations

import os
import subprocess

from patient_etl.command_server import LINKAGE, process_command
from patient_etl.servers import package_path

_waiting: subprocess.Popen | None = None  # a linkage process started ahead, not yet given a batch


def linkage_on() -> bool:
    """PATIENT_ETL_LINKAGE as read before the run's resources exist: no process is started when it is off
    (`PatientEtl.linkage_on`, which reads the same variable, decides whether the stage links)."""
    return os.environ.get("PATIENT_ETL_LINKAGE", "on").strip().lower() != "off"


def spawn() -> subprocess.Popen:
    # Its own session: a time-out kills the process and whatever it started (a Spark JVM).
    env = {**os.environ, "PYTHONPATH": package_path()}
    return subprocess.Popen(process_command(LINKAGE), stdin=subprocess.PIPE, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def prewarm() -> None:
    """A linkage process waiting for this process's next run, unless one is already (or linkage is off)."""
    global _waiting
    if linkage_on() and (_waiting is None or _waiting.poll() is not None):
        _waiting = spawn()


def take() -> subprocess.Popen:
    """The waiting process for a batch (it is no longer waiting), or a new one."""
    global _waiting
    child, _waiting = _waiting, None
    return child if child is not None and child.poll() is None else spawn()


def close_unused() -> None:
    """The waiting process told there is no batch (its stdin closed): it exits once its imports are done."""
    global _waiting
    if _waiting is not None:
        child, _waiting = _waiting, None
        child.stdin.close()
        child.wait()
