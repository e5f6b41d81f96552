"""DuckDB's memory per database (PATIENT_ETL_DUCKDB_MEMORY): every database the pipeline opens is bounded,
a batch larger than the bound goes through with the same outcome (DuckDB evicts and spills inside the
home), and a value that is not an amount of memory is refused by name."""

from __future__ import annotations

import ast
from pathlib import Path

import duckdb
import pytest

from patient_etl import cli, duck
from patient_etl.definitions import build_defs
from patient_etl.resources import PatientEtl
from patient_etl_tests.conftest import query, read_results, write_csv

PACKAGE = Path(__file__).resolve().parents[1] / "patient_etl"
HEADER = "Member ID,First Name,Last Name,DOB,Sex,Address Line 1,City,State,Zip,Email"


def _roster(path: Path, rows: int) -> Path:
    lines = [f"M{n:07d},Ann{n % 97},Lee{n % 89},1980-{1 + n % 12:02d}-{1 + n % 28:02d},{'FM'[n % 2]},"
             f"{n} Main St,Boston,MA,{n % 100000:05d},a{n}@example.org" for n in range(rows)]
    lines[7] = lines[7].replace(",F,", ",X,").replace(",M,", ",X,")  # one row errored: an unknown sex
    return write_csv(path, HEADER, *lines)


def test_every_database_is_opened_through_the_bounded_connect():
    """`duck.connect` applies the limit; a `duckdb.connect` elsewhere in the package would not."""
    elsewhere = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "duck.py" or path.parts[-2:] == ("linkage", "default.py"):  # default.py: a build tool
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "duckdb"):
                elsewhere.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert elsewhere == []


@pytest.mark.parametrize("value, expected", [("", duck.DEFAULT_MEMORY_LIMIT), ("96MB", "96MB"), ("1.5GB", "1.5GB")])
def test_connect_applies_the_limit(monkeypatch, value, expected):
    monkeypatch.setenv(duck.MEMORY_LIMIT, value)
    con = duck.connect()
    bound = duck.scalar(con, "SELECT current_setting('memory_limit')")
    con.close()
    reference = duck.connect(config={"memory_limit": expected})  # DuckDB's own rendering of `expected`
    assert bound == duck.scalar(reference, "SELECT current_setting('memory_limit')")
    reference.close()


@pytest.mark.parametrize("value, full, part", [("512MB", "488.2 MiB", "122.0 MiB"), ("1.5GiB", "1.5 GiB", "384.0 MiB")])
def test_while_the_validator_works_a_database_holds_a_quarter_of_its_limit(monkeypatch, value, full, part):
    """The row checks' database during GX (`sharing_memory`): a quarter, then the whole limit again,
    however the validation ends."""
    monkeypatch.setenv(duck.MEMORY_LIMIT, value)
    con = duck.connect()
    limit = "SELECT current_setting('memory_limit')"
    assert duck.scalar(con, limit) == full
    with pytest.raises(RuntimeError), duck.sharing_memory(con):
        assert duck.scalar(con, limit) == part
        raise RuntimeError("the validator ended")
    assert duck.scalar(con, limit) == full
    con.close()


@pytest.mark.parametrize("value", ["lots", "512", "-1GB", "1GB; SET threads = 1"])
def test_a_value_that_is_not_an_amount_of_memory_is_refused_before_anything(tmp_path, home, monkeypatch, capsys,
                                                                             value):
    path = _roster(tmp_path / "roster.csv", 10)
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    monkeypatch.setenv(duck.MEMORY_LIMIT, value)
    assert cli.main(["import", str(path), "--json"]) == 2
    assert capsys.readouterr().err.strip() == (f"patient-etl: {duck.MEMORY_LIMIT} must be an amount of memory "
                                               f"such as 512MB or 2GB, not {value!r}")
    assert PatientEtl(home=str(home)).registry().all() == []  # no batch registered
    with pytest.raises(duck.SettingError, match=duck.MEMORY_LIMIT):  # nor does the code location load
        build_defs()


