"""The row checks' Great Expectations run in a validator (quality/validator.py), never in the run's process.

By default a run's validator is a worker forked by the shared validator server (GX imported once, for
every run of this user and this code); with PATIENT_ETL_VALIDATOR_IDLE_SECONDS=0 each process starts a
private one. Either way a validator that died (killed, or failing mid-batch) is never silently reused:
the batch it failed ends Failed with the one failure path, and the next batch gets a new validator.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patient_etl.cli import import_batch
from patient_etl.quality import validator as validators
from patient_etl.resources import PatientEtl
from patient_etl_tests.conftest import read_results, write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex"
ROWS = ["P1,Ann,Lee,1980-01-01,F", "P2,Bob,Ray,1970-05-05,M", "P3,Cy,Moe,1990-02-30,U"]


def _outcome(result: dict) -> list[tuple[str, str]]:
    return [(r["external_id"], r["status"]) for r in read_results(result)]


def _until_ended(handle: validators.Validator) -> None:
    deadline = time.monotonic() + 10
    while handle.alive():
        assert time.monotonic() < deadline, "a killed validator still looks alive"
        time.sleep(0.05)


@pytest.fixture
def fresh_validator():
    validators.validator().stop()  # this test's runs get a validator of their own
    yield
    validators.validator().stop()


@pytest.mark.parametrize("idle", ["60", "0"], ids=["shared", "private"])
def test_the_checks_run_in_a_validator_and_a_killed_one_is_replaced(tmp_path, etl, monkeypatch, idle,
                                                                       fresh_validator):
    monkeypatch.setenv(validators.IDLE_SECONDS, idle)
    validators.validator().stop()
    first = import_batch([str(write_csv(tmp_path / "a.csv", HEADER, *ROWS))], etl)
    assert first["status"] == "Finished with Errors"
    assert _outcome(first) == [("P1", "Created"), ("P2", "Created"), ("P3", "Errored")]
    assert "great_expectations" not in sys.modules, "GX belongs to the validator, not the run's process"
    running = validators.validator()
    assert running.alive() and running.shared == (idle != "0")
    assert running.pid != os.getpid()

    os.kill(running.pid, signal.SIGKILL)
    _until_ended(running)
    again = import_batch([str(write_csv(tmp_path / "b.csv", HEADER, *ROWS))], etl)
    assert again["status"] == "Finished with Errors"
    assert _outcome(again) == [("P1", "Unchanged"), ("P2", "Unchanged"), ("P3", "Errored")]
    assert validators.validator() is not running and validators.validator().alive()
    assert validators.validator().pid != running.pid


def test_a_validator_dying_mid_batch_fails_the_batch_and_the_next_one_runs(tmp_path, etl, monkeypatch,
                                                                            fresh_validator):
    monkeypatch.setenv(validators.EXIT_ON_RUN, "1")  # sent with the batch's suites: its worker exits
    failed = import_batch([str(write_csv(tmp_path / "a.csv", HEADER, *ROWS))], etl)
    assert failed["status"] == "Failed"
    assert "row checks failed" in failed["reason"] and "ValidatorError" in failed["reason"]
    assert "Ann" not in failed["reason"]  # the traceback is in the home's log, not in the reason

    monkeypatch.delenv(validators.EXIT_ON_RUN)
    fine = import_batch([str(write_csv(tmp_path / "b.csv", HEADER, *ROWS))], etl)
    assert fine["status"] == "Finished with Errors"
    assert _outcome(fine) == [("P1", "Created"), ("P2", "Created"), ("P3", "Errored")]


def _until_gone(pid: int) -> None:
    """Process `pid` has ended (reaped, or a zombie its parent has yet to reap)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


