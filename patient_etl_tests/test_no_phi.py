"""No patient name, birth date or SSN reaches Dagster's event log, a run's output, or a file outside the home.

Dagster's event log and console are read by people and tools that are not cleared for PHI; the
results files and the target are the only places row values belong, and a run's temporary files are
kept inside PATIENT_ETL_HOME (private to its owner, swept of a killed process's leftovers).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


_writes: list[str] | None = None  # while a test records: every path this process opens to write
_hooked = False


def _record_writes(event: str, args: tuple) -> None:
    if _writes is None or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args
    if (isinstance(mode, str) and set(mode) & set("wax+")) or (flags and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
        _writes.append(os.path.abspath(os.fsdecode(path)))


def test_a_run_writes_no_file_outside_the_home(tmp_path, home, etl):
    """Every file the run's process opens to write is inside the home: the errors workbook's writer put
    each sheet's rows (the partner's cells) in the system's temporary folder."""
    global _writes, _hooked
    if not _hooked:
        sys.addaudithook(_record_writes)  # for the session (a hook cannot be removed); idle unless recording
        _hooked = True
    roster = _roster(tmp_path)
    _writes = []
    try:
        outcome = import_batch([str(roster)], etl)
        written = _writes
    finally:
        _writes = None
    assert outcome["status"] == "Finished with Errors"
    results = home / "results"
    assert [p.suffix for p in sorted(results.glob("*_errors.*"))] == [".csv", ".xlsx"]
    assert any(".xlsx." in w and w.endswith(".writing") for w in written)  # the workbook's writing was seen
    outside = sorted({w for w in written if not Path(w).is_relative_to(home) and w != os.devnull})
    assert outside == []
    assert not [p for p in results.iterdir() if p.name.startswith(".")]  # its scratch folder removed too