def test_a_limit_too_small_fails_the_batch_naming_the_limit(tmp_path, home, pg_url, run_import, monkeypatch):
    """Not the file's fault: the batch is Failed by the run, the reason says which setting to raise, and
    nothing reached the target."""
    path = _roster(tmp_path / "roster.csv", 2_000)
    monkeypatch.setenv(duck.MEMORY_LIMIT, "4MB")
    outcome = run_import(path, PatientEtl(home=str(home), target_url=pg_url))
    assert outcome["status"] == "Failed" and outcome["failure"] == "run"
    step, said = outcome["reason"].split(" needed more memory", 1)  # the step it stopped in (row checks here)
    assert step in ("staging", "row checks", "normalizing member", "publishing")
    assert said == f" than DuckDB may use ({duck.MEMORY_LIMIT}=4MB): raise the limit, then reprocess the batch"
    assert query(pg_url, "SELECT status, reason FROM import_batch") == [("Failed", outcome["reason"])]
    assert query(pg_url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'member'") in (
        [(0,)], [(1,)]) and query(pg_url, "SELECT count(*) FROM import_row") == [(0,)]


def test_a_batch_under_a_tight_limit_has_the_same_outcome(tmp_path, home, etl, run_import, monkeypatch):
    """60,000 rows under 48 MB a database: DuckDB evicts the pages it wrote and spills its sorts and joins
    (into the stage's own `.tmp` folder, beside it in the home); the outcome is the one any limit gives."""
    path = _roster(tmp_path / "roster.csv", 60_000)
    monkeypatch.setenv(duck.MEMORY_LIMIT, "48MB")
    outcome = run_import(path, etl)
    assert outcome["counts"] == {"Created": 59_999, "Updated": 0, "Unchanged": 0, "Errored": 1}
    errored = [r for r in read_results(outcome) if r["status"] == "Errored"]
    assert [(r["row_number"], r["external_id"]) for r in errored] == [("8", "M0000007")]
    assert "sex" in errored[0]["messages"]


def test_the_linkage_keeps_duckdbs_own_limit(tmp_path, monkeypatch):
    """Splink's blocking holds joins that do not spill: the linkage's database is not held to the stages'
    limit (100,000 rows against 1M members ran out at 256MB)."""
    from patient_etl.linkage.link import _DuckDB

    monkeypatch.setenv(duck.MEMORY_LIMIT, "64MB")
    linkage = _DuckDB(str(tmp_path / "spill")).con
    stage = duck.connect()
    default = duckdb.connect()  # DuckDB's own default
    try:
        assert duck.scalar(linkage, "SELECT current_setting('memory_limit')") == \
            duck.scalar(default, "SELECT current_setting('memory_limit')")
        assert duck.scalar(stage, "SELECT current_setting('memory_limit')") != \
            duck.scalar(linkage, "SELECT current_setting('memory_limit')")
    finally:
        for con in (linkage, stage, default):
            con.close()


_LARGE_BLOCK_PROBE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = MallInfo2, ctypes.c_void_p, [ctypes.c_void_p]
if sys.argv[1] == "connect":
    from patient_etl.duck import connect
    connect().close()
libc.free(libc.malloc(8 << 20))  # a large buffer freed: glibc raises its threshold to 8 MiB, unless fixed
mapped = libc.mallinfo2().hblkhd
block = libc.malloc(2 << 20)
print("mapped" if libc.mallinfo2().hblkhd - mapped >= 2 << 20 else "heap")
"""


@pytest.mark.parametrize(("first", "where"), [("connect", "mapped"), ("nothing", "heap")])
def test_a_process_that_opens_a_database_keeps_large_buffers_out_of_its_heap(first, where):
    """After DuckDB's first database, a large buffer (a frame of rows) is its own mapping, returned to
    the system when freed, even after a larger one was freed (`heap.py`); without it, glibc serves it from
    the heap, where what it frees stays in the process."""
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", _LARGE_BLOCK_PROBE, first], capture_output=True, text=True,
                           check=True)
    assert probe.stdout.strip() == where
