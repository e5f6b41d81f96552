"""The red-team corpus: every bad file a partner might send ends in a final status with a precise reason.

Each file under `data/bad/` (written by `data/bad/make_corpus.py`: our own cases, csv-spectrum and
naughty-strings shapes) has its expected exit code, status, counts and message in `data/bad/expected.csv`.
Every case goes through the real command line (`patient-etl import --json`) into one shared home and its
embedded target, and the target's row count moves by exactly the rows the case creates: a failed file
changes nothing, never leaves a batch pending, and always gets a results file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from patient_etl.cli import main
from patient_etl.resources import SETTINGS, PatientEtl
from patient_etl_tests.conftest import read_results

BAD = Path(__file__).parent / "data" / "bad"
with (BAD / "expected.csv").open(newline="", encoding="utf-8") as _handle:
    CASES = {row["file"]: row for row in csv.DictReader(_handle)}


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory) -> Path:
    """One home (its own Dagster instance and embedded target) for the whole corpus: fast, and a case
    that leaked rows or left a batch pending would show in the next cases' counts."""
    return tmp_path_factory.mktemp("bad_files_home")


def _members(home: Path) -> int:
    engine = sa.create_engine(PatientEtl(home=str(home)).target())
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("member"):
                return 0
            return conn.execute(sa.text("SELECT count(*) FROM member")).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", CASES)
def test_bad_file(name, shared_home, monkeypatch, capsys):
    case = CASES[name]
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("PATIENT_ETL_HOME", str(shared_home))
    for name_value in filter(None, case["settings"].split(";")):
        setting, value = name_value.split("=")
        monkeypatch.setenv(SETTINGS[setting][0], value)
    before = _members(shared_home)

    code = main(["import", str(BAD / name), "--json"])

    outcome = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (code, outcome["status"]) == (int(case["exit"]), case["status"]), outcome
    assert outcome["counts"]["Created"] == int(case["created"])
    assert outcome["counts"]["Errored"] == int(case["errored"])
    assert _members(shared_home) == before + int(case["created"])
    messages = " | ".join(r["messages"] for r in read_results(outcome))
    assert case["message"] in messages, messages
