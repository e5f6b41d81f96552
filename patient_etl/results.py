"""Result logs: the results CSV per batch, per source file the errored rows to fix, and the batch's
row in the target's batch log. Shared by publish and by the failure path (a batch that fails at any
stage still gets its results file).

Names are dated and never reused: a file is written under a temporary name and hard-linked into
place, which fails rather than overwrite. Cells a spreadsheet would run as a formula get a leading
apostrophe in CSV and are written as text cells in the xlsx workbook.

The errors file echoes the partner's own cells unmasked (SSN included): it goes back only to the
partner who sent them, like the results file, and a masked echo would make a valid SSN unfixable
(re-uploading `***-**-6703` fails) and an invalid one look valid (`12345` as `***-**-2345`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from patient_etl.batches import Batch
from patient_etl.duck import in_memory, sql_literal
from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import is_messages_column

if TYPE_CHECKING:
    import threading

RESULT_COLUMNS = ("row_number", "entity", "external_id", "status", "messages")
STATUSES = ("Created", "Updated", "Unchanged", "Errored")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def file_label(dry_run: bool, held: bool = False) -> str:
    """What a batch's files carry before their kind: `_dry-run`, `_preview` (held for review) or nothing."""
    return "_dry-run" if dry_run else "_preview" if held else ""


def results_base(batch: Batch, dry_run: bool = False, held: bool = False) -> str:
    """`YYYY-MM-DD_<file>[_dry-run|_preview]_results`: dated by receipt, named after the partner's file."""
    return f"{batch.received_on.isoformat()}_{safe_stem(batch.display_name)}{file_label(dry_run, held)}_results"


def batch_row(batch: Batch, status: str, counts: dict[str, int], results_file: str | None,
              reason: str | None = None, run_id: str | None = None) -> dict:
    """The batch's row in the target's `import_batch` log, and its run's in `import_run`."""
    now = dt.datetime.now(dt.UTC).isoformat()  # microseconds: a batch's runs are ordered by it
    return {
        "batch_id": batch.batch_id, "source": batch.source, "file_names": json.dumps([f.name for f in batch.files]),
        "sha256": json.dumps({f["name"]: f["sha256"] for f in batch.landed}) if batch.landed else None,
        "status": status, "reason": reason, "rows_total": sum(counts.values()),
        "created": counts.get("Created", 0), "updated": counts.get("Updated", 0),
        "unchanged": counts.get("Unchanged", 0), "errored": counts.get("Errored", 0),
        "results_file": results_file, "registered_at": batch.registered_at, "finished_at": now,
        "run_id": run_id, "status_at": now,
        "held_reason": batch.review.get("held"), "decided_by": batch.review.get("decided_by"),
        "decided_at": batch.review.get("decided_at"),
    }


def status_row(batch: Batch, status: str, run_id: str | None = None) -> dict:
    """The batch's row in `import_batch` at a stage of its lifecycle (no counts: they stay its last run's)."""
    return {
        "batch_id": batch.batch_id, "source": batch.source, "file_names": json.dumps([f.name for f in batch.files]),
        "sha256": json.dumps({f["name"]: f["sha256"] for f in batch.landed}) if batch.landed else None,
        "status": status, "registered_at": batch.registered_at, "run_id": run_id, "status_at": utc_now(),
    }


def write_failed(folder: Path, batch: Batch, reason: str, scope: str = "file") -> Path:
    """A failed batch's results file: one line carrying the reason (`error: <scope>: <reason>`)."""
    tmp, final = claim_name(folder, results_base(batch))
    duck = in_memory()
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


def neutral_header(header: str) -> str:
    """A column name as the errors file writes it: the partner's header, unless a spreadsheet would run
    it as a formula (then with a leading apostrophe, as cells get)."""
    return "'" + header if header[:1] in FORMULA_STARTS else header


def safe_stem(name: str) -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem, flags=re.UNICODE).strip("._")
    return stem[:80] or "upload"


