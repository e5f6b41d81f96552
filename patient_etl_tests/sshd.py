"""A real OpenSSH server for SFTP tests: its own host key, a loopback port, SFTP only, no mocks.

`run_sshd(tmp_path)` starts `/usr/sbin/sshd` with a config under `tmp_path`; the login user is the
current user (root in CI) with a freshly generated client key. The SFTP session starts in
`<tmp_path>/sshd/sftp_root`, so the relative folders `Pending Patient Imports` and
`Patient Import Results` are plain folders of the test.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from patient_etl.sources.sftp import SftpServer

SSHD = Path("/usr/sbin/sshd")
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 10.0

CONFIG = """\
ListenAddress {host}:{port}
HostKey {host_key}
PidFile {pid_file}
UsePAM no
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
AuthorizedKeysFile {authorized_keys}
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
Subsystem sftp internal-sftp
ForceCommand internal-sftp -d {root}
"""


def _keygen(path: Path) -> None:
    command = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)]
    subprocess.run(command, check=True)


def _fingerprint(public_key: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(public_key)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _descendants(root: int) -> list[int]:
    """Every process below `root`: sshd forks one session per connection and each calls setsid()."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class SshdServer:
    """One sshd on 127.0.0.1:`port`; `stop()` and `start()` keep the port and the host key."""

    base: Path
    port: int
    user: str
    root: Path
    pending: Path
    results: Path
    known_hosts: Path
    host_key_fingerprint: str
    client_key: Path
    config: Path
    log: Path
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self._process.returncode}:\n{self.log.read_text()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {HOST}:{self.port} within {START_TIMEOUT_SECONDS}s")

    def stop(self) -> None:
        """The server goes down: the listener and every open session, abruptly."""
        if self._process is None:
            return
        sessions = _descendants(self._process.pid)
        self._process.terminate()
        _signal_all(sessions, signal.SIGKILL)
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def pause(self) -> None:
        """The server hangs: sessions stay open but nothing answers (SIGSTOP)."""
        assert self._process is not None
        _signal_all([self._process.pid, *_descendants(self._process.pid)], signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        _signal_all([self._process.pid, *_descendants(self._process.pid)], signal.SIGCONT)

    def resource(self, **overrides) -> SftpServer:
        settings = {
            "host": HOST,
            "port": self.port,
            "user": self.user,
            "key_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "connect_timeout_seconds": 5.0,
            "io_timeout_seconds": 5.0,
        }
        return SftpServer(**{**settings, **overrides})

    def env(self) -> dict[str, str]:
        return {
            "PATIENT_ETL_SFTP_HOST": HOST,
            "PATIENT_ETL_SFTP_PORT": str(self.port),
            "PATIENT_ETL_SFTP_USER": self.user,
            "PATIENT_ETL_SFTP_KEY_FILE": str(self.client_key),
            "PATIENT_ETL_SFTP_KNOWN_HOSTS": str(self.known_hosts),
            "PATIENT_ETL_SFTP_HOST_KEY_FINGERPRINT": self.host_key_fingerprint,
        }


def _require_sshd() -> None:
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        raise RuntimeError(
            f"{SSHD} or ssh-keygen is missing: the SFTP tests need a real OpenSSH server "
            "(.ci/run installs openssh-server; locally: apt-get install openssh-server)"
        )
    # sshd refuses to start without its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)


@contextmanager
def run_sshd(tmp_path: Path) -> Iterator[SshdServer]:
    _require_sshd()
    base = tmp_path / "sshd"
    if any(char.isspace() for char in str(base)):
        # ForceCommand's `internal-sftp -d` did not accept a quoted path (OpenSSH 9.2).
        raise RuntimeError(f"run_sshd needs a folder without spaces, not {base}")
    root = base / "sftp_root"
    pending, results = root / "Pending Patient Imports", root / "Patient Import Results"
    for folder in (pending, results):
        folder.mkdir(parents=True)
    host_key, client_key = base / "ssh_host_ed25519_key", base / "client_ed25519_key"
    _keygen(host_key)
    _keygen(client_key)
    authorized_keys = base / "authorized_keys"
    shutil.copyfile(client_key.with_suffix(".pub"), authorized_keys)

    port = _free_port()
    key_type, key_blob = host_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[{HOST}]:{port} {key_type} {key_blob}\n")
    config = base / "sshd_config"
    config.write_text(CONFIG.format(
        host=HOST, port=port, host_key=host_key, pid_file=base / "sshd.pid",
        authorized_keys=authorized_keys, root=root,
    ))

    server = SshdServer(
        base=base, port=port, user=getpass.getuser(), root=root, pending=pending, results=results,
        known_hosts=known_hosts, host_key_fingerprint=_fingerprint(host_key.with_suffix(".pub")),
        client_key=client_key, config=config, log=base / "sshd.log",
    )
    server.start()
    try:
        yield server
    finally:
        if server._process is not None:
            server.resume()
        server.stop()


@pytest.fixture
def sshd_server(tmp_path: Path) -> Iterator[SshdServer]:
    """A running OpenSSH SFTP server for this test, stopped afterwards."""
    with run_sshd(tmp_path) as server:
        yield server
