"""The SFTP client against a real OpenSSH server.

Partners only see two SFTP folders, so this layer is where a partner's file can be lost, landed
half-written, overwritten, or fetched from an impostor server. These tests pin that a file is landed
whole (sha256 verified) or not at all, leaves the drop folder only when asked, that results are never
overwritten, that untrusted names and host keys are refused, and that a dead or hung server fails fast.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from patient_etl.sources.sftp import (
    RemoteFile,
    SftpError,
    SftpHostKeyError,
    SftpServer,
    SftpUnavailable,
    safe_remote_name,
    sftp_server_from_env,
)
from patient_etl_tests import sshd
from patient_etl_tests.sshd import SshdServer

sshd_server = sshd.sshd_server

ROSTER = "Roster – März 2026.csv"
UNSAFE_NAMES = ["../x", "a/b", "a\\b", "x\x00y", "tab\tname.csv", "", ".", ".."]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def other_host_key(tmp_path: Path) -> tuple[str, str]:
    """A freshly generated ed25519 public key (type, base64) and its fingerprint: not the server's."""
    key = tmp_path / "impostor_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    key_type, blob = key.with_suffix(".pub").read_text().split()[:2]
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(key.with_suffix(".pub"))], check=True, capture_output=True, text=True,
    ).stdout.split()[1]
    return f"{key_type} {blob}", fingerprint


def download_interrupted(
    resource: SftpServer, name: str, dest: Path, interrupt: Callable[[], None], after_bytes: int = 1 << 20,
) -> BaseException | None:
    """Download `name`, calling `interrupt()` once `after_bytes` reached the local file; return the error.

    A FIFO stands in for `dest.part`, so the test paces the download: it cannot run ahead of what the
    test has read, and the interruption is guaranteed to land mid-stream.
    """
    part = dest.with_name(dest.name + ".part")
    os.mkfifo(part)
    reader = os.open(part, os.O_RDONLY | os.O_NONBLOCK)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            resource.download(name, dest)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    received, interrupted = 0, False
    deadline = time.monotonic() + 20
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            if select.select([reader], [], [], 0.05)[0]:
                received += len(os.read(reader, 1 << 16))
            if not interrupted and received >= after_bytes:
                interrupt()
                interrupted = True
    finally:
        os.close(reader)
    thread.join(timeout=10)
    assert interrupted and not thread.is_alive()
    return errors[0] if errors else None


def test_list_pending_sees_complete_regular_files_only(sshd_server: SshdServer) -> None:
    pending = sshd_server.pending
    (pending / "a.csv").write_text("id\n1\n")
    (pending / ROSTER).write_text("first_name\nAnna\n")
    for name in ["b.csv.part", "c.csv.tmp", "d.csv.filepart", "e.csv.partial", "f.csv.crdownload",
                 ".hidden.csv", "bad\nname.csv"]:
        (pending / name).write_text("x\n")
    (pending / "link.csv").symlink_to(pending / "a.csv")
    (pending / "folder.csv").mkdir()
    os.utime(pending / "a.csv", (1_700_000_000, 1_700_000_000))

    files = sshd_server.resource().list_pending()

    roster_mtime = int((pending / ROSTER).stat().st_mtime)
    # A name with a control character is listed, for the source to report it (it is never landed).
    assert [f for f in files if f.name != "bad\nname.csv"] == [RemoteFile(ROSTER, 16, roster_mtime),
                                                              RemoteFile("a.csv", 5, 1_700_000_000)]
    assert "bad\nname.csv" in {f.name for f in files}


def test_list_pending_names_a_missing_folder(sshd_server: SshdServer) -> None:
    with pytest.raises(SftpError, match="folder 'Drop' does not exist"):
        sshd_server.resource(pending_folder="Drop").list_pending()


def test_list_pending_refuses_a_listing_paramiko_cannot_decode(sshd_server: SshdServer) -> None:
    (sshd_server.pending / "a.csv").write_text("id\n")
    os.close(os.open(os.fsencode(sshd_server.pending) + b"/M\xe4rz.csv", os.O_CREAT | os.O_WRONLY))
    with pytest.raises(SftpError, match="not UTF-8"):
        sshd_server.resource().list_pending()


def test_download_lands_the_exact_bytes_and_leaves_the_remote_file(
    sshd_server: SshdServer, tmp_path: Path,
) -> None:
    source = sshd_server.pending / ROSTER
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    dest = tmp_path / "landed" / "roster.csv"
    dest.parent.mkdir()

    size, digest = sshd_server.resource().download(ROSTER, dest)

    assert (size, digest) == (source.stat().st_size, sha256(source))
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["roster.csv"]
    assert source.exists()


