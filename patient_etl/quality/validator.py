"""The row checks' Great Expectations run in a process of its own, started as the run begins.

Importing GX with pandas costs ~2.5 s, most of a small batch's row checks. `prewarm()` (called as a run
lands its batch, and by the `patient-etl` command before it imports Dagster) starts
`python -m patient_etl.quality.validator`, which imports GX on the other core while the run lands and
stages the batch; the row checks then only send it their frames. One validator serves a process's
runs in turn; it exits when its parent does (its stdin closes) and is started again if it died.

Messages are pickled over the child's stdin and a private copy of its stdout (the child points its
own stdout at stderr, so nothing GX prints can garble a reply). Frames go as Arrow tables; replies
carry rule indexes and row ids only. Nothing is written to disk. A child's error comes back as its
traceback, raised here as a `ValidatorError` (the step's `phi_safe` keeps such text out of Dagster).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from patient_etl.quality.suites import Rule, RuleGroup

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# A validator that has checked more rows than this is stopped when the batch's checks are done: its
# memory (pandas and Arrow buffers GX copied, not handed back to the OS) would otherwise sit beside publish.
LARGE_ROWS = 200_000
EXIT_ON_RUN = "PATIENT_ETL_FAULT_VALIDATOR_EXIT"  # fault injection: the validator dies at its first frame (tests)


class ValidatorError(RuntimeError):
    """The validator failed a request or ended; the message may quote data (a child's traceback)."""


class Validator:
    """The parent's handle on one validator process."""

    def __init__(self) -> None:
        env = {**os.environ, "GX_ANALYTICS_ENABLED": "False",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
        # Its own session: a Ctrl-C at the terminal stops the run, whose exit then closes the validator.
        self.process = subprocess.Popen([sys.executable, "-m", "patient_etl.quality.validator"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.lock = threading.Lock()
        self.rows_checked = 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def _ask(self, *message) -> object:
        try:
            pickle.dump(message, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.process.stdin.flush()
            kind, *reply = pickle.load(self.process.stdout)
        except (BrokenPipeError, EOFError, pickle.UnpicklingError) as exc:
            self.stop()
            raise ValidatorError(f"the row-check validator ended (exit code {self.process.returncode})") from exc
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
                self._ask("open", groups, rules, suite_name, index_column)
                for g in range(len(groups)):
                    for frame in frames(g):
                        self.rows_checked += frame.num_rows
                        for index, ids in self._ask("run", g, frame):
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
        if self.alive():
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()


_validator: Validator | None = None
_starting = threading.Lock()


def validator() -> Validator:
    """This process's validator, started (or started again) when needed."""
    global _validator
    with _starting:
        if _validator is None or not _validator.alive():
            _validator = Validator()
        return _validator


def prewarm() -> None:
    """Start the validator now, so that GX is imported by the time the row checks need it."""
    validator()


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    from patient_etl.quality.gx import Suites, context

    context()  # the ephemeral context too is ready before the first request
    suites = None
    while True:
        try:
            kind, *args = pickle.load(requests)
        except EOFError:  # the parent ended
            return
        try:
            if kind == "open":
                suites = Suites(*args)
                reply = None
            elif kind == "run":
                if os.environ.get(EXIT_ON_RUN):
                    os._exit(70)
                reply = suites.run(*args)
            else:
                suites.close()
                suites, reply = None, None
            message = ("ok", reply)
        except Exception:
            import traceback

            message = ("error", traceback.format_exc())
        pickle.dump(message, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def main() -> int:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever GX prints goes to stderr, not into a reply
    _serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
