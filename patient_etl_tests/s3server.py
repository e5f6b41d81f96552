"""A real S3-compatible server for object-store tests: moto's standalone server on a loopback port.

One server per test session (it takes a few seconds to start), a fresh bucket per test. The test's
environment carries dummy AWS credentials and a region, as a deployment's would carry real ones, so
boto3 finds them through its standard chain; nothing is mocked in-process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from patient_etl.sources.s3 import ObjectStore

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 30.0
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def resource(self, **overrides) -> ObjectStore:
        return ObjectStore(**{"bucket": self.bucket, "endpoint_url": self.endpoint_url, **overrides})

    def env(self) -> dict[str, str]:
        return {"PATIENT_ETL_S3_BUCKET": self.bucket, "PATIENT_ETL_S3_ENDPOINT_URL": self.endpoint_url}

    def put(self, key: str, body: bytes) -> dict:
        return self.client().put_object(Bucket=self.bucket, Key=key, Body=body)

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1, for the whole session."""
    port = _free_port()
    log = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto.server exited with {process.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto.server did not listen on {HOST}:{port}") from None
                time.sleep(0.1)
        yield f"http://{HOST}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_server(s3_endpoint: str, monkeypatch) -> S3Server:
    """A fresh bucket on the session's S3 server, with AWS credentials in this test's environment."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = S3Server(s3_endpoint, f"partner-{uuid.uuid4().hex[:12]}")
    server.client().create_bucket(Bucket=server.bucket)
    return server
