"""What the package's two forking servers share: the row checks' validator (`quality/validator.py`) and the
command's (`command_server.py`). Each imports its heavy libraries once and forks a ready worker per
connection, on an abstract Unix socket named for this user, this interpreter and this code (so a changed
checkout never talks to an old server); only the same user may connect. A server is started with none of
the settings and secrets of the process that started it: it outlives that process.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# What a server inherits of its starter's environment: what Python, locale and the numeric libraries read.
# Never the settings and secrets (target URLs, source credentials, hash keys).
KEPT_ENV = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "VIRTUAL_ENV"}
KEPT_ENV_PREFIXES = ("LC_", "PYTHON", "GX_", "OMP_", "MKL_", "OPENBLAS_", "NUMEXPR_")


@cache
def _code_digest() -> str:
    digest = hashlib.sha256(f"{os.getuid()}\0{sys.executable}\0".encode())
    for path in sorted((PACKAGE_ROOT / "patient_etl").rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def address(kind: str, *also: str) -> bytes:
    """The abstract socket of the `kind` server for this user, interpreter and code (and `also`)."""
    digest = hashlib.sha256("\0".join([_code_digest(), *also]).encode())
    return f"\0patient_etl-{kind}-".encode() + digest.hexdigest()[:32].encode()


def package_path() -> str:
    """PYTHONPATH for a process that imports this very package: PACKAGE_ROOT first, then this one's path
    (with `python -P`, which keeps the working directory, maybe another checkout, off it)."""
    return os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))


def server_env(**extra: str) -> dict[str, str]:
    """A server's environment: only what `KEPT_ENV` keeps, and `package_path()`."""
    kept = {k: v for k, v in os.environ.items() if k in KEPT_ENV or k.startswith(KEPT_ENV_PREFIXES)}
    return {**kept, **extra, "PYTHONPATH": package_path()}


def peer_uid(conn: socket.socket) -> int:
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def serve_forking(at: bytes, idle: float, work: Callable[[socket.socket], int]) -> int:
    """Listen `at` and fork a worker per connection of this user, which runs `work(connection)` and exits
    with its code; gone after `idle` s without a connection. Returns at once when another server holds
    the address (two were started at once: that one serves)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(at)
    except OSError:
        return 0
    listener.listen(64)
    listener.settimeout(idle)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped as they exit
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return 0
        if peer_uid(conn) != os.getuid():
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            conn.settimeout(None)
            code = 1
            try:
                code = work(conn)
            finally:  # never back into the server's loop
                os._exit(code)
        conn.close()