def _started_at(pid: int) -> dt.datetime:
    """When process `pid` started (/proc: clock ticks after boot)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    return dt.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), dt.UTC)


def test_a_batch_larger_than_duckdbs_limit_starts_its_validator_when_the_checks_need_it(tmp_path, etl, monkeypatch,
                                                                                         fresh_validator):
    """Staging a batch larger than DuckDB's memory limit fills it: the validator prewarmed by the command
    (GX imported, idle) goes as the run starts (its `row_check_validator` resource), and the row checks
    start another inside their reduced limit. A smaller batch keeps the prewarmed one."""
    monkeypatch.setenv(validators.IDLE_SECONDS, "0")
    monkeypatch.setenv("PATIENT_ETL_DUCKDB_MEMORY", "96MB")  # DuckDB's CSV reader wants ~50 MB of it
    validators.prewarm()
    prewarmed = validators.validator()
    prewarmed._ready()
    small = import_batch([str(write_csv(tmp_path / "small.csv", HEADER, *ROWS))], etl)
    assert _outcome(small) == [("P1", "Created"), ("P2", "Created"), ("P3", "Errored")]
    assert validators.validator() is prewarmed and prewarmed.alive()

    # 72,000 rows of ~1.4 kB (first names padded with blanks, which normalizing trims): ~103 MB.
    pad = " " * 1400
    rows = [f"Q{i},Ann{pad},Lee,1980-01-{1 + i % 28:02},F" for i in range(72_000)]
    rows[5] = "Q5,Ann,Lee,1980-02-30,F"
    big = write_csv(tmp_path / "big.csv", HEADER, *rows)
    assert big.stat().st_size > 96_000_000
    result = import_batch([str(big)], PatientEtl(home=etl.home, linkage="off"))  # 72,000 of one name
    assert result["status"] == "Finished with Errors", result.get("reason")
    assert result["counts"] == {"Created": 71_999, "Updated": 0, "Unchanged": 0, "Errored": 1}
    _until_gone(prewarmed.pid)
    checks = validators.validator()  # 72,000 rows checked: under LARGE_ROWS, so kept
    assert checks is not prewarmed and checks.alive() and checks.pid != prewarmed.pid
    staged_at = next(h["at"] for h in etl.registry().require(result["batch_id"]).history if h["status"] == "Staged")
    assert _started_at(checks.pid) >= dt.datetime.fromisoformat(staged_at)


@pytest.mark.parametrize("idle", ["60", "0"], ids=["shared", "private"])
def test_parking_ends_an_idle_validator_and_the_next_one_starts_when_asked(monkeypatch, idle, fresh_validator):
    monkeypatch.setenv(validators.IDLE_SECONDS, idle)
    validators.prewarm()
    warm = validators.validator()
    warm._ready()
    validators.park(96_000_000)  # within the default 384MB: kept
    assert validators.validator() is warm and warm.alive()
    validators.park(600_000_000)
    assert not warm.alive()
    _until_gone(warm.pid)
    later = validators.validator()
    assert later is not warm and later.alive() and later.pid is None and later.process is None  # not started
    later._ready()
    assert later.pid not in (None, warm.pid) and later.alive()


def _connect() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(validators.address())
    return sock


def test_the_shared_server_forks_a_worker_per_connection_and_a_second_server_yields(fresh_validator):
    one, two = validators.Validator(), validators.Validator()
    one._ready(), two._ready()
    assert one.pid != two.pid and one.alive() and two.alive()
    one.stop()
    _until_ended(one)
    assert two.alive(), "stopping one run's worker leaves the others"
    two.stop()

    # A server started while one listens finds the address taken and exits at once.
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "patient_etl.quality.validator", "--serve", "60"],
                            capture_output=True, timeout=120)
    assert second.returncode == 0
    with _connect() as sock:  # the first still serves
        kind, pid = pickle.load(sock.makefile("rb"))
        assert kind == "ready" and pid > 0
    assert time.monotonic() - started < 120


def _new_validators_environ() -> dict[bytes, bytes]:
    """The environment of a validator started now (the one this process had is stopped first)."""
    validators.validator().stop()
    handle = validators.validator()
    handle._ready()
    environ: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 30
    while not environ and time.monotonic() < deadline:  # read as the child is still exec'ing, it is empty
        environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{handle.pid}/environ").read_bytes().split(b"\0")
                       if b"=" in item)
        time.sleep(0.05)
    return environ


@pytest.mark.parametrize("idle", ["60", "0"], ids=["shared", "private"])
def test_a_validator_inherits_none_of_the_runs_settings_or_secrets(monkeypatch, idle, fresh_validator):
    monkeypatch.setenv(validators.IDLE_SECONDS, idle)
    monkeypatch.setenv("PATIENT_ETL_TARGET_URL", "postgresql://etl:s3cret@db.internal/patients")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    environ = _new_validators_environ()
    assert b"PATH" in environ and environ[b"GX_ANALYTICS_ENABLED"] == b"False"
    assert not [k for k in environ if k.startswith((b"PATIENT_ETL_", b"DAGSTER_", b"AWS_"))], sorted(environ)
    assert b"s3cret" not in b"".join(environ.values())


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_the_shared_server_refuses_another_user(fresh_validator):
    validators.validator()._ready()
    child = os.fork()
    if child == 0:  # connect as nobody: the server must close without a worker
        code = 1
        try:
            os.setuid(65534)
            with _connect() as sock:
                code = 0 if sock.recv(1) == b"" else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("idle", ["60", "0"], ids=["shared", "private"])
def test_a_validators_arrow_buffers_come_from_the_c_library(monkeypatch, idle, fresh_validator):
    """Arrow's default pool (mimalloc) kept what each frame's buffers freed: the validator grew with the
    number of frames. Its environment picks the system allocator, which Arrow reads as it starts."""
    monkeypatch.setenv(validators.IDLE_SECONDS, idle)
    environ = _new_validators_environ()
    assert environ.get(b"ARROW_DEFAULT_MEMORY_POOL") == b"system", sorted(environ)
    pool = subprocess.run([sys.executable, "-c", "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"],
                          env=environ, capture_output=True, text=True, check=True)
    assert pool.stdout.strip() == "system"
