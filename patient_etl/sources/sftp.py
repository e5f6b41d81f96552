"""The partners' SFTP server: list the pending folder, land files, retire them, publish results.

Every method opens its own connection and closes it, so a sensor tick or a step never holds a
session open. The host key is always verified (known_hosts file and/or a pinned SHA256 fingerprint)
before any credential is sent; there is no trust-on-first-use. Remote names are untrusted: each one
is checked by `safe_remote_name` and joined to a configured folder, never used as a path.

Connection problems (refused, timed out, dropped, login refused) raise `SftpUnavailable`, which is
worth retrying; an untrusted host key raises `SftpHostKeyError`, which is not. Errors the server
reports about a file (gone, permission denied) surface as paramiko raises them (`OSError`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
import socket
import stat
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from patient_etl.batches import Home, SourceFile
from patient_etl.sources.base import (
    DONE_SUFFIX,
    Pending,
    Source,
    SourceUnavailable,
    is_candidate,
    refused_item,
)
from patient_etl.sources.base import SourceChanged as _SourceChanged

if TYPE_CHECKING:  # paramiko is imported by the methods that connect: loading the code location skips it
    import paramiko

REQUEST_BYTES = 32 * 1024
WINDOW_BYTES = 256 * REQUEST_BYTES
PARTIAL_SUFFIXES = (".part", ".tmp", ".filepart", ".partial", ".crdownload")
AFTER_LANDING = ("archive", "remove")
MAX_NAME_ATTEMPTS = 1000
# A known_hosts `ssh-rsa` entry verifies a key negotiated with any of these signature algorithms.
HOST_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}

ENV_PREFIX = "PATIENT_ETL_SFTP_"
ENV_FIELDS = {
    "host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD", "key_file": "KEY_FILE",
    "known_hosts": "KNOWN_HOSTS", "host_key_fingerprint": "HOST_KEY_FINGERPRINT",
    "pending_folder": "PENDING_FOLDER", "results_folder": "RESULTS_FOLDER",
    "archive_folder": "ARCHIVE_FOLDER", "after_landing": "AFTER_LANDING",
}


class SftpError(Exception):
    """An SFTP problem, described without secrets."""


class SftpUnavailable(SftpError):
    """The server could not be reached, dropped the connection, timed out or refused the login."""


class SftpChanged(SftpError, _SourceChanged):
    """The pending file is not the version that was registered, or changed while it was read."""


class SftpHostKeyError(SftpError):
    """The server's host key is unknown or does not match the trusted one."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime: int


def safe_remote_name(name: str) -> str:
    """`name` itself if it is a plain file name, else SftpError (no paths, no control characters)."""
    if not name or name in (".", ".."):
        raise SftpError(f"refusing remote file name {name!r}: not a file name")
    if "/" in name or "\\" in name:
        raise SftpError(f"refusing remote file name {name!r}: it contains a path separator")
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise SftpError(f"refusing remote file name {name!r}: it contains a control character")
    return name


def is_pending_candidate(name: str) -> bool:
    """False for hidden files and the names clients use while a transfer is still running."""
    return not name.startswith(".") and not name.lower().endswith(PARTIAL_SUFFIXES)