def test_download_refuses_a_symlink(sshd_server: SshdServer, tmp_path: Path) -> None:
    secret = sshd_server.root / "elsewhere.csv"
    secret.write_text("not for partners\n")
    (sshd_server.pending / "link.csv").symlink_to(secret)
    with pytest.raises(SftpError, match="not a regular file"):
        sshd_server.resource().download("link.csv", tmp_path / "link.csv")
    assert list(tmp_path.glob("link.csv*")) == []


def test_retire_archives_and_never_replaces_an_archived_file(sshd_server: SshdServer) -> None:
    resource = sshd_server.resource()
    archive = sshd_server.root / "Processed Patient Imports"
    for content in ["first\n", "second\n", "third\n"]:
        (sshd_server.pending / ROSTER).write_text(content)
        resource.retire(ROSTER)

    assert list(sshd_server.pending.iterdir()) == []
    assert {p.name: p.read_text() for p in archive.iterdir()} == {
        ROSTER: "first\n",
        "Roster – März 2026 (2).csv": "second\n",
        "Roster – März 2026 (3).csv": "third\n",
    }


def test_retire_in_remove_mode_deletes_the_file(sshd_server: SshdServer) -> None:
    (sshd_server.pending / ROSTER).write_text("id\n")
    sshd_server.resource(after_landing="remove").retire(ROSTER)
    assert list(sshd_server.pending.iterdir()) == []
    assert not (sshd_server.root / "Processed Patient Imports").exists()


def test_retire_refuses_an_unknown_mode(sshd_server: SshdServer) -> None:
    (sshd_server.pending / "a.csv").write_text("id\n")
    with pytest.raises(SftpError, match="after_landing"):
        sshd_server.resource(after_landing="shred").retire("a.csv")
    assert (sshd_server.pending / "a.csv").exists()


def test_upload_result_never_overwrites_and_leaves_no_temporary_file(
    sshd_server: SshdServer, tmp_path: Path,
) -> None:
    sshd_server.results.rmdir()
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("row_number,status\n1,Created\n")
    second.write_text("row_number,status\n1,Updated\n")
    resource = sshd_server.resource()

    names = [resource.upload_result(first, "2026-03-01 Roster results.csv"),
             resource.upload_result(second, "2026-03-01 Roster results.csv")]

    assert names == ["2026-03-01 Roster results.csv", "2026-03-01 Roster results-2.csv"]
    assert {p.name: p.read_text() for p in sshd_server.results.iterdir()} == {
        names[0]: first.read_text(), names[1]: second.read_text(),
    }


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_names_are_refused_before_touching_the_server(
    sshd_server: SshdServer, tmp_path: Path, name: str,
) -> None:
    outside = sshd_server.root / "x"
    outside.write_text("keep me\n")
    local = tmp_path / "result.csv"
    local.write_text("row_number\n")
    resource = sshd_server.resource(after_landing="remove")

    with pytest.raises(SftpError):
        safe_remote_name(name)
    with pytest.raises(SftpError):
        resource.download(name, tmp_path / "landed.csv")
    with pytest.raises(SftpError):
        resource.retire(name)
    with pytest.raises(SftpError):
        resource.upload_result(local, name)
    assert outside.read_text() == "keep me\n"
    assert list(sshd_server.results.iterdir()) == []
    assert "Accepted publickey" not in sshd_server.log.read_text()


