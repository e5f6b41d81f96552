"""Result logs: the results CSV per batch, per source file the errored rows to fix, and the batch's
row in the target's batch log. Shared by publish and by the failure path (a batch that fails at any
stage still gets its results file).

Names are dated and never reused: a file is written under a temporary name and hard-linked into
place, which fails rather than overwrite. Cells a spreadsheet would run as a formula get a leading
apostrophe; a field whose kind masks it (SSN) is echoed masked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import duckdb

from patient_etl.batches import Batch
from patient_etl.entities import ENTITIES

RESULT_COLUMNS = ("row_number", "entity", "external_id", "status", "messages")
STATUSES = ("Created", "Updated", "Unchanged", "Errored")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def results_base(batch: Batch, dry_run: bool = False) -> str:
    """`YYYY-MM-DD_<file>[_dry-run]_results`: dated by receipt, named after the partner's file."""
    label = "_dry-run" if dry_run else ""
    return f"{batch.received_on.isoformat()}_{safe_stem(batch.display_name)}{label}_results"


def batch_row(batch: Batch, status: str, counts: dict[str, int], results_file: str | None,
              reason: str | None = None) -> dict:
    """The batch's row in the target's `import_batch` log."""
    return {
        "batch_id": batch.batch_id, "source": batch.source, "file_names": json.dumps([f.name for f in batch.files]),
        "sha256": json.dumps({f["name"]: f["sha256"] for f in batch.landed}) if batch.landed else None,
        "status": status, "reason": reason, "rows_total": sum(counts.values()),
        "created": counts.get("Created", 0), "updated": counts.get("Updated", 0),
        "unchanged": counts.get("Unchanged", 0), "errored": counts.get("Errored", 0),
        "results_file": results_file, "registered_at": batch.registered_at, "finished_at": utc_now(),
        "held_reason": batch.review.get("held"), "decided_by": batch.review.get("decided_by"),
        "decided_at": batch.review.get("decided_at"),
    }


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_failed(folder: Path, batch: Batch, reason: str, scope: str = "file") -> Path:
    """A failed batch's results file: one line carrying the reason (`error: <scope>: <reason>`)."""
    tmp, final = claim_name(folder, results_base(batch))
    duck = duckdb.connect()
    try:
        message = neutralize(sql_literal(f"error: {scope}: {reason}"))
        write_csv(duck, f"SELECT NULL::BIGINT AS row_number, NULL AS entity, NULL AS external_id, "
                        f"'Failed' AS status, {message} AS messages", tmp)
    finally:
        duck.close()
    return link_into_place(tmp, final)


def neutralize(expr: str) -> str:
    """Spreadsheet formula injection: `=`, `+`, `-`, `@`, tab and CR starts become text."""
    return f"CASE WHEN regexp_matches({expr}, '^[-=+@\t\r]') THEN '''' || {expr} ELSE {expr} END"


def safe_stem(name: str) -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem, flags=re.UNICODE).strip("._")
    return stem[:80] or "upload"


def claim_name(folder: Path, base: str, suffix: str = ".csv") -> tuple[Path, Path]:
    """(temporary path, final path) for a new file that must not overwrite anything."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".{base}.{os.getpid()}.writing", folder / f"{base}{suffix}"


def link_into_place(tmp: Path, final: Path) -> Path:
    """Move `tmp` to `final`, or to `final-2`, `final-3`... when the name is taken. Never overwrites."""
    n = 1
    candidate = final
    while True:
        try:
            os.link(tmp, candidate)
            break
        except FileExistsError:
            n += 1
            candidate = final.with_name(f"{final.stem}-{n}{final.suffix}")
    tmp.unlink()
    return candidate


def write_csv(duck: duckdb.DuckDBPyConnection, query: str, tmp: Path) -> None:
    duck.execute(f"COPY ({query}) TO '{tmp}' (FORMAT csv, HEADER true)")


def results_query(row_log: str, files: str, extra: tuple[str, ...] = ()) -> str:
    """`extra`: further columns of the row log, after the standard ones."""
    more = "".join(f", {neutralize('r.' + c)} AS {c}" for c in extra)
    return f"""
        SELECT r.row_number, r.entity, {neutralize('r.external_id')} AS external_id, r.status,
               {neutralize('r.messages')} AS messages, {neutralize('f.name')} AS file,
               r.changed_fields{more}
        FROM {row_log} r JOIN {files} f USING (file_index)
        ORDER BY r.file_index, r.row_number, r.entity
    """


def errors_query(raw: str, entity: str, headers: list[tuple[int, str, str | None]], row_log: str,
                 file_index: int) -> str:
    """The errored rows of one file, in its own columns plus `errors`, ready to fix and re-upload."""
    kinds = {c.name: c.field.kind for c in ENTITIES[entity].columns()} if entity in ENTITIES else {}
    cells = []
    for position, header, column in headers:
        kind = kinds.get(column)
        value = kind.echo_sql.format(v=f"c{position}") if kind is not None and kind.echo_sql else f"c{position}"
        quoted = '"' + header.replace('"', '""') + '"'
        cells.append(f"{neutralize(value)} AS {quoted}")
    return f"""
        SELECT {', '.join(cells)}, {neutralize('r.messages')} AS errors
        FROM {raw} x JOIN {row_log} r ON r.file_index = {file_index} AND r.row_number = x.row_number
        WHERE r.status = 'Errored'
        ORDER BY x.row_number
    """
