"""No patient name, birth date or SSN reaches Dagster's event log or a run's output.

Dagster's event log and console are read by people and tools that are not cleared for PHI; the
results files and the target are the only places row values belong.
"""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from patient_etl.cli import import_batch
from patient_etl_tests.conftest import write_csv

PHI = ["Quenby", "Thistlewood", "1977-04-19", "04/19/1977", "987-65-4321", "987654321", "Zephyrine",
       "Marchbanks", "1933-02-30", "qthistle@example.org", "6175559876"]


def _roster(tmp_path):
    return write_csv(
        tmp_path / "roster.csv", "Patient ID,First Name,Last Name,DOB,Sex,SSN,Email,Phone,Hobby",
        "T1,Quenby,Thistlewood,1977-04-19,F,987-65-4321,qthistle@example.org,617 555 9876,Falconry",
        "T2,Zephyrine,Marchbanks,1933-02-30,X,987654321,not an email,12,",
        "T2,Quenby,Thistlewood,04/19/1977,F,,,,",
    )


def test_event_log_holds_no_phi(tmp_path, etl):
    with dg.instance_for_test() as instance:
        outcome = import_batch([str(_roster(tmp_path))], etl, instance=instance)
        assert outcome["status"] == "Finished with Errors"
        records = instance.get_records_for_run(outcome["run_id"]).records
        text = "\n".join(repr(r.event_log_entry) for r in records)
    assert "ASSET_MATERIALIZATION" in text
    for value in PHI:
        assert value not in text, f"PHI value #{PHI.index(value)} leaked into the event log"


def test_cli_output_holds_no_phi(tmp_path, home):
    env = {**os.environ, "PATIENT_ETL_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    run = subprocess.run([sys.executable, "-m", "patient_etl.cli", "import", str(_roster(tmp_path))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Finished with Errors" in run.stdout
    for value in PHI:
        assert value not in run.stdout and value not in run.stderr, f"PHI value #{PHI.index(value)} in output"