class SftpServer(dg.ConfigurableResource):
    """A partner SFTP server with a drop folder, a results folder and an archive folder.

    Trust is `known_hosts` (a file, `[host]:port` entries as ssh-keyscan writes them) and/or
    `host_key_fingerprint` (`SHA256:...`); when both are set, the key must match both.
    """

    host: str
    port: int = 22
    user: str
    password: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    host_key_fingerprint: str | None = None
    pending_folder: str = "Pending Patient Imports"
    results_folder: str = "Patient Import Results"
    archive_folder: str = "Processed Patient Imports"
    after_landing: str = "archive"
    connect_timeout_seconds: float = 10
    io_timeout_seconds: float = 30

    def list_pending(self) -> list[RemoteFile]:
        """Regular files in the pending folder that are not hidden or still being uploaded, by name."""
        with self._connect() as sftp:
            try:
                entries = sftp.listdir_attr(self.pending_folder)
            except FileNotFoundError as exc:
                missing = f"pending folder {self.pending_folder!r} does not exist on {self._where}"
                raise SftpError(missing) from exc
            except UnicodeDecodeError as exc:
                # paramiko decodes every name as UTF-8 and gives up on the whole listing otherwise.
                raise SftpError(
                    f"a file name in {self.pending_folder!r} on {self._where} is not UTF-8; "
                    "rename that file on the server"
                ) from exc
        files = [
            RemoteFile(entry.filename, entry.st_size or 0, int(entry.st_mtime or 0))
            for entry in entries
            if entry.st_mode is not None and stat.S_ISREG(entry.st_mode)
            and is_pending_candidate(entry.filename) and "/" not in entry.filename
        ]
        return sorted(files, key=lambda remote: remote.name)

    def download(self, name: str, dest: Path, expected: tuple[int, int] | None = None) -> tuple[int, str]:
        """Stream a pending file to `dest` (atomically, fsynced); return its size and sha256 hex.

        The size and mtime seen before the transfer must still hold after it (and be `expected`, the
        registered version, when given), and the bytes received must add up to that size: a file the
        partner is still writing fails with SftpChanged instead of landing cut.
        """
        source = _join(self.pending_folder, name)
        part = dest.with_name(dest.name + ".part")
        try:
            with self._connect() as sftp:
                before = sftp.lstat(source)
                if before.st_mode is None or not stat.S_ISREG(before.st_mode):
                    raise SftpError(f"{name!r} in {self.pending_folder!r} is not a regular file")
                if expected is not None and (before.st_size, before.st_mtime) != tuple(expected):
                    raise SftpChanged(f"{name!r} is not the version that was registered "
                                      f"({expected[0]} bytes then, {before.st_size} now)")
                size, digest = _stream(sftp, source, part, before)
            os.replace(part, dest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        _fsync_folder(dest.parent)
        return size, digest

    def stat_pending(self, name: str) -> RemoteFile | None:
        """The pending file's size and mtime now, or None when it is gone."""
        with self._connect() as sftp:
            try:
                attrs = sftp.lstat(_join(self.pending_folder, name))
            except FileNotFoundError:
                return None
        return RemoteFile(name, attrs.st_size or 0, int(attrs.st_mtime or 0))

    def remove_pending(self, name: str) -> None:
        """Delete a file from the pending folder (a completion marker); gone already is fine."""
        with self._connect() as sftp, suppress(FileNotFoundError):
            sftp.remove(_join(self.pending_folder, name))

    def retire(self, name: str) -> None:
        """Move a landed file out of the pending folder: into the archive folder, or delete it."""
        source = _join(self.pending_folder, name)
        if self.after_landing not in AFTER_LANDING:
            raise SftpError(f"after_landing must be one of {AFTER_LANDING}, not {self.after_landing!r}")
        with self._connect() as sftp:
            if self.after_landing == "remove":
                sftp.remove(source)
                return
            _ensure_folder(sftp, self.archive_folder)
            _rename_to_free_name(sftp, source, self.archive_folder, name, _archive_candidate)

    def upload_result(self, local: Path, remote_name: str) -> str:
        """Publish `local` into the results folder without ever overwriting; return the name used."""
        safe_remote_name(remote_name)
        temporary = _join(self.results_folder, f".{remote_name}.uploading")
        with self._connect() as sftp:
            _ensure_folder(sftp, self.results_folder)
            try:
                with local.open("rb") as handle:
                    sftp.putfo(handle, temporary, file_size=local.stat().st_size, confirm=True)
                return _rename_to_free_name(
                    sftp, temporary, self.results_folder, remote_name, _result_candidate,
                )
            except BaseException:
                with suppress(Exception):
                    sftp.remove(temporary)
                raise

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    @contextmanager
    def _connect(self) -> Iterator[paramiko.SFTPClient]:
        import paramiko

        self._require_resolved()
        known = self._trusted_keys()
        key = self._client_key()
        transport = self._open_transport(known, key)
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise SftpUnavailable(f"SFTP server {self._where} did not open an SFTP session")
            # A hung server must fail the tick, not block it: every read waits at most this long.
            sftp.get_channel().settimeout(self.io_timeout_seconds)
            with sftp:
                yield sftp
        except SftpError:
            raise
        except (EOFError, TimeoutError, ConnectionError, paramiko.SSHException) as exc:
            raise self._lost(exc) from exc
        except OSError as exc:
            if transport.is_active():
                raise
            raise self._lost(exc) from exc
        finally:
            transport.close()

    def _lost(self, exc: BaseException) -> SftpUnavailable:
        return SftpUnavailable(f"lost the connection to SFTP server {self._where}: {_describe(exc)}")

    def _require_resolved(self) -> None:
        unresolved = [name for name in type(self).model_fields if isinstance(getattr(self, name), dg.EnvVar)]
        if unresolved:
            raise SftpError(
                f"SftpServer settings {unresolved} are unresolved environment variables: use the resource "
                "through Dagster (or call process_config_and_initialize()) before connecting"
            )

    def _trusted_keys(self) -> paramiko.HostKeys | None:
        import paramiko

        if not self.known_hosts and not self.host_key_fingerprint:
            raise SftpHostKeyError(
                f"no trusted host key for SFTP server {self._where}: set known_hosts "
                f"({ENV_PREFIX}KNOWN_HOSTS) or host_key_fingerprint ({ENV_PREFIX}HOST_KEY_FINGERPRINT); "
                "unknown host keys are never accepted"
            )
        if self.host_key_fingerprint and not self.host_key_fingerprint.strip().startswith("SHA256:"):
            raise SftpError("host_key_fingerprint must be the SHA256:... form that `ssh-keygen -lf` prints")
        if not self.known_hosts:
            return None
        try:
            return paramiko.HostKeys(self.known_hosts)
        except OSError as exc:
            raise SftpError(f"cannot read known_hosts file {self.known_hosts}: {_describe(exc)}") from exc

    def _client_key(self) -> paramiko.PKey | None:
        import paramiko

        if not self.key_file:
            return None
        try:
            return paramiko.PKey.from_path(self.key_file)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise SftpError(f"cannot load SFTP key file {self.key_file}: {type(exc).__name__}") from exc

    def _open_transport(
        self, known: paramiko.HostKeys | None, key: paramiko.PKey | None,
    ) -> paramiko.Transport:
        import paramiko

        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_seconds)
        except OSError as exc:
            raise SftpUnavailable(f"cannot connect to SFTP server {self._where}: {_describe(exc)}") from exc
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = self.connect_timeout_seconds
            transport.handshake_timeout = self.connect_timeout_seconds
            transport.auth_timeout = self.io_timeout_seconds
            transport.channel_timeout = self.io_timeout_seconds
            entries = known.lookup(self._host_key_name) if known is not None else None
            if entries:
                _prefer_key_types(transport, list(entries.keys()))
            transport.start_client(timeout=self.connect_timeout_seconds)
            self._verify_host_key(transport.get_remote_server_key(), entries, known is not None)
            self._authenticate(transport, key)
        except SftpError:
            transport.close()
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport.close()
            raise SftpUnavailable(f"cannot open an SSH session with {self._where}: {_describe(exc)}") from exc
        return transport

    @property
    def _host_key_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _verify_host_key(self, presented: paramiko.PKey, entries, use_known_hosts: bool) -> None:
        problems = []
        if use_known_hosts:
            if not entries:
                problems.append(f"{self._host_key_name} is not in {self.known_hosts}")
            elif entries.get(presented.get_name()) != presented:
                problems.append(f"it does not match the key for {self._host_key_name} in {self.known_hosts}")
        pinned = self.host_key_fingerprint
        if pinned and not _same_fingerprint(presented.fingerprint, pinned):
            problems.append(f"it does not match the pinned fingerprint {self.host_key_fingerprint.strip()}")
        if problems:
            raise SftpHostKeyError(
                f"refusing SFTP server {self._where}: it presented the {presented.get_name()} host key "
                f"{presented.fingerprint}, and {'; '.join(problems)}. If this is the right server (ask its "
                f"administrator when a key changed), add it to known_hosts (ssh-keyscan -p {self.port} "
                f"{self.host}) or set {ENV_PREFIX}HOST_KEY_FINGERPRINT={presented.fingerprint}"
            )

    def _authenticate(self, transport: paramiko.Transport, key: paramiko.PKey | None) -> None:
        import paramiko

        if key is None and self.password is None:
            raise SftpError(f"no credentials for SFTP server {self._where}: set key_file or password")
        try:
            if key is not None:
                try:
                    transport.auth_publickey(self.user, key)
                except paramiko.AuthenticationException:
                    if self.password is None:
                        raise
            if not transport.is_authenticated() and self.password is not None:
                transport.auth_password(self.user, self.password)
        except paramiko.AuthenticationException as exc:
            raise SftpUnavailable(
                f"SFTP server {self._where} refused the login of {self.user!r}: {exc}"
            ) from exc
        if not transport.is_authenticated():
            raise SftpUnavailable(f"SFTP server {self._where} asks {self.user!r} for more authentication")


