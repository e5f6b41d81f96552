"""The row checks' Great Expectations run in the validator process (quality/validator.py).

The run's own process never imports GX: the validator imports it while the batch lands and stages. A
validator that died (killed, or failing mid-batch) is never silently reused: the batch it failed ends
Failed with the one failure path, and the next batch starts a new validator.
"""

from __future__ import annotations

import signal
import sys

from patient_etl.cli import import_batch
from patient_etl.quality import validator as validators
from patient_etl_tests.conftest import read_results, write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex"
ROWS = ["P1,Ann,Lee,1980-01-01,F", "P2,Bob,Ray,1970-05-05,M", "P3,Cy,Moe,1990-02-30,U"]


def _outcome(result: dict) -> list[tuple[str, str]]:
    return [(r["external_id"], r["status"]) for r in read_results(result)]


def test_the_checks_run_in_the_validator_and_a_killed_one_is_replaced(tmp_path, etl):
    first = import_batch([str(write_csv(tmp_path / "a.csv", HEADER, *ROWS))], etl)
    assert first["status"] == "Finished with Errors"
    assert _outcome(first) == [("P1", "Created"), ("P2", "Created"), ("P3", "Errored")]
    assert "great_expectations" not in sys.modules, "GX belongs to the validator process, not the run's"
    running = validators.validator()
    assert running.alive()

    running.process.send_signal(signal.SIGKILL)
    running.process.wait()
    again = import_batch([str(write_csv(tmp_path / "b.csv", HEADER, *ROWS))], etl)
    assert again["status"] == "Finished with Errors"
    assert _outcome(again) == [("P1", "Unchanged"), ("P2", "Unchanged"), ("P3", "Errored")]
    assert validators.validator() is not running and validators.validator().alive()


def test_a_validator_dying_mid_batch_fails_the_batch_and_the_next_one_runs(tmp_path, etl, monkeypatch):
    validators.validator().stop()  # the next one starts with the fault set
    monkeypatch.setenv(validators.EXIT_ON_RUN, "1")
    failed = import_batch([str(write_csv(tmp_path / "a.csv", HEADER, *ROWS))], etl)
    assert failed["status"] == "Failed"
    assert "row checks failed" in failed["reason"] and "ValidatorError" in failed["reason"]
    assert "Ann" not in failed["reason"]  # the traceback is in the home's log, not in the reason

    monkeypatch.delenv(validators.EXIT_ON_RUN)
    validators.validator().stop()  # the faulty one exited already; make sure no process carries the setting
    fine = import_batch([str(write_csv(tmp_path / "b.csv", HEADER, *ROWS))], etl)
    assert fine["status"] == "Finished with Errors"
    assert _outcome(fine) == [("P1", "Created"), ("P2", "Created"), ("P3", "Errored")]
