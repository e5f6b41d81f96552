"""Result files for partners: the results CSV per batch and, per source file, the errored rows to fix.

Names are dated and never reused: a file is written under a temporary name and hard-linked into
place, which fails rather than overwrite. Cells a spreadsheet would run as a formula get a leading
apostrophe; SSNs are echoed masked to their last four.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb

RESULT_COLUMNS = ("row_number", "entity", "external_id", "status", "messages")


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


def results_query(row_log: str, files: str) -> str:
    return f"""
        SELECT r.row_number, r.entity, {neutralize('r.external_id')} AS external_id, r.status,
               {neutralize('r.messages')} AS messages, {neutralize('f.name')} AS file,
               r.changed_fields
        FROM {row_log} r JOIN {files} f USING (file_index)
        ORDER BY r.file_index, r.row_number, r.entity
    """


def errors_query(raw: str, headers: list[tuple[int, str, str | None]], row_log: str, file_index: int) -> str:
    """The errored rows of one file, in its own columns plus `errors`, ready to fix and re-upload."""
    cells = []
    for position, header, column in headers:
        value = f"'***-**-' || right(regexp_replace(c{position}, '[^0-9]', '', 'g'), 4)" \
            if column == "ssn" else f"c{position}"
        quoted = '"' + header.replace('"', '""') + '"'
        cells.append(f"{neutralize(value)} AS {quoted}")
    return f"""
        SELECT {', '.join(cells)}, {neutralize('r.messages')} AS errors
        FROM {raw} x JOIN {row_log} r ON r.file_index = {file_index} AND r.row_number = x.row_number
        WHERE r.status = 'Errored'
        ORDER BY x.row_number
    """