def claim_name(folder: Path, base: str, suffix: str = ".csv", part: int | None = None) -> tuple[Path, Path]:
    """(temporary path, final path) for a new file that must not overwrite anything. A process writes
    one file of each name at a time, or `part` tells apart files written together under one name."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = "" if part is None else f".{part}"
    return folder / f".{base}{suffix}{tag}.{os.getpid()}.writing", folder / f"{base}{suffix}"


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


def errors_query(raw: str, headers: list[tuple[int, str, str | None]], row_log: str, file_index: int,
                 neutralized: bool = True, entity: str | None = None, rejected: str | None = None) -> str:
    """The errored rows of one file: its own cells as sent (`c0`..), then `errors`, then `_n` (the
    row number, to order by). `rejected` holds the rows that could not be staged (of the wrong width,
    a quote out of place) with their cells as far as they were read. A messages column of a re-uploaded errors file is replaced, not echoed.
    A field whose kind says how it is echoed (SSN: kept only as a token, echoed masked) is echoed so;
    re-uploading that mask leaves the stored value as it is."""
    def cell(expr: str) -> str:
        return neutralize(expr) if neutralized else expr

    kinds = {c.name: c.field.kind for c in ENTITIES[entity].columns()} if entity in ENTITIES else {}

    def value(position: int, column: str | None) -> str:
        kind = kinds.get(column)
        return kind.echo_sql.format(v=f"x.c{position}") if kind is not None and kind.echo_sql else f"x.c{position}"

    cells = [f"{cell(value(position, column))} AS c{j}"
             for j, (position, _, column) in enumerate(echoed_headers(headers))]
    rows = raw
    if rejected:
        names = ", ".join(["row_number", *(f"c{position}" for position, _, _ in headers)])
        rows = f"(SELECT {names} FROM {raw} UNION ALL SELECT {names} FROM {rejected})"
    return f"""
        SELECT {''.join(c + ', ' for c in cells)}{cell('r.messages')} AS errors, x.row_number AS _n
        FROM {rows} x JOIN {row_log} r ON r.file_index = {file_index} AND r.row_number = x.row_number
        WHERE r.status = 'Errored'
    """


def write_errors_csv(duck: duckdb.DuckDBPyConnection, query: str, headers: list[tuple[int, str, str | None]],
                     tmp: Path) -> None:
    """The errors file: the partner's header line as sent (blank and repeated names included, which a
    column name cannot be), then the rows."""
    titles = [neutralize(sql_literal(h)) for _, h, _ in echoed_headers(headers)] + ["'errors'"]
    names = [f"c{j}" for j in range(len(titles) - 1)] + ["errors"]
    head = ", ".join(f"{t} AS {n}" for t, n in zip(titles, names, strict=True))
    duck.execute(f"""COPY (SELECT {', '.join(names)} FROM (
                              SELECT {head}, -1 AS _n UNION ALL SELECT * FROM ({query})) ORDER BY _n)
                     TO '{tmp}' (FORMAT csv, HEADER false)""")


def echoed_headers(headers: list[tuple[int, str, str | None]]) -> list[tuple[int, str, str | None]]:
    return [h for h in headers if not is_messages_column(h[1])]


_MESSAGE = re.compile(r"(?:^|; )(error|warning): ([^:;]+): ")


def error_labels(messages: str | None) -> dict[str, list[str]]:
    """`field label -> its error messages` of a row's joined messages (`error: zip: ...; warning: ...`)."""
    found: dict[str, list[str]] = {}
    if not messages:
        return found
    marks = list(_MESSAGE.finditer(messages))
    for n, mark in enumerate(marks):
        end = marks[n + 1].start() if n + 1 < len(marks) else len(messages)
        if mark.group(1) == "error":
            found.setdefault(mark.group(2), []).append(messages[mark.end():end])
    return found


class Stopped(Exception):
    """A results file left unfinished on purpose (what it was for ended first)."""


SHEET_ROWS = 1_048_576  # Excel's rows per worksheet, the header's included
# Error cells a workbook comments (every one is highlighted; its row's `errors` cell and the `errors`
# sheet name every error). xlsxwriter holds each comment until the workbook closes (~0.7-1.7 KB apiece:
# a 10M-row batch's 99,921 errored rows grew the publish by ~100 MB), each also a shape in the workbook's
# drawing part: past this many, the fill alone marks the cell.
COMMENTED_CELLS = 10_000


