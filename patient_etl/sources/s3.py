"""An S3-compatible object store as a source: objects under a pending prefix, results under another.

boto3 is the client: the reference S3 implementation, maintained by AWS, with the standard credential
chain (AWS_* variables, profiles, instance and task roles), a streaming `get_object` body, and the
conditional requests this needs (`IfMatch` to read and delete only the registered version,
`IfNoneMatch='*'` so a results object is never overwritten). It is imported inside the methods, so
loading the code location does not pay for it.

An object is the version registered by its ETag and size: landing reads it with `IfMatch`, the
re-check compares its ETag and size, and retiring deletes it with `IfMatch`, so an object replaced
by the partner meanwhile is never lost: it stays pending as a new version.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from patient_etl.batches import Home, SourceFile
from patient_etl.sources.base import (
    CHUNK_BYTES,
    DONE_SUFFIX,
    MAX_NAME_ATTEMPTS,
    Pending,
    Source,
    SourceChanged,
    SourceUnavailable,
    has_control_characters,
    is_candidate,
    numbered,
    refused_item,
    write_streamed,
)

AFTER_LANDING = ("archive", "remove")
# S3 answers a failed `If-Match`/`If-None-Match` with 412; a concurrent conditional write with 409.
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
MISSING = ("NoSuchKey", "404", "NotFound")


class ObjectStore(Source):
    """An S3 bucket (or an S3-compatible store at `endpoint_url`) with pending, results and archive
    prefixes. Credentials come from the standard AWS chain, never from these settings."""

    kind = "s3"
    title = "object store"
    delivers = True

    bucket: str | None = None
    pending_prefix: str = "pending/"
    results_prefix: str = "results/"
    archive_prefix: str = "processed/"
    endpoint_url: str | None = None
    after_landing: str = "archive"
    connect_timeout_seconds: float = 10
    io_timeout_seconds: float = 60

    def not_configured(self) -> str | None:
        return None if self.bucket else "the object store is not configured (PATIENT_ETL_S3_BUCKET)"

    def list_pending(self, home: Home) -> list[Pending]:
        found, markers = [], set()
        try:
            pages = self._client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.pending_prefix, Delimiter="/")
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.pending_prefix):]
                    if name.endswith(DONE_SUFFIX):
                        markers.add(name[: -len(DONE_SUFFIX)])
                    if name and is_candidate(name):
                        found.append(item | {"Name": name})
        except Exception as exc:
            raise SourceUnavailable(self._describe(exc)) from exc
        pending = []
        for item in found:
            name, size, etag = item["Name"], item["Size"], item["ETag"]
            modified = item["LastModified"].timestamp()
            if has_control_characters(name):
                pending.append(refused_item(name, size, modified))
                continue
            file = SourceFile(name, item["Key"], size, int(modified * 1e9), etag=etag)
            pending.append(Pending(name, (file,), f"{name}|{size}|{etag}", (size, etag), modified,
                                   marked=name in markers))
        return pending

    def land(self, file: SourceFile, dest: Path) -> tuple[int, str]:
        from botocore.exceptions import ClientError

        try:
            body = self._client().get_object(Bucket=self.bucket, Key=file.location, IfMatch=file.etag)["Body"]
        except ClientError as exc:
            if _code(exc) in CONDITION_FAILED + MISSING:
                raise SourceChanged(f"object {file.name!r} is not the version that was registered") from exc
            raise
        with body:
            return write_streamed(body.iter_chunks(CHUNK_BYTES), dest, expected_size=file.size)

    def unchanged(self, file: SourceFile) -> bool:
        now = self._head(file.location)
        return now is not None and (now["ContentLength"], now["ETag"]) == (file.size, file.etag)

    def retire(self, home: Home, file: SourceFile) -> None:
        from botocore.exceptions import ClientError

        if self.after_landing not in AFTER_LANDING:
            raise ValueError(f"after_landing must be one of {AFTER_LANDING}, not {self.after_landing!r}")
        client = self._client()
        if self._head(file.location) is None:
            return  # retired by an earlier attempt that died before recording it
        if self.after_landing == "archive":
            target = self._free_key(self.archive_prefix, file.name, _archive_candidate)
            client.copy_object(Bucket=self.bucket, Key=target, CopySourceIfMatch=file.etag,
                               CopySource={"Bucket": self.bucket, "Key": file.location})
        try:
            client.delete_object(Bucket=self.bucket, Key=file.location, IfMatch=file.etag)
        except ClientError as exc:
            if _code(exc) not in CONDITION_FAILED + MISSING:
                raise  # a new version under the same key stays pending
        client.delete_object(Bucket=self.bucket, Key=file.location + DONE_SUFFIX)

    def deliver(self, local: Path, name: str) -> str:
        """Put the results object under the results prefix; a taken name moves on to `-2`, `-3`..."""
        from botocore.exceptions import ClientError

        client = self._client()
        for attempt in range(1, MAX_NAME_ATTEMPTS + 1):
            candidate = numbered(name, attempt)
            try:
                with local.open("rb") as body:
                    client.put_object(Bucket=self.bucket, Key=self.results_prefix + candidate, Body=body,
                                      IfNoneMatch="*", ContentType="text/csv")
                return candidate
            except ClientError as exc:
                if _code(exc) not in CONDITION_FAILED:
                    raise
        raise RuntimeError(f"no free results name for {name!r} after {MAX_NAME_ATTEMPTS} attempts")

    def _client(self):
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=self.connect_timeout_seconds, read_timeout=self.io_timeout_seconds,
                        retries={"max_attempts": 3, "mode": "standard"})
        return boto3.client("s3", endpoint_url=self.endpoint_url or None, config=config)

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self._client().head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in MISSING:
                return None
            raise

    def _free_key(self, prefix: str, name: str, candidate) -> str:
        # CopyObject has no "only if absent" condition we can rely on across S3-compatible stores, so
        # the archive name is checked first; the archive is ours, no partner writes into it.
        for attempt in range(1, MAX_NAME_ATTEMPTS + 1):
            key = prefix + candidate(name, attempt)
            if self._head(key) is None:
                return key
        raise RuntimeError(f"no free archive name for {name!r} after {MAX_NAME_ATTEMPTS} attempts")

    def _describe(self, exc: BaseException) -> str:
        where = f"bucket {self.bucket!r}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        code = _code(exc) if hasattr(exc, "response") else type(exc).__name__
        return f"cannot list {self.pending_prefix!r} in {where}: {code}"


def _code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _archive_candidate(name: str, attempt: int) -> str:
    stem, ext = posixpath.splitext(name)
    return name if attempt == 1 else f"{stem} ({attempt}){ext}"
