"""The webhook a partner system waits on: sent once a batch finishes or fails, signed, without PHI."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from patient_etl.resources import PatientEtl
from patient_etl_tests.conftest import write_csv


@pytest.fixture
def receiver():
    received: list[tuple[dict, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_webhook_on_finish_and_on_failure(tmp_path, home, run_import, receiver):
    url, received = receiver
    etl = PatientEtl(home=str(home), webhook_url=url, webhook_secret="s3cret")
    good = write_csv(tmp_path / "roster.csv", "id,First Name,Last Name,dob,Sex", "W1,Wilhelmina,Lee,1980-01-01,F",
                     "W2,Bob,Ray,1980-02-30,M")
    outcome = run_import(good, etl)
    bad = write_csv(tmp_path / "bad.csv", "id,First Name", "1,A")
    failed = run_import(bad, etl)
    assert len(received) == 2
    (headers, body), (_, failed_body) = received
    sent = json.loads(body)
    assert sent == {"batch_id": outcome["batch_id"], "status": "Finished with Errors",
                    "counts": {"Created": 1, "Updated": 0, "Unchanged": 0, "Errored": 1},
                    "results_file": outcome["results_file"].rsplit("/", 1)[-1], "reason": None, "source": "cli"}
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Patient-ETL-Signature"] == expected
    assert json.loads(failed_body)["status"] == "Failed" and failed["batch_id"] in failed_body.decode()
    assert b"Wilhelmina" not in body and b"1980" not in body


def test_undeliverable_webhook_does_not_fail_the_batch(tmp_path, home, run_import):
    etl = PatientEtl(home=str(home), webhook_url="http://127.0.0.1:9/nowhere")
    path = write_csv(tmp_path / "roster.csv", "id,First Name,Last Name,dob,Sex", "1,A,B,1980-01-01,F")
    assert run_import(path, etl)["status"] == "Finished"