def sftp_server_from_env(resolve: bool = False) -> SftpServer | None:
    """The resource from PATIENT_ETL_SFTP_* (as `dg.EnvVar`s, resolved by Dagster; or read now with
    `resolve`, for the CLI); None without a host."""
    if not os.environ.get(ENV_PREFIX + "HOST"):
        return None
    settings = {}
    for field_name, suffix in ENV_FIELDS.items():
        variable = ENV_PREFIX + suffix
        if os.environ.get(variable):
            if resolve:
                settings[field_name] = int(os.environ[variable]) if field_name == "port" else os.environ[variable]
            else:
                settings[field_name] = (dg.EnvVar.int if field_name == "port" else dg.EnvVar)(variable)
    return SftpServer(**settings)


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, safe_remote_name(name)) if folder else safe_remote_name(name)


def _is_safe(name: str) -> bool:
    try:
        safe_remote_name(name)
    except SftpError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _same_fingerprint(presented: str, pinned: str) -> bool:
    def normal(value: str) -> bytes:
        return value.strip().removeprefix("SHA256:").rstrip("=").encode()

    return hmac.compare_digest(normal(presented), normal(pinned))


def _prefer_key_types(transport: paramiko.Transport, known_types: list[str]) -> None:
    """Negotiate a host key type that known_hosts can verify, as OpenSSH does."""
    options = transport.get_security_options()
    wanted = [alg for name in known_types for alg in HOST_KEY_ALGORITHMS.get(name, (name,))]
    first = [alg for alg in wanted if alg in options.key_types]
    options.key_types = first + [alg for alg in options.key_types if alg not in first]