def test_a_changed_host_key_in_known_hosts_is_refused(sshd_server: SshdServer, tmp_path: Path) -> None:
    impostor, _ = other_host_key(tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {impostor}\n")

    with pytest.raises(SftpHostKeyError) as refused:
        sshd_server.resource(known_hosts=str(known_hosts)).list_pending()

    message = str(refused.value)
    assert f"127.0.0.1:{sshd_server.port}" in message
    assert sshd_server.host_key_fingerprint in message
    assert "known_hosts" in message and "HOST_KEY_FINGERPRINT" in message
    assert "Accepted publickey" not in sshd_server.log.read_text()


def test_a_host_missing_from_known_hosts_is_refused(sshd_server: SshdServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    key_line = sshd_server.known_hosts.read_text().split(" ", 1)[1]
    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port + 1} {key_line}")
    with pytest.raises(SftpHostKeyError, match="is not in"):
        sshd_server.resource(known_hosts=str(known_hosts)).list_pending()


def test_a_pinned_fingerprint_is_checked(sshd_server: SshdServer, tmp_path: Path) -> None:
    (sshd_server.pending / "a.csv").write_text("id\n")
    _, wrong = other_host_key(tmp_path)

    with pytest.raises(SftpHostKeyError, match="pinned fingerprint"):
        sshd_server.resource(known_hosts=None, host_key_fingerprint=wrong).list_pending()
    pinned = sshd_server.resource(known_hosts=None, host_key_fingerprint=sshd_server.host_key_fingerprint)
    assert [f.name for f in pinned.list_pending()] == ["a.csv"]
    assert sshd_server.log.read_text().count("Accepted publickey") == 1


def test_without_a_trusted_host_key_nothing_is_accepted(sshd_server: SshdServer) -> None:
    with pytest.raises(SftpHostKeyError, match="never accepted"):
        sshd_server.resource(known_hosts=None, host_key_fingerprint=None).list_pending()


def test_a_refused_login_is_unavailable_and_quotes_no_password(sshd_server: SshdServer) -> None:
    password = "s3cret-Passw0rd"
    with pytest.raises(SftpUnavailable, match="refused the login") as refused:
        sshd_server.resource(key_file=None, password=password).list_pending()
    assert password not in str(refused.value)


def test_a_stopped_server_is_unavailable_quickly_and_back_after_start(sshd_server: SshdServer) -> None:
    resource = sshd_server.resource()
    sshd_server.stop()
    started = time.monotonic()
    with pytest.raises(SftpUnavailable, match=f"127.0.0.1:{sshd_server.port}"):
        resource.list_pending()
    assert time.monotonic() - started < 2

    sshd_server.start()
    assert resource.list_pending() == []


def test_a_silent_server_times_out_at_connect() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        resource = SftpServer(host="127.0.0.1", port=silent.getsockname()[1], user="u", password="p",
                              host_key_fingerprint="SHA256:x", connect_timeout_seconds=1)
        started = time.monotonic()
        with pytest.raises(SftpUnavailable):
            resource.list_pending()
    assert time.monotonic() - started < 5


def test_a_connection_cut_mid_download_leaves_nothing_and_a_retry_lands_the_file(
    sshd_server: SshdServer, tmp_path: Path,
) -> None:
    source = sshd_server.pending / ROSTER
    source.write_bytes(os.urandom(20 * 1024 * 1024))
    digest = sha256(source)
    dest = tmp_path / "roster.csv"
    resource = sshd_server.resource()

    error = download_interrupted(resource, ROSTER, dest, sshd_server.stop)

    assert isinstance(error, SftpUnavailable)
    assert list(tmp_path.glob("roster*")) == []
    assert sha256(source) == digest
    sshd_server.start()
    assert resource.download(ROSTER, dest) == (20 * 1024 * 1024, digest)
    assert sha256(dest) == digest


def test_a_file_still_being_written_is_not_landed(sshd_server: SshdServer, tmp_path: Path) -> None:
    source = sshd_server.pending / ROSTER
    source.write_bytes(os.urandom(20 * 1024 * 1024))

    def append() -> None:
        with source.open("ab") as handle:
            handle.write(b"more rows\n")

    error = download_interrupted(sshd_server.resource(), ROSTER, tmp_path / "roster.csv", append)

    assert isinstance(error, SftpError) and "changed during the transfer" in str(error)
    assert list(tmp_path.glob("roster*")) == []


def test_a_server_hung_mid_download_fails_within_the_io_timeout(
    sshd_server: SshdServer, tmp_path: Path,
) -> None:
    source = sshd_server.pending / ROSTER
    source.write_bytes(os.urandom(20 * 1024 * 1024))
    dest = tmp_path / "roster.csv"
    resource = sshd_server.resource(io_timeout_seconds=1)
    paused: list[float] = []

    def hang() -> None:
        sshd_server.pause()
        paused.append(time.monotonic())

    error = download_interrupted(resource, ROSTER, dest, hang)

    assert isinstance(error, SftpUnavailable)
    assert time.monotonic() - paused[0] < 5
    assert list(tmp_path.glob("roster*")) == []


def test_the_resource_comes_from_the_environment_only_when_asked(
    sshd_server: SshdServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in sshd_server.env():
        monkeypatch.delenv(name, raising=False)
    assert sftp_server_from_env() is None

    for name, value in sshd_server.env().items():
        monkeypatch.setenv(name, value)
    resource = sftp_server_from_env()
    assert resource is not None
    with pytest.raises(SftpError, match="unresolved"):
        resource.list_pending()
    (sshd_server.pending / "a.csv").write_text("id\n")
    assert [f.name for f in resource.process_config_and_initialize().list_pending()] == ["a.csv"]