class _Sheets:
    """A worksheet and, past Excel's rows per sheet, its continuations (`rows`, `rows 2`, ...): a
    workbook that ran out of rows would otherwise drop the rest without a word."""

    def __init__(self, workbook, name: str, titles: list[str], bold, limit: int):
        self.workbook, self.name, self.titles, self.bold, self.limit = workbook, name, titles, bold, limit
        self.count = 0
        self._add()

    def _add(self) -> None:
        self.count += 1
        self.sheet = self.workbook.add_worksheet(self.name if self.count == 1 else f"{self.name} {self.count}")
        for j, title in enumerate(self.titles):
            if title:  # a blank header stays a blank cell
                self.sheet.write_string(0, j, title, self.bold)
        self.sheet.freeze_panes(1, 0)
        self.line = 0  # the header's

    def next_line(self):
        """The sheet the next line goes on, and its row (0-based; the header is row 0)."""
        if self.line + 1 >= self.limit:
            self._add()
        self.line += 1
        return self.sheet, self.line


def write_errors_xlsx(duck: duckdb.DuckDBPyConnection, query: str, entity: str,
                      headers: list[tuple[int, str, str | None]], tmp: Path, sheet_rows: int = SHEET_ROWS,
                      stop: threading.Event | None = None, commented_cells: int = COMMENTED_CELLS) -> None:
    """The errors file as a workbook: the partner's cells as text (no formula ever runs), each cell
    with an error filled (and, for the first `commented_cells`, commented), and a second sheet listing
    every error by row and column. More lines than a worksheet holds (`sheet_rows`) go on on `rows 2`,
    `errors 2`...; the listing then names the sheet of a row that is not on `rows`. `stop`, once set,
    ends the writing (`Stopped`)."""
    import xlsxwriter  # heavy-ish, and only needed when a file has errored rows

    labels = {c.name: c.label for c in ENTITIES[entity].columns()} if entity in ENTITIES else {}
    echoed = echoed_headers(headers)
    # xlsxwriter writes each sheet's rows, then each part of the package, to temporary files: by default
    # in the system's temporary folder, the partner's cells in clear. Here beside the workbook, in a
    # folder named for this process (batches.LEFTOVER: a killed writer's is removed at the next start).
    scratch = Path(tempfile.mkdtemp(prefix=".xlsxwriter-", suffix=f".{os.getpid()}.tmp", dir=tmp.parent))
    workbook = xlsxwriter.Workbook(str(tmp), {"constant_memory": True, "tmpdir": str(scratch),
                                              "strings_to_formulas": False, "strings_to_numbers": False,
                                              "strings_to_urls": False})
    try:
        bold = workbook.add_format({"bold": True})
        bad = workbook.add_format({"bg_color": "#FFC7CE", "font_color": "#9C0006"})
        rows = _Sheets(workbook, "rows", [header for _, header, _ in echoed] + ["errors"], bold, sheet_rows)
        listing = _Sheets(workbook, "errors", ["row", "column", "error"], bold, sheet_rows)
        result = duck.execute(f"SELECT * EXCLUDE (_n) FROM ({query}) ORDER BY _n")
        comments = 0
        while chunk := result.fetchmany(2048):
            if stop is not None and stop.is_set():
                raise Stopped("the errors workbook was not finished: its publish ended first")
            for record in chunk:
                sheet, line = rows.next_line()
                messages = record[-1]
                by_label = error_labels(messages)
                for j, (_, header, column) in enumerate(echoed):
                    value = record[j]
                    problems = by_label.get(labels.get(column or "", ""), [])
                    if problems:
                        sheet.write_string(line, j, value or "", bad)
                        if comments < commented_cells:
                            sheet.write_comment(line, j, "; ".join(problems))
                            comments += 1
                        for problem in problems:
                            errors, at = listing.next_line()
                            if rows.count == 1:
                                errors.write_number(at, 0, line + 1)
                            else:
                                errors.write_string(at, 0, f"{sheet.name}: {line + 1}")
                            errors.write_string(at, 1, header)
                            errors.write_string(at, 2, problem)
                    elif value is not None:
                        sheet.write_string(line, j, value)
                sheet.write_string(line, len(echoed), messages or "")
    finally:
        try:
            workbook.close()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