def _stream(
    sftp: paramiko.SFTPClient, source: str, part: Path, before: paramiko.SFTPAttributes,
) -> tuple[int, str]:
    """Copy `source` to `part`, hashing as it arrives; fsynced, and only if it did not change meanwhile."""
    size = before.st_size or 0
    digest = hashlib.sha256()
    total = 0
    with sftp.open(source, "rb") as remote, part.open("wb") as local:
        for start in range(0, size, WINDOW_BYTES):
            # Pipelined reads, one window in flight: fast on slow links, bounded memory, and paramiko's
            # request thread ends with each window instead of outliving a dropped connection.
            end = min(start + WINDOW_BYTES, size)
            requests = [(at, min(REQUEST_BYTES, end - at)) for at in range(start, end, REQUEST_BYTES)]
            for chunk in remote.readv(requests):
                digest.update(chunk)
                local.write(chunk)
                total += len(chunk)
        after = remote.stat()
        if total != size or (after.st_size, after.st_mtime) != (size, before.st_mtime):
            raise SftpChanged(
                f"{posixpath.basename(source)!r} changed during the transfer ({size} bytes before, "
                f"{total} read, {after.st_size} after); the partner may still be writing it"
            )
        local.flush()
        os.fsync(local.fileno())
    return total, digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_folder(sftp: paramiko.SFTPClient, folder: str) -> None:
    try:
        attrs = sftp.stat(folder)
    except FileNotFoundError:
        with suppress(OSError):
            sftp.mkdir(folder)
        attrs = sftp.stat(folder)
    if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
        raise SftpError(f"{folder!r} on the SFTP server is not a folder")


