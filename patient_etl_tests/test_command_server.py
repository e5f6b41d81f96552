"""The command's shared server: `patient-etl import` run by a worker that has Dagster imported already, and
exactly as if it ran in the command's own process: its arguments, environment, working directory,
standard streams and exit code, its Ctrl-C, and its end when the command's process is killed.

Each test starts a server of its own (an empty folder on PYTHONPATH names it apart from other tests'), so
its workers are the only children of that server. The command is the real entry point (`command.entry`);
a served command's own process never imports Dagster, which it says on its way out (an atexit hook: the
process that runs a command itself ends with os._exit and says nothing).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patient_etl import command_server
from patient_etl.batches import Home, Registry
from patient_etl.linkage import process
from patient_etl.linkage.run import SLOW
from patient_etl_tests.conftest import write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex"
ROWS = ("P1,Ann,Lee,1980-01-02,F", "P2,Bob,Ray,1975-03-04,M", "P3,Cy,Fox,13/13/2000,M")
COMMAND = """
import atexit, sys
atexit.register(lambda: print("command process: " + ("dagster imported" if "dagster" in sys.modules else "light"),
                              file=sys.stderr))
sys.argv = ["patient-etl", *sys.argv[1:]]
from patient_etl.command import entry
entry()
"""


def _listening() -> bool:
    """Whether a server listens at this environment's address, seen in the kernel's socket table: a
    connection to find out would fork a worker, which a test would then count among the server's."""
    name = "@" + command_server.address()[1:].decode()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[-1] == name and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
            return True
    return False


