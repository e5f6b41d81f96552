"""The linkage stage's own process: `python -m patient_etl.linkage.run BATCH_ID`, the settings as JSON
on stdin (never on the command line: the target URL may carry a password). Prints the stage's metadata
as one JSON line; a failure is reported the same way, its traceback kept in the home's logs."""

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


def main() -> int:
    batch_id = sys.argv[1]
    etl = PatientEtl(**json.load(sys.stdin))
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
    sys.exit(main())
