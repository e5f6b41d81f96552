"""PHI at rest is kept to the minimum: nothing in the home is readable by group or others, whatever the
umask, and an SSN is in clear only in the landed copy (`archive/`).

The home holds the partners' raw files, staging databases, the embedded target and results: a 0644 file
there is PHI readable by every account on the machine. Staging, checks and the target need an SSN only to
validate it, echo it masked and match on it, so they keep the mask and a keyed hash, never the digits.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import duckdb

from patient_etl.batches import Home
from patient_etl.cli import import_batch
from patient_etl_tests.conftest import query, read_results, write_csv

CLEAR = ["987654321", "987-65-4321", "123456789", "123 45 6789", "55512345"]


def _roster(folder: Path) -> Path:
    return write_csv(
        folder / "roster.csv", "Patient ID,First Name,Last Name,DOB,Sex,SSN",
        "S1,Ada,Lovelace,1985-12-10,F,987-65-4321",
        "S2,Alan,Turing,1972-06-23,M,123 45 6789",
        "S3,Grace,Hopper,1966-12-09,F,55512345",  # eight digits: a row error, echoed masked
    )


def _duckdb_values(path: Path) -> str:
    """Every text value of every table of a DuckDB file (its strings are compressed on disk, so a
    byte search alone could miss them)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()
        return "\n".join(str(row) for (t,) in tables for row in con.execute(f'SELECT * FROM "{t}"').fetchall())
    finally:
        con.close()


def test_home_is_private_and_ssn_is_clear_only_in_the_archive(tmp_path, home, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # the home's own Dagster instance, under the home
    monkeypatch.delenv("PATIENT_ETL_HASH_KEY", raising=False)
    old = os.umask(0o022)
    try:
        from patient_etl.resources import PatientEtl

        etl = PatientEtl(home=str(home))
        archive = tmp_path / "roster.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(_roster(tmp_path), "roster.csv")
        outcome = import_batch([str(archive)], etl)
    finally:
        os.umask(old)
    assert outcome["status"] == "Finished with Errors"
    assert outcome["counts"]["Created"] == 2

    readable = [str(p.relative_to(home)) for p in [home, *home.rglob("*")] if p.lstat().st_mode & 0o077]
    assert readable == []
    assert (home / "dagster").is_dir() and (home / "target.sqlite").is_file()

    leaks = []
    for path in home.rglob("*"):
        if not path.is_file() or path.relative_to(home).parts[0] == "archive":
            continue
        texts = [path.read_bytes().decode("latin-1")]
        if path.suffix == ".duckdb":
            texts.append(_duckdb_values(path))
        leaks += [f"{path.relative_to(home)}: #{CLEAR.index(v)}" for v in CLEAR for t in texts if v in t]
    assert leaks == []
    assert any(b"987-65-4321" in p.read_bytes() for p in (home / "archive").rglob("*") if p.is_file())

    key = (home / "hash.key").read_bytes().strip()
    rows = query(etl.target(), "SELECT member_id, ssn, ssn_hash FROM member ORDER BY member_id")
    assert rows == [("S1", "***-**-4321", hmac.new(key, b"987654321", hashlib.sha256).hexdigest()),
                    ("S2", "***-**-6789", hmac.new(key, b"123456789", hashlib.sha256).hexdigest())]
    errored = [r for r in read_results(outcome) if r["status"] == "Errored"]
    assert [(r["external_id"], r["messages"]) for r in errored] == [("S3", "error: ssn: must have 9 digits")]


def test_a_configured_key_makes_the_hash(tmp_path, etl, run_import, monkeypatch):
    from patient_etl.resources import PatientEtl

    keyed = PatientEtl(home=etl.home, hash_key="production secret")
    run_import(_roster(tmp_path), keyed)
    (ssn_hash,) = query(keyed.target(), "SELECT ssn_hash FROM member WHERE member_id = 'S1'")[0]
    assert ssn_hash == hmac.new(b"production secret", b"987654321", hashlib.sha256).hexdigest()
    assert not (Path(etl.home) / "hash.key").exists()


def test_a_killed_runs_temporary_files_are_removed_at_the_next_start(tmp_path, home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getpid()
    staging = home / "staging" / "20261122-cli-roster-0000"
    staging.mkdir(parents=True)
    (home / "results").mkdir()
    (home / "archive" / "b").mkdir(parents=True)
    unpacked, unpacking = staging / f".unpacked.{dead.pid}.tmp", staging / f".unpacked.{live}.tmp"
    (unpacked / "000_roster.csv").parent.mkdir()
    unpacking.mkdir()
    leftovers = [staging / f".target-{dead.pid}-abc.csv", home / "results" / f".x_results.{dead.pid}.writing",
                 unpacked / "000_roster.csv",  # a zip's member, unpacked by a run that was killed
                 unpacked / f".clean_000.csv.{dead.pid}.tmp",  # staging's clean copy of a file
                 home / "archive" / "b" / "roster.csv.part"]
    kept = [staging / f".target-{live}-abc.csv", staging / "staged.duckdb", home / "results" / "x_results.csv",
            unpacking / "000_roster.csv"]  # a live run's
    kept.append(home / "archive" / "b" / "other.csv.part")  # a download in progress
    for path in leftovers + kept:
        path.write_text("Ada,Lovelace")
        path.chmod(0o644)
    os.utime(leftovers[-1], (time.time() - 7200, time.time() - 7200))  # an interrupted download, long quiet
    env = {**os.environ, "PATIENT_ETL_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "patient_etl.cli", "batches"], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in leftovers if p.exists()] == []
    assert not unpacked.exists()
    assert [p.name for p in kept if not p.exists()] == []
    assert [p.name for p in kept if p.stat().st_mode & 0o077] == []
    assert Home(home).root.stat().st_mode & 0o777 == 0o700


def _open_files() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since it was listed
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def test_the_embedded_targets_publish_keeps_its_temporary_tables_in_the_batch_folder(tmp_path):
    """A publish's temporary tables (the batch's rows, their outcomes) spill into files in the batch's
    folder, inside the home, not SQLite's default /var/tmp or /tmp; other connections (a batch's status)
    keep theirs in memory and create no file. The temporary cache is cut to 64 pages so that 200,000
    rows spill as a large batch's do."""
    from patient_etl.target import open_target

    folder = tmp_path / "home" / "staging" / "batch"
    folder.mkdir(parents=True)
    url = f"sqlite:///{tmp_path / 'home' / 'target.sqlite'}"
    before = set(_open_files())
    for work_dir in (folder, None):
        target = open_target(url, work_dir=work_dir)
        try:
            with target.begin() as conn:
                conn.exec_driver_sql("PRAGMA temp.cache_size = 64")  # 64 pages: these rows spill
                target.temp_table(conn, "incoming_member", {"rid": "bigint", "member_id": "text"}, primary_key="rid")
                conn.exec_driver_sql("INSERT INTO incoming_member WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                                     "SELECT i + 1 FROM n WHERE i < 200000) SELECT i, 'M' || i FROM n")
                opened = [f for f in set(_open_files()) - before if "target.sqlite" not in f]
                if work_dir is not None:
                    assert opened and all(f.startswith(str(folder) + "/") for f in opened), opened
                else:
                    assert opened == []
        finally:
            target.dispose()
        with contextlib.closing(sqlite3.connect(":memory:")) as other:  # after it, SQLite's own folder again
            assert other.execute("PRAGMA temp_store_directory").fetchall() == []