def _wait(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s"
        time.sleep(0.1)


def _server_pids() -> list[int]:
    wanted = command_server.address().hex().encode()
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
            if _read(p).find(wanted) >= 0 and b"--serve" in _read(p)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        text = _read(stat)
        if text and int(text.rsplit(b")", 1)[1].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    """The command's environment: its own home, and a PYTHONPATH naming this test's server."""
    own = tmp_path / "on-the-path"
    own.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(own), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(command_server.IDLE_SECONDS, "120")
    monkeypatch.setenv("PATIENT_ETL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    yield dict(os.environ)
    for pid in _server_pids():
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def server(env) -> int:
    started = command_server.start_server(120)
    _wait(lambda: started.poll() is not None or _listening())
    assert started.poll() is None
    yield started.pid


def _command(args: list[str], env: dict, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COMMAND, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _run(args: list[str], env: dict, cwd: Path) -> tuple[int, str, str]:
    process = _command(args, env, cwd)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _status(home: Path, batch_id: str) -> str:
    return Registry(Home(home)).require(batch_id).status


def test_a_served_command_is_run_as_its_own_process_would_run_it(tmp_path, env, server):
    folder = tmp_path / "partner"
    folder.mkdir()
    write_csv(folder / "roster.csv", HEADER, *ROWS)
    # A path relative to the command's working directory, the home from its environment, its streams.
    code, out, err = _run(["import", "roster.csv", "--json"], env, folder)
    assert code == 0, err
    assert "command process: light" in err
    assert '"status": "Finished with Errors"' in out
    batch_id = out.split('"batch_id": "')[1].split('"')[0]
    assert _status(tmp_path / "home", batch_id) == "Finished with Errors"
    # What the command says on stderr and its exit code: a file that is not there (a usage error, 2) ...
    code, out, err = _run(["import", "missing.csv"], env, folder)
    assert code == 2 and "patient-etl:" in err and "missing.csv" in err and out == ""
    assert "command process: light" in err
    # ... and a file failed at file level (2), reported on stdout.
    (folder / "empty.csv").write_text("")
    code, out, err = _run(["import", "empty.csv"], env, folder)
    assert code == 2 and "Failed" in out, (out, err)
    assert "command process: light" in err
    _wait(lambda: _children(server) == [], 30)  # each worker ends with its command


def test_without_a_server_the_command_runs_itself_and_starts_one(tmp_path, env):
    write_csv(tmp_path / "roster.csv", HEADER, *ROWS)
    assert not _listening()
    code, _, err = _run(["import", "roster.csv", "--json"], env, tmp_path)
    assert code == 0 and "command process:" not in err  # ran here, and ended with os._exit
    _wait(_listening)  # the server it started
    code, _, err = _run(["import", "roster.csv", "--json"], env, tmp_path)
    assert code == 0 and "command process: light" in err


def test_turned_off_no_server_is_used_or_started(tmp_path, env, server):
    write_csv(tmp_path / "roster.csv", HEADER, *ROWS)
    off = {**env, command_server.IDLE_SECONDS: "0"}
    code, _, err = _run(["import", "roster.csv", "--json"], off, tmp_path)
    assert code == 0 and "command process:" not in err
    assert _children(server) == []
    code, out, err = _run(["import", "roster.csv"], {**env, command_server.IDLE_SECONDS: "soon"}, tmp_path)
    assert code == 2 and f"{command_server.IDLE_SECONDS} must be a number of seconds" in err and out == ""


def test_the_server_holds_none_of_the_commands_settings_or_secrets(env):
    secret = {**env, "PATIENT_ETL_TARGET_URL": "postgresql://etl:s3cret@db.internal/patients",
              "AWS_SECRET_ACCESS_KEY": "s3cret"}
    os.environ.update(secret)
    try:
        started = command_server.start_server(120)
    finally:
        for name in ("PATIENT_ETL_TARGET_URL", "AWS_SECRET_ACCESS_KEY"):
            os.environ.pop(name)
    _wait(lambda: started.poll() is not None or _listening())
    environ = _read(Path(f"/proc/{started.pid}/environ"))
    assert b"PATH=" in environ and b"s3cret" not in environ
    assert not [k for k in environ.split(b"\0") if k.startswith((b"PATIENT_ETL_", b"DAGSTER_", b"AWS_"))]


@pytest.mark.parametrize("how", ["ctrl-c", "killed"])
def test_the_commands_signal_or_end_reaches_its_worker(tmp_path, env, server, how):
    """A run held in its linkage stage (a linkage a minute slower), whose linkage process is a worker of the
    same server: Ctrl-C on the command interrupts the run, which stops its linkage, and the command ends
    with it; the command killed, its worker ends (its linkage, in a session of its own, as before)."""
    write_csv(tmp_path / "roster.csv", HEADER, *ROWS)
    slow = {**env, SLOW: "60"}
    process = _command(["import", "roster.csv", "--json"], slow, tmp_path)
    registry = Registry(Home(tmp_path / "home"))
    _wait(lambda: any(b.status.startswith("Finished") for b in registry.all()) or process.poll() is not None)
    assert process.poll() is None, process.communicate()
    time.sleep(1)  # the run is in its linkage stage, waiting on the slow linkage
    workers = _children(server)
    (command,) = [w for w in workers if any(b"--run" in _read(Path(f"/proc/{c}/cmdline")) for c in _children(w))]
    (linkage,) = set(workers) - {command}
    started = time.monotonic()
    if how == "ctrl-c":
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=50)
        assert "command process: light" in err
        ended = [command, linkage]
    else:
        process.kill()
        process.wait()
        ended = [command]
    for pid in ended:
        _wait(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 50)
    assert time.monotonic() - started < 50, "the run waited for the slow linkage instead"


def test_the_linkage_process_is_a_worker_too_and_goes_with_its_handle(env, server):
    """A run's linkage process (`linkage.process`) hands its streams to a worker that has Splink imported:
    closed unused it exits 0 with its worker; killed (as one past its time limit is) its worker ends too."""
    unused = process.spawn()
    _wait(lambda: len(_children(server)) == 1, 60)
    (worker,) = _children(server)
    unused.stdin.close()
    assert unused.wait(timeout=60) == 0 and unused.stdout.read() == ""
    _wait(lambda: not Path(f"/proc/{worker}").exists(), 30)

    killed = process.spawn()
    _wait(lambda: len(_children(server)) == 1, 60)
    (worker,) = _children(server)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    _wait(lambda: not Path(f"/proc/{worker}").exists(), 30)