def _archive_candidate(name: str, attempt: int) -> str:
    stem, ext = posixpath.splitext(name)
    return name if attempt == 1 else f"{stem} ({attempt}){ext}"


def _result_candidate(name: str, attempt: int) -> str:
    stem, ext = posixpath.splitext(name)
    return name if attempt == 1 else f"{stem}-{attempt}{ext}"


def _rename_to_free_name(
    sftp: paramiko.SFTPClient, source: str, folder: str, name: str, candidate: Callable[[str, int], str],
) -> str:
    """Rename `source` into `folder` under the first free candidate name; never replaces a file.

    Plain SFTP rename fails when the target exists on OpenSSH (posix_rename would replace it), so a
    concurrent writer taking the same name makes us move on to the next candidate instead of losing data.
    """
    for attempt in range(1, MAX_NAME_ATTEMPTS + 1):
        target = candidate(name, attempt)
        try:
            sftp.rename(source, _join(folder, target))
            return target
        except OSError:
            if not _exists(sftp, _join(folder, target)):
                raise
    raise SftpError(f"no free name for {name!r} in {folder!r} after {MAX_NAME_ATTEMPTS} attempts")


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.lstat(path)
    except FileNotFoundError:
        return False
    return True


class PartnerSftp(Source):
    """The partners' SFTP server as a source; `server` is None when PATIENT_ETL_SFTP_HOST is not set."""

    kind = "sftp"
    title = "SFTP server"
    delivers = True

    server: SftpServer | None = None

    def not_configured(self) -> str | None:
        return None if self.server is not None else "SFTP is not configured (PATIENT_ETL_SFTP_HOST)"

    def require(self) -> SftpServer:
        if self.server is None:
            raise dg.Failure(description="this batch came from SFTP, but PATIENT_ETL_SFTP_HOST is not set",
                             allow_retries=False)
        return self.server

    def list_pending(self, home: Home) -> list[Pending]:
        try:
            remote = self.require().list_pending()
        except SftpError as exc:
            raise SourceUnavailable(str(exc)) from exc
        names = {r.name for r in remote}
        return [
            refused_item(r.name, r.size, float(r.mtime)) if not _is_safe(r.name) else
            Pending(r.name, (SourceFile(r.name, r.name, r.size, r.mtime * 10**9),), f"{r.name}|{r.size}|{r.mtime}",
                    (r.size, r.mtime), float(r.mtime), marked=r.name + DONE_SUFFIX in names)
            for r in remote if is_candidate(r.name)
        ]

    def land(self, file: SourceFile, dest: Path) -> tuple[int, str]:
        return self.require().download(file.location, dest, expected=(file.size, file.mtime_ns // 10**9))

    def unchanged(self, file: SourceFile) -> bool:
        now = self.require().stat_pending(file.location)
        return now is not None and (now.size, now.mtime) == (file.size, file.mtime_ns // 10**9)

    def retire(self, home: Home, file: SourceFile) -> None:
        server = self.require()
        # FileNotFoundError: retired by an earlier attempt that died before recording it.
        with suppress(FileNotFoundError):
            server.retire(file.location)
        server.remove_pending(file.location + DONE_SUFFIX)

    def deliver(self, local: Path, name: str) -> str:
        return self.require().upload_result(local, name)
