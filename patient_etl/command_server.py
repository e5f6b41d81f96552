"""The `patient-etl` command's shared server: a batch command run by a process that has Dagster and this
package imported already.

Before a small batch's import does anything it spends ~2 s of its ~5 s importing Python, Dagster, the
SQLite storages of its instance (SQLAlchemy, alembic), DuckDB, Arrow and our modules. So the commands that
run a batch (`import`, `rerun`, `demo`) first ask this server, which imported all of that once
(`python -m patient_etl.command_server --serve`): it forks a worker per command. The worker takes the
command's arguments, environment, working directory, umask and its standard input, output and error (the
descriptors themselves, passed over the socket), runs the command as the command's own process would
(`cli.main`), and reports its exit code. The command's process only waits: it forwards Ctrl-C (SIGINT),
SIGTERM and SIGHUP to the worker, and a worker whose command's process has gone gets SIGTERM (what the
command's process would have got).

With no server listening, a command runs in its own process, as before, and starts a server for the next
one. The server exits after PATIENT_ETL_COMMAND_IDLE_SECONDS without a command (600; it holds ~200 MB
meanwhile); 0 turns it off, and every command runs in its own process. The server is started with none of
the settings and secrets of the command that started it (`servers.server_env`) and reads no settings
itself: a worker holds its own command's only, and ends with it. Only the same user may connect. It is
named for this code, this interpreter and PYTHONPATH: a changed checkout never talks to an old server.
What a library reads from the environment as it is imported (a few DAGSTER_* tuning variables; none of
ours) is read once, by the server.

This module is imported by the command before Dagster (`command.py`): it imports nothing heavy itself.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from patient_etl import servers

IDLE_SECONDS = "PATIENT_ETL_COMMAND_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 600
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CLI = "patient_etl.cli"
LINKAGE = "patient_etl.linkage.run"  # the linkage stage's process (`linkage.process`), served the same way
# What a command's run imports on first use, imported by the server once. A name a later Dagster no
# longer has is skipped: the worker then imports what it needs, as the command's own process would.
PRELOAD = (
    "patient_etl.cli", "patient_etl.definitions", "patient_etl.target.sqlite", "patient_etl.target.postgres",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.local_compute_log_manager", "dagster._core.execution.api", "dagster._daemon.controller",
    "alembic.command", "alembic.runtime.migration", "alembic.script",
    "pyarrow", "xlsxwriter", "rich", "structlog", "fsspec", "upath",
    LINKAGE, "patient_etl.linkage.link", "splink", "sqlglot.dialects.duckdb",
)


class SettingError(ValueError):
    """PATIENT_ETL_COMMAND_IDLE_SECONDS is not a number of seconds."""


def idle_seconds() -> float:
    value = os.environ.get(IDLE_SECONDS, "").strip()
    try:
        return max(0.0, float(value)) if value else DEFAULT_IDLE_SECONDS
    except ValueError:
        raise SettingError(f"{IDLE_SECONDS} must be a number of seconds, not {value!r}") from None


def address() -> bytes:
    # What Python reads as it starts, and the server cannot take from a command later, names it too: the
    # path (the package's root, first on every server's path, aside) and the locale.
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(servers.PACKAGE_ROOT)]
    return servers.address("command", os.pathsep.join(path),
                           *(os.environ.get(name, "") for name in ("LANG", "LC_ALL", "LC_CTYPE")))


# -- the command's side ------------------------------------------------------------------------------

def start_server(idle: float) -> subprocess.Popen:
    # Its own session and no inherited streams: it outlives this process and holds none of its pipes. It
    # listens where this command looked for it (its own environment's PYTHONPATH is not this one's).
    return subprocess.Popen([sys.executable, "-P", "-m", "patient_etl.command_server", "--serve", str(idle),
                             address().hex()],
                            env=servers.server_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(struct.pack("!I", len(data)) + data)


def _receive(stream: io.BufferedReader) -> object:
    head = stream.read(4)
    if len(head) < 4:
        raise EOFError
    (size,) = struct.unpack("!I", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def process_command(entry: str) -> list[str]:
    """The command line of a process of the package (`entry`: LINKAGE) that is served when it can be: a light
    process that hands its streams to a worker (`--run`), or, with the server turned off, the process itself."""
    try:
        off = idle_seconds() == 0
    except SettingError:
        off = True
    return [sys.executable, "-P", "-m", *([entry] if off else [__spec__.name, "--run", entry])]


def run_served(argv: list[str], entry: str = CLI) -> int | None:
    """Run the command (`argv`, without the program name; `entry` names what runs it) in a worker of the shared
    server and return its exit code; None when no server took it (none listens, or it was just then idling
    out, or this process's standard streams cannot be passed), after starting one for the next command."""
    idle = idle_seconds()
    if idle == 0:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        try:
            sock.connect(address())
        except (ConnectionRefusedError, FileNotFoundError):
            start_server(idle)
            return None
        mask = os.umask(0o077)
        os.umask(mask)
        try:
            request = {"entry": entry, "argv": ["patient-etl", *argv], "env": dict(os.environ),
                       "cwd": os.getcwd(), "umask": mask,
                       "encodings": [(s.encoding, s.errors) for s in (sys.stdin, sys.stdout, sys.stderr)]}
            socket.send_fds(sock, [b"\0"], [0, 1, 2])
            _send(sock, request)
            replies = sock.makefile("rb")
            kind, _ = _receive(replies)  # ("started", the worker's pid)
        except (OSError, EOFError, AttributeError, pickle.UnpicklingError):
            return None  # closed unanswered (it was idling out), or a stream here is closed: run here
        forwarded: list[int] = []

        def forward(signum: int, _frame) -> None:
            forwarded.append(signum)
            with contextlib.suppress(OSError):
                sock.sendall(bytes([signum]))

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        try:
            kind, code = _receive(replies)  # ("exit", code)
        except (OSError, EOFError, pickle.UnpicklingError):
            if forwarded:  # the worker ended of the signal this process was sent: so does this process
                signal.signal(forwarded[-1], signal.SIG_DFL)
                os.kill(os.getpid(), forwarded[-1])
            print("patient-etl: the command's process ended before the command did; `patient-etl batches` "
                  "shows what became of its batch", file=sys.stderr)
            return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code


# -- the server's side -------------------------------------------------------------------------------

def _preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # Everything imported so far lives as long as the server: out of the collector's sight, so that a
    # worker's collections scan only its command's objects (and do not touch, so copy, the shared pages).
    gc.collect()
    gc.freeze()


def serve(idle: float, at: bytes) -> int:
    """The server, listening `at`: imports once, a forked worker per command, gone after `idle` s without one."""
    _preload()
    return servers.serve_forking(at, idle, _work)


def _work(conn: socket.socket) -> int:
    """A worker: become the command's process, run the command, report its exit code."""
    os.setsid()  # the worker and what it starts are a group of their own (ended together: `_take_signals`)
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        stream = conn.makefile("rb")
        request = _receive(stream)
    except (OSError, EOFError, pickle.UnpicklingError):
        return 0  # the command's process went before it was served
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    tempfile.tempdir = None  # found again from the command's TMPDIR
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    sys.argv = request["argv"]
    (in_enc, in_err), (out_enc, out_err), (err_enc, err_err) = request["encodings"]
    sys.stdin = open(0, encoding=in_enc, errors=in_err, closefd=False)  # noqa: SIM115 - the process's own
    sys.stdout = open(1, "w", encoding=out_enc, errors=out_err, closefd=False,  # noqa: SIM115
                      buffering=1 if os.isatty(1) else -1)
    sys.stderr = open(2, "w", encoding=err_enc, errors=err_err, closefd=False, buffering=1)  # noqa: SIM115
    _send(conn, ("started", os.getpid()))
    done = threading.Event()
    threading.Thread(target=_take_signals, args=(stream, done), name="command-signals", daemon=True).start()
    code = _run(request["entry"], sys.argv[1:])
    done.set()
    _send(conn, ("exit", code))
    return code


def _take_signals(stream: io.BufferedReader, done: threading.Event) -> None:
    """The signals the command's process forwards, raised here; its end (killed, say, as a linkage past its
    time limit is) as SIGTERM to the worker's group: the worker and what it started in it (a Spark JVM)."""
    while True:
        try:
            byte = stream.read(1)
        except OSError:
            byte = b""
        if done.is_set():
            return
        if not byte:
            os.killpg(0, signal.SIGTERM)
            return
        os.kill(os.getpid(), byte[0])


def _run(entry: str, argv: list[str]) -> int:
    """`cli.main` (or the linkage process's `main`), ended as its own process would end it (`cli.entry`, and
    Python's own exit)."""
    try:
        if entry == LINKAGE:
            from patient_etl.linkage.run import main as linkage_main

            code = linkage_main()
        else:
            from patient_etl.cli import main
            from patient_etl.linkage import process
            from patient_etl.quality.validator import prewarm

            prewarm()  # as `command.entry` does: the linkage process starts at once, not when the run does
            process.prewarm()
            code = main(argv)
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - as Python reports what ends a process
        traceback.print_exc()
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code


def run_process(entry: str) -> int:
    """`--run ENTRY`: this process's streams handed to a worker that runs `entry`, or, with no server to
    take them, this process becomes `python -m ENTRY` (the same pid, streams and environment)."""
    code = run_served([], entry)
    if code is None:
        os.execv(sys.executable, [sys.executable, "-P", "-m", entry])
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"] and len(sys.argv) == 4:
        sys.exit(serve(float(sys.argv[2]), bytes.fromhex(sys.argv[3])))
    if sys.argv[1:] == ["--run", LINKAGE]:
        sys.exit(run_process(sys.argv[2]))
    sys.exit(f"usage: python -m {__spec__.name} --serve IDLE_SECONDS ADDRESS_HEX | --run {LINKAGE}")
