"""A partner's upload that stalls half way is never imported half: the whole file, exactly once.

A stalled client leaves a file whose size and modification time do not move. Within the quiet period
it simply waits. A stall longer than that (the worst case) gets the file registered cut; when the
upload resumes, landing finds the file is not the registered version: the batch ends Failed with
"file changed while it was being read; it will be picked up again", nothing is retired, and the
complete file becomes a new batch. Driven by real writers: the OpenSSH `sftp` client paused with
SIGSTOP mid-transfer, a local writer process paused the same way, and an S3 multipart upload.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from patient_etl.batches import Registry
from patient_etl.sources.base import CHANGED_REASON
from patient_etl.sources.resources import Sources
from patient_etl.sources.sensors import s3_sensor, sftp_sensor, upload_folder_sensor
from patient_etl.sources.sftp import PartnerSftp
from patient_etl.sources.upload_folder import UploadFolder
from patient_etl_tests.conftest import query
from patient_etl_tests.s3server import S3Server, s3_endpoint, s3_server  # noqa: F401 (fixtures)
from patient_etl_tests.sshd import SshdServer, sshd_server  # noqa: F401 (fixture)
from patient_etl_tests.test_sources import run, two_looks

ROWS = 20_000
WRITER = """
import sys, time
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as out:
    for start in range(0, len(data), 16384):
        out.write(data[start:start + 16384]); out.flush(); time.sleep(0.02)
"""


def roster_file(folder: Path) -> Path:
    path = folder / "roster.csv"
    rows = "".join(f"P{n},Ann{n},Lee,1980-01-01,F\n" for n in range(ROWS))
    path.write_text("Patient ID,First Name,Last Name,DOB,Sex\n" + rows)
    return path


def pause_mid_write(process: subprocess.Popen, target: Path, total: int) -> int:
    """SIGSTOP the writer once part of the file is there; the size it stalls at."""
    deadline = time.monotonic() + 30
    while not (target.exists() and 0 < target.stat().st_size < total // 2):
        assert process.poll() is None and time.monotonic() < deadline, "the writer was too fast to pause"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGSTOP)
    size = -1
    while size != target.stat().st_size:  # writes already in flight land, then nothing moves
        size = target.stat().st_size
        time.sleep(0.5)
    assert 0 < size < total
    return size


def stall_then_resume(instance, etl, sources_with: Callable[[int], Sources], sensor, process: subprocess.Popen,
                      target: Path, local: Path) -> None:
    """The shared story: wait within the quiet period, then a registered cut file is failed, not imported."""
    sources = sources_with(0)
    pause_mid_write(process, target, local.stat().st_size)
    try:
        waiting = two_looks(instance, etl, sources_with(3600), sensor)
        assert not waiting.run_requests, "a stall shorter than the quiet period only waits"
        # A stall longer than the quiet period: the cut file is registered...
        (cut,) = two_looks(instance, etl, sources, sensor).run_requests
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert process.wait(timeout=60) == 0, "the partner's upload completes"

    # ... and landing finds it is no longer the registered version.
    assert not run(instance, etl, sources, cut.partition_key).success
    failed = Registry(etl.home_dir()).require(cut.partition_key)
    assert (failed.status, failed.reason) == ("Failed", CHANGED_REASON) and not failed.landed
    assert target.exists(), "the file stays pending"

    (whole,) = two_looks(instance, etl, sources, sensor).run_requests
    assert run(instance, etl, sources, whole.partition_key).success
    batch = Registry(etl.home_dir()).require(whole.partition_key)
    assert batch.landed[0]["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert query(etl.target_url, "SELECT count(*) FROM member") == [(ROWS,)]
    assert query(etl.target_url, "SELECT count(*) FROM import_row") == [(ROWS,)], "imported exactly once"
    assert not target.exists()


def test_a_stalled_openssh_sftp_upload_is_imported_whole_once(instance, pg_etl, sshd_server: SshdServer,  # noqa: F811
                                                              tmp_path):
    local = roster_file(tmp_path)
    script = tmp_path / "put.sftp"
    script.write_text(f'put "{local}" "Pending Patient Imports/roster.csv"\n')
    client = subprocess.Popen(
        ["sftp", "-b", str(script), "-l", "800", "-P", str(sshd_server.port), "-i", str(sshd_server.client_key),
         "-o", f"UserKnownHostsFile={sshd_server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"{sshd_server.user}@127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def sources(quiet: int) -> Sources:
            return Sources(quiet_seconds=quiet, sftp=PartnerSftp(server=sshd_server.resource()))

        stall_then_resume(instance, pg_etl, sources, sftp_sensor, client, sshd_server.pending / "roster.csv", local)
    finally:
        if client.poll() is None:
            os.kill(client.pid, signal.SIGCONT)
            client.kill()
    assert (sshd_server.root / "Processed Patient Imports" / "roster.csv").read_bytes() == local.read_bytes()


def test_a_stalled_write_into_the_upload_folder_is_imported_whole_once(instance, pg_etl, tmp_path):
    local = roster_file(tmp_path)
    inbox = pg_etl.home_dir().inbox
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(local), str(inbox / "roster.csv")])
    try:
        def sources(quiet: int) -> Sources:
            return Sources(quiet_seconds=quiet, upload=UploadFolder())

        stall_then_resume(instance, pg_etl, sources, upload_folder_sensor, writer, inbox / "roster.csv", local)
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGCONT)
            writer.kill()


def test_an_unfinished_multipart_upload_is_not_pending(instance, etl, s3_server: S3Server, tmp_path):  # noqa: F811
    """An object store shows an object only once its upload completes: a stalled one is not there."""
    local = roster_file(tmp_path)
    client, key = s3_server.client(), "pending/roster.csv"
    upload = client.create_multipart_upload(Bucket=s3_server.bucket, Key=key)
    part = client.upload_part(Bucket=s3_server.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1,
                              Body=local.read_bytes())
    sources = Sources(quiet_seconds=0, s3=s3_server.resource())
    stalled = two_looks(instance, etl, sources, s3_sensor)
    assert not stalled.run_requests and stalled.skip_reason.skip_message.startswith("0 file(s) waiting")
    client.complete_multipart_upload(Bucket=s3_server.bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    (request,) = two_looks(instance, etl, sources, s3_sensor).run_requests
    assert run(instance, etl, sources, request.partition_key).success
    assert Registry(etl.home_dir()).require(request.partition_key).counts["Created"] == ROWS
    assert s3_server.keys("pending/") == []
