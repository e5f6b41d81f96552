"""The row checks' Great Expectations run in a process of their own, never in the run's.

Importing GX with pandas costs ~3 s, more than everything else a small batch does. So the run's process
never imports it: a validator does, and the row checks send it their frames.

**The shared validator** (the default). The first run starts `python -m patient_etl.quality.validator
--serve`, which imports GX once, listens on an abstract Unix socket named for this user and this code
(a hash of the package's source, the interpreter and GX's install, so a changed checkout never talks
to an old server), and forks a worker per connection: a run's validator is a fresh process with GX
already imported, ready at once. Only the same user may connect (the peer's uid is checked). The
server exits after `PATIENT_ETL_VALIDATOR_IDLE_SECONDS` without a connection (600; it holds ~260 MB
meanwhile); a worker exits when its run closes the connection or ends.

**A private validator** (`PATIENT_ETL_VALIDATOR_IDLE_SECONDS=0`): each process starts its own child, as
the run starts (`prewarm()`, also called by the `patient-etl` command before it imports Dagster), so GX
is imported on the other core while the run lands and stages the batch.

Either way a run whose batch is larger than DuckDB's memory limit lets its prewarmed validator go as
it starts (`park`), and its row checks start another when GX first needs it. One validator serves a
process's runs in turn and is started again if it died. Messages are pickled over the connection (the
child points its own stdout at stderr, so nothing GX prints can garble a reply). Frames go as Arrow
tables; replies carry rule indexes and row ids only. Nothing is written to disk. A child's error comes
back as its traceback, raised here as a `ValidatorError` (the step's `phi_safe` keeps such text out of
Dagster).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import IO, TYPE_CHECKING

from patient_etl import servers
from patient_etl.heap import return_large_buffers

if TYPE_CHECKING:
    import pyarrow as pa

    from patient_etl.quality.suites import Rule, RuleGroup

# A validator that has checked more rows than this is stopped when the batch's checks are done: its
# memory (pandas and Arrow buffers GX copied, not handed back to the OS) would otherwise sit beside publish.
LARGE_ROWS = 200_000
EXIT_ON_RUN = "PATIENT_ETL_FAULT_VALIDATOR_EXIT"  # fault injection: the validator dies at its first frame (tests)
IDLE_SECONDS = "PATIENT_ETL_VALIDATOR_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 600
START_TIMEOUT = 120  # seconds a run waits for a starting server to listen


class ValidatorError(RuntimeError):
    """The validator failed a request or ended; the message may quote data (a child's traceback)."""


def idle_seconds() -> float:
    value = os.environ.get(IDLE_SECONDS, "").strip()
    try:
        return max(0.0, float(value)) if value else DEFAULT_IDLE_SECONDS
    except ValueError:
        raise ValidatorError(f"{IDLE_SECONDS} must be a number of seconds, not {value!r}") from None


@cache
def address() -> bytes:
    """The shared validator's abstract socket: this user, this interpreter, this code, this GX."""
    spec = importlib.util.find_spec("great_expectations")  # found, not imported
    gx = f"{spec.origin}\0{os.stat(spec.origin).st_mtime_ns}" if spec and spec.origin else ""
    return servers.address("validator", gx)


def _child_env() -> dict[str, str]:
    # Never the run's settings and secrets: a shared validator outlives the run that started it. Arrow's
    # buffers (each frame unpickled, then converted for pandas) from the C library's allocator, not
    # Arrow's default mimalloc, which kept what they freed: the validator's peak grew with the number of
    # frames (at 10M rows, 130 frames: 363 MB, against 315 MB with the system allocator).
    return servers.server_env(GX_ANALYTICS_ENABLED="False", ARROW_DEFAULT_MEMORY_POOL="system")


def _start_server(idle: float) -> subprocess.Popen:
    # Its own session and no inherited streams: it outlives this process and holds none of its pipes.
    return subprocess.Popen([sys.executable, "-P", "-m", "patient_etl.quality.validator", "--serve", str(idle)],
                            env=_child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


class Validator:
    """The run's handle on one validator: a worker of the shared server, or a private child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows_checked = 0
        self.process: subprocess.Popen | None = None  # a private child, or the server this handle started
        self.sock: socket.socket | None = None
        self.pid: int | None = None  # the worker serving this handle
        self.requests: IO[bytes] | None = None
        self.replies: IO[bytes] | None = None
        self.closed = False
        self.started = False
        self.idle = idle_seconds()

    @property
    def shared(self) -> bool:
        return self.idle > 0

    def start(self) -> None:
        """Start the private child, or connect to the shared server (starting it when none listens):
        `prewarm` does it as the run starts; otherwise the first request does."""
        if self.started or self.closed:
            return
        self.started = True
        if self.idle == 0:
            self.process = subprocess.Popen([sys.executable, "-P", "-m", "patient_etl.quality.validator"],
                                            env=_child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            start_new_session=True)
            self.requests, self.replies, self.pid = self.process.stdin, self.process.stdout, self.process.pid
        elif not self._connect():
            self.process = _start_server(self.idle)  # connected to when first asked, once it listens

    def _connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address())
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            return False
        requests, replies = sock.makefile("wb"), sock.makefile("rb")
        try:
            _, pid = pickle.load(replies)  # ("ready", the worker's pid)
        except (EOFError, OSError, pickle.UnpicklingError):
            # The server closed it unanswered: it was idling out as this connected. Not connected.
            for stream in (requests, replies, sock):
                stream.close()
            return False
        self.sock, self.requests, self.replies, self.pid = sock, requests, replies, pid
        return True

    def _ready(self) -> None:
        if self.closed:
            raise ValidatorError("the row-check validator was stopped")
        self.start()
        if self.requests is not None:
            return
        deadline, restarted = time.monotonic() + START_TIMEOUT, False
        while not self._connect():
            if self.process.poll() is not None and not self._connect():
                # The server this handle started ended without serving it (another took the address and
                # has since gone, or it could not start): one more, then the batch fails.
                if restarted:
                    raise ValidatorError(f"the shared row-check validator could not start "
                                         f"(exit code {self.process.returncode})")
                self.process, restarted = _start_server(self.idle), True
            if time.monotonic() > deadline:
                raise ValidatorError(f"the shared row-check validator did not start within {START_TIMEOUT} s")
            time.sleep(0.05)

    def alive(self) -> bool:
        if self.closed:
            return False
        if not self.started:
            return True  # it starts when asked
        if not self.shared:
            return self.process.poll() is None
        if self.sock is None:
            return True  # its server is starting
        # An idle worker sends nothing: a readable socket means it has ended.
        return not select.select([self.sock], [], [], 0)[0]

    def _ask(self, *message) -> object:
        self._ready()
        try:
            pickle.dump(message, self.requests, protocol=pickle.HIGHEST_PROTOCOL)
            self.requests.flush()
            kind, *reply = pickle.load(self.replies)
        except (BrokenPipeError, ConnectionError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
            self.stop()
            code = f" (exit code {self.process.returncode})" if not self.shared else ""
            raise ValidatorError(f"the row-check validator ended{code}") from exc
        if kind == "error":
            raise ValidatorError(reply[0])
        return reply[0]

    def validate(self, groups: list[RuleGroup], frames: Callable[[int], Iterator[pa.Table]], rules: list[Rule],
                 suite_name: str, index_column: str) -> Iterator[tuple[int, int, list[int]]]:
        """Run each group's suite over its frames; yield (group position, rule index, failing ids) for
        every failing rule. `frames(g)` gives group g's frames: each holds `index_column` and the
        group's columns."""
        with self.lock:
            done = False
            try:
                self._ask("open", groups, rules, suite_name, index_column, bool(os.environ.get(EXIT_ON_RUN)))
                for g in range(len(groups)):
                    for frame in frames(g):
                        self.rows_checked += frame.num_rows
                        failing = self._ask("run", g, frame)
                        # Let go of it now: the loop's name would hold it while the next one is built
                        # (two 250k-row frames in the run process instead of one).
                        del frame
                        for index, ids in failing:
                            yield g, index, ids
                self._ask("close")
                done = True
            finally:
                if not done:  # abandoned mid-way (an error, a stopped run): its replies must not reach the next
                    self.stop()

    def release(self) -> None:
        """A batch's checks are done: a validator grown large goes (the next batch starts another)."""
        if self.rows_checked > LARGE_ROWS:
            self.stop()

    def stop(self) -> None:
        """End this handle's worker (or private child). A shared server goes on serving others."""
        self.closed = True
        if not self.shared and self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
        elif self.pid is not None and self.sock is not None and self.sock.fileno() >= 0 \
                and not select.select([self.sock], [], [], 0)[0]:
            # Still connected, and silent: the worker is alive (its end would close the socket), so
            # the pid is still its own. Stopped mid-batch, it is killed rather than left computing.
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        for stream in (self.requests, self.replies, self.sock):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


_validator: Validator | None = None
_starting = threading.Lock()


def validator() -> Validator:
    """This process's validator: a handle started by `prewarm`, else by its first request (and replaced
    once it has ended)."""
    global _validator
    with _starting:
        if _validator is None or not _validator.alive():
            _validator = Validator()
        return _validator


def prewarm() -> None:
    """Reach the validator now: connected to the shared one, or one started to import GX meanwhile."""
    validator().start()


def park(batch_bytes: int) -> bool:
    """True, and an idle validator ended, for a run whose batch is larger than DuckDB's memory limit: its
    staging fills the limit, and the validator prewarmed beside it (~230 MB once GX is imported, idle
    until the row checks) was a 10M-row import's peak. The row checks start another when GX first needs
    it, inside their reduced limit (`duck.sharing_memory`): ~3 s of GX import on a batch of minutes."""
    from patient_etl.duck import memory_limit_bytes  # not before prewarm: duckdb's import costs ~0.1 s

    global _validator
    if batch_bytes <= memory_limit_bytes():
        return False
    with _starting:
        if _validator is not None and not _validator.lock.locked():
            _validator.stop()
            _validator = None
    return True


def _freeze_heap() -> None:
    """What GX leaves in reference cycles is collected after every frame (`_serve`): the frames its row
    conditions filter stay in cycles until a full collection, which the allocation count seldom
    triggers (a 10M batch's address rules grew the worker by ~25 MB a frame, 320 to 730 MB). The heap as
    it stands once GX is imported is frozen out of collections (a full one took 0.14 s): each then scans
    one frame's objects."""
    gc.collect()
    gc.freeze()


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    from patient_etl.quality.gx import Suites, context

    context()  # the ephemeral context too is ready before the first request
    _freeze_heap()  # a shared server's worker inherits its frozen heap: this collection finds nothing
    suites, exit_on_run = None, False
    while True:
        try:
            kind, *args = pickle.load(requests)
        except (EOFError, OSError):  # the run ended or closed its handle
            return
        try:
            if kind == "open":
                *args, exit_on_run = args
                suites = Suites(*args)
                reply = None
            elif kind == "run":
                if exit_on_run:
                    os._exit(70)
                reply = suites.run(*args)
                gc.collect()
            else:
                suites.close()
                suites, reply = None, None
            message = ("ok", reply)
        except Exception:
            import traceback

            message = ("error", traceback.format_exc())
        pickle.dump(message, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def serve_shared(idle: float) -> int:
    """The shared validator: GX imported once, a forked worker per connection, gone after `idle` s idle."""
    from patient_etl.quality.gx import context

    context()  # imported and built before any fork: every worker starts ready
    _freeze_heap()  # once here, not in every worker as it takes its first batch
    return servers.serve_forking(address(), idle, _worker)


def _worker(conn: socket.socket) -> int:
    requests, replies = conn.makefile("rb"), conn.makefile("wb")
    pickle.dump(("ready", os.getpid()), replies)
    replies.flush()
    _serve(requests, replies)
    return 0


def main(argv: list[str]) -> int:
    return_large_buffers()  # GX's pandas frames, one after another (a shared server's workers inherit it)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever GX prints goes to stderr, not into a reply
    if argv[:1] == ["--serve"]:
        return serve_shared(float(argv[1]))
    _serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
