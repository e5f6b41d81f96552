"""The webhook sent when a batch finishes (Finished, Finished with Errors or Failed).

The payload carries the batch ID, status, counts and the results file's name: never row values.
With a secret, the body is signed: `X-Patient-ETL-Signature: sha256=<hex HMAC of the body>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request

from patient_etl.batches import Batch

TIMEOUT_SECONDS = 10


def payload(batch: Batch) -> dict:
    return {
        "batch_id": batch.batch_id,
        "status": batch.status,
        "counts": batch.counts,
        "results_file": batch.results_file.rsplit("/", 1)[-1] if batch.results_file else None,
        "reason": batch.reason,
        "source": batch.source,
    }


def send(url: str, batch: Batch, secret: str | None = None) -> str | None:
    """POST the batch's outcome; return None when delivered, else why not (for a warning)."""
    body = json.dumps(payload(batch), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "patient-etl"}
    if secret:
        headers["X-Patient-ETL-Signature"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return type(exc).__name__
