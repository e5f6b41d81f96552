"""The linkage stage's own process: `python -m patient_etl.linkage.run`, then the batch ID and the
settings as one JSON object on stdin (never on the command line: the target URL may carry a password).
It imports what a linkage uses first and only then waits for them, so it can be started as the run starts
(`linkage.process`) and be ready when the stage comes. Prints the stage's metadata as one JSON
line; a failure is reported the same way, its traceback kept in the home's logs. Its stdin closed
without a request (the run needed no linkage), it exits at once."""

from __future__ import annotations

import json
import os
import sys
import time

import dagster as dg

from patient_etl.errors import SafeError, phi_safe
from patient_etl.linkage.assets import link_batch
from patient_etl.resources import PatientEtl

SLOW = "PATIENT_ETL_FAULT_LINKAGE_DELAY_SECONDS"  # fault injection: a linkage this much slower (tests only)


def preload() -> None:
    """Import what a linkage loads on first use (~1.2 s), paid before the request comes: Splink, Arrow
    and NumPy (Splink's input), sqlglot's DuckDB dialect (Splink writes its SQL with it), the targets."""
    import pyarrow  # noqa: F401
    import splink  # noqa: F401
    import sqlglot.dialects.duckdb  # noqa: F401

    import patient_etl.linkage.link  # noqa: F401
    import patient_etl.target.postgres  # noqa: F401
    import patient_etl.target.sqlite  # noqa: F401


def main() -> int:
    preload()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    request = json.loads(line)
    batch_id, etl = request["batch_id"], PatientEtl(**request["settings"])
    time.sleep(float(os.environ.get(SLOW, "0")))
    try:
        with phi_safe(etl.home_dir(), batch_id, "linking possible duplicates"):
            metadata = link_batch(etl, etl.workspace(batch_id))
    except (dg.Failure, SafeError) as exc:
        metadata = {"outcome": "failed", "reason": exc.description if isinstance(exc, dg.Failure) else str(exc)}
    finally:
        if "pyspark" in sys.modules:  # the Spark engine's session (and its JVM) ends with this process
            from pyspark.sql import SparkSession

            session = SparkSession.getActiveSession()
            if session is not None:
                session.stop()
    print(json.dumps(metadata))
    return 0


if __name__ == "__main__":
    # Out without finalizing the interpreter (~0.6 s with Dagster, Splink and DuckDB loaded): the run waits
    # for this process to end, and every database and file was closed in a `with` already.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
