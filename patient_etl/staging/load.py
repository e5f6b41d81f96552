"""Staging: a batch's files checked at file level, then loaded into DuckDB as all-text tables.

File-level problems raise `FileRejected` with a code and a reason a partner can act on; they fail
the batch. Everything row-level (a row with too few values, a bad date) is left to the row checks.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from patient_etl.batches import temporary_name
from patient_etl.duck import scalar, select_lists, sql_literal
from patient_etl.entities import ENTITIES, FORMAT_ALIASES
from patient_etl.entities.kinds import SSN_TOKEN_MACRO
from patient_etl.entities.spec import MAX_GROUP_INDEX, Entity, is_messages_column, map_header, whole_name_hint
from patient_etl.errors import SafeError
from patient_etl.resources import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_UNCOMPRESSED_BYTES,
    DEFAULT_MAX_ZIP_MEMBERS,
)
from patient_etl.staging.mappings import EntityMapping, Mapping, table_name
from patient_etl.workspace import StageDb

SOURCE = "source"  # batch_files.entity of a file a SQL template reads
_CHUNK = 8 * 1024 * 1024
_DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_SUFFIX_DELIMITER = {".tsv": "\t", ".tab": "\t", ".psv": "|"}
TEXT_SUFFIXES = (".csv", ".txt", ".tsv", ".tab", ".psv")
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_BINARY_MAGIC = {
    b"PK\x03\x04": "a zip or Excel workbook (name it .zip or .xlsx, or save it as CSV UTF-8)",
    b"\xd0\xcf\x11\xe0": "an old Excel/Office document (save it as .xlsx or CSV UTF-8)",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip file (name it .gz)",
}
# Control characters a cell may not hold (tab, line feed and carriage return are text); RE2 syntax.
NEUTRALIZED = r"'^''[-=+@\t\r]'"  # a cell neutralised against formulas (results.neutralize)
_WIDE = 64  # columns past which a file's unknown cells are gathered by UNPIVOT (see `_wide_cells`)
_CONTROL = "'[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]'"


@dataclass(frozen=True)
class Limits:
    """The work one input may cause; `PatientEtl` settings, defaults in `resources.py`."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_columns: int = DEFAULT_MAX_COLUMNS
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_zip_members: int = DEFAULT_MAX_ZIP_MEMBERS
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO

    @classmethod
    def of(cls, etl) -> Limits:
        return cls(etl.max_file_bytes, etl.max_columns, etl.max_line_bytes, etl.max_zip_members,
                   etl.max_uncompressed_bytes, etl.max_compression_ratio)


class FileRejected(SafeError):
    """A file-level problem: the batch fails, and nothing is published."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass
class HeaderMap:
    headers: list[str]
    columns: list[str | None]  # staged column per position; None for an unknown header
    unknown: list[str] = field(default_factory=list)


@dataclass
class StagedFile:
    file_index: int
    name: str
    path: Path
    entity: str
    header: HeaderMap
    delimiter: str
    rows: int = 0
    rejected_rows: int = 0


def check_file(path: Path, name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Size, emptiness, binary content and encoding; streams the file, never holds it whole."""
    size = path.stat().st_size
    if size > max_bytes:
        raise FileRejected("too_large", f"{name} is {size:,} bytes; the limit is {max_bytes:,}")
    if size == 0:
        raise FileRejected("empty", f"{name} is empty")
    with path.open("rb") as handle:
        head = handle.read(4096)
        for magic, what in _BINARY_MAGIC.items():
            if head.startswith(magic):
                raise FileRejected("not_csv", f"{name} is {what}, not a CSV file")
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise FileRejected("encoding", f"{name} is UTF-16; save it as CSV UTF-8")
        # A NUL in a data cell is that row's error; in the header, or many of them, it is not text at all.
        if b"\x00" in head.split(b"\n", 1)[0] or head.count(b"\x00") * 100 > max(len(head), 1024):
            raise FileRejected("not_csv", f"{name} contains binary data, not CSV text")
        handle.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        line = 1
        while chunk := handle.read(_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk[: exc.start].count(b"\n")
                raise FileRejected(
                    "encoding", f"{name} is not UTF-8 (first bad byte on line {line}); save it as CSV UTF-8"
                ) from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FileRejected("encoding", f"{name} is not UTF-8 (it ends mid-character)") from None


def _safe_name(index: int, base: str) -> str:
    safe = re.sub(r"[^\w.-]+", "_", base)
    return f"{index:03d}_{safe}"


def _copy_bounded(src, dest: Path, name: str, limits: Limits, packed: int, budget: list[int]) -> None:
    """Copy a decompressing stream, stopping at the uncompressed-size and compression-ratio limits."""
    copied = 0
    with dest.open("wb") as handle:
        while block := src.read(1 << 20):
            copied += len(block)
            budget[0] += len(block)
            if budget[0] > limits.max_uncompressed_bytes:
                raise FileRejected("too_large", f"{name} unpacks to more than {limits.max_uncompressed_bytes:,} bytes")
            if copied > 1 << 20 and copied > limits.max_compression_ratio * max(packed, 1):
                raise FileRejected("compression_ratio", f"{name} unpacks to more than {limits.max_compression_ratio} "
                                                        "times its compressed size; it is refused as a zip bomb")
            handle.write(block)


def _open_zip(path: Path, name: str, limits: Limits) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """A zip's members after the checks that need no decompression: count, encryption, method, sizes."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise FileRejected("not_zip", f"{name} is not a readable zip file") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > limits.max_zip_members:
        archive.close()
        raise FileRejected("too_many_members", f"{name} holds {len(members):,} files; the limit is "
                                               f"{limits.max_zip_members:,}")
    for m in members:
        if m.flag_bits & 0x1:
            archive.close()
            raise FileRejected("zip_encrypted", f"{name} is password-protected; send it without a password")
        if m.compress_type not in _ZIP_METHODS:
            archive.close()
            raise FileRejected("zip_method", f"{name} uses a compression method we cannot read "
                                             f"(method {m.compress_type}); zip it with the standard (deflate) method")
    if sum(m.file_size for m in members) > limits.max_uncompressed_bytes:
        archive.close()
        raise FileRejected("too_large", f"{name} unpacks to more than {limits.max_uncompressed_bytes:,} bytes")
    for m in members:
        if m.file_size > 1 << 20 and m.file_size > limits.max_compression_ratio * max(m.compress_size, 1):
            archive.close()
            raise FileRejected("compression_ratio", f"{name} unpacks to more than {limits.max_compression_ratio} "
                                                    "times its compressed size; it is refused as a zip bomb")
    return archive, members


def _extract(archive: zipfile.ZipFile, member: zipfile.ZipInfo, dest: Path, name: str, limits: Limits,
             budget: list[int]) -> None:
    try:
        with archive.open(member) as src:
            _copy_bounded(src, dest, name, limits, member.compress_size, budget)
    except FileRejected:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, RuntimeError, NotImplementedError,
            LookupError):
        raise FileRejected("zip_damaged", f"{name} is damaged (a member fails its integrity check: bad CRC, "
                                          "wrong size or truncated); send it again") from None


def expand_archives(files: list[tuple[str, Path]], target: Path, limits: Limits | int,
                    sheet: str | None = None) -> list[tuple[str, Path]]:
    """Zips become their text and workbook members, `.gz` its content, a workbook its sheet as CSV text,
    all written into `target`; text files pass through.

    Member names are untrusted: only their base name is used. Every expansion is bounded (members,
    uncompressed size, compression ratio), so a zip cannot write outside `target` or fill the disk.
    """
    limits = limits if isinstance(limits, Limits) else Limits(max_bytes=limits, max_uncompressed_bytes=limits)
    out: list[tuple[str, Path]] = []
    budget = [0]
    counter = iter(range(1_000_000))
    for name, path in files:
        lower = name.lower()
        if lower.endswith(".zip"):
            target.mkdir(parents=True, exist_ok=True)
            archive, members = _open_zip(path, name, limits)
            with archive:
                wanted = [m for m in members if not Path(m.filename).name.startswith((".", "__MACOSX"))
                          and "__MACOSX" not in m.filename
                          and Path(m.filename).suffix.lower() in (*TEXT_SUFFIXES, ".xlsx", ".gz")]
                if not wanted:
                    raise FileRejected("empty", f"{name} holds no CSV file")
                for member in sorted(wanted, key=lambda m: m.filename):
                    base = Path(member.filename).name
                    dest = target / _safe_name(next(counter), base)
                    _extract(archive, member, dest, name, limits, budget)
                    out += expand_archives([(base, dest)], target, limits, sheet) \
                        if base.lower().endswith((".xlsx", ".gz")) else [(base, dest)]
        elif lower.endswith(".gz"):
            target.mkdir(parents=True, exist_ok=True)
            inner = name[:-3]
            dest = target / _safe_name(next(counter), inner)
            try:
                with gzip.open(path, "rb") as src:
                    _copy_bounded(src, dest, name, limits, path.stat().st_size, budget)
            except FileRejected:
                raise
            except (OSError, EOFError, zlib.error):
                raise FileRejected("gzip_damaged", f"{name} is not a readable gzip file (damaged or "
                                                   "truncated); send it again") from None
            out.append((inner, dest))
        elif lower.endswith(".xlsx"):
            target.mkdir(parents=True, exist_ok=True)
            dest = target / _safe_name(next(counter), name[:-5] + ".csv")
            _workbook_to_csv(path, name, dest, limits, sheet)
            out.append((name, dest))
        else:
            out.append((name, path))
    return out


def _xlsx_text(cell) -> str:
    """A workbook cell as the user saw it: dates as YYYY-MM-DD, whole numbers without `.0`, a number
    formatted with leading zeros (`00000` for a zip) with them."""
    value = cell.value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, int | float):
        if isinstance(value, float):
            value = int(value) if value.is_integer() else value
        text = format(value, ".15g") if isinstance(value, float) else str(value)
        zeros = getattr(cell, "number_format", "") or ""
        if re.fullmatch(r"0+", zeros) and isinstance(value, int) and value >= 0:
            text = text.zfill(len(zeros))
        return text
    return str(value)


def _workbook_to_csv(path: Path, name: str, dest: Path, limits: Limits, sheet: str | None) -> None:
    """The first sheet (or the one the template names) written as CSV text, streamed (read-only mode)."""
    import openpyxl  # only workbook batches pay for it

    archive, _ = _open_zip(path, name, limits)  # a workbook is a zip: the same bounds apply
    archive.close()
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception:  # openpyxl raises many types for a damaged file; its text may quote the content
        raise FileRejected("not_xlsx", f"{name} is not a readable Excel workbook; save it again as .xlsx "
                                       "or as CSV UTF-8") from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise FileRejected("sheet", f"{name} has no sheet named {sheet!r}; its sheets: "
                                        f"{', '.join(book.sheetnames)}")
        ws = book[sheet] if sheet is not None else book.worksheets[0]
        width = None
        with dest.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            for row in ws.iter_rows():
                cells = [_xlsx_text(c) for c in row]
                if width is None:
                    while cells and cells[-1] == "":
                        cells.pop()
                    width = len(cells)
                    if width > limits.max_columns:
                        raise FileRejected("too_many_columns", f"{name} has {width:,} columns; the limit is "
                                                               f"{limits.max_columns:,}")
                elif not any(cells):
                    cells = []  # a blank spreadsheet line
                else:  # trailing empty cells beyond the header are formatting, not values
                    while len(cells) > width and cells[-1] == "":
                        cells.pop()
                    cells += [""] * (width - len(cells))
                writer.writerow(cells)
    except FileRejected:
        raise
    except Exception:
        raise FileRejected("not_xlsx", f"{name} is not a readable Excel workbook; save it again as .xlsx "
                                       "or as CSV UTF-8") from None
    finally:
        book.close()


def _best_mapped(headers: list[str]) -> int:
    return max(sum(1 for h in headers if map_header(e, h)) for e in ENTITIES.values())


def read_header(path: Path, name: str, limits: Limits | None = None,
                delimiter: str | None = None) -> tuple[list[str], str]:
    """The header line, split on the given delimiter or the one that makes its headers known fields."""
    limits = limits or Limits()
    with path.open("rb") as handle:
        raw = re.split(rb"\r\n|\r|\n", handle.read(limits.max_line_bytes + 2), maxsplit=1)[0]
    if len(raw) > limits.max_line_bytes:
        raise FileRejected("line_too_long", f"{name}: line 1 (the header) is longer than "
                                            f"{limits.max_line_bytes:,} bytes")
    first = raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not first.strip():
        raise FileRejected("no_header", f"{name} has no header line")
    if delimiter is None:
        delimiter = _SUFFIX_DELIMITER.get(Path(name).suffix.lower())
    if delimiter is None:
        candidates = [d for d in _DELIMITERS if d in first]
        if len(candidates) <= 1:
            delimiter = candidates[0] if candidates else ","
        else:
            scores = {d: _best_mapped(_split(first, d)) for d in candidates}
            best = max(scores.values())
            winners = [d for d in candidates if scores[d] == best]
            if best > 0 and len(winners) == 1:
                delimiter = winners[0]
            elif best == 0:
                delimiter = max(candidates, key=first.count)
            else:
                considered = ", ".join(f"{_DELIMITER_NAMES[d]} ({d!r})" for d in candidates)
                raise FileRejected("delimiter", f"{name}: cannot tell which delimiter separates its columns; "
                                                f"considered {considered}; set `delimiter` in the mapping "
                                                "template or pass --delimiter")
    headers = _split(first, delimiter)
    if len(headers) > limits.max_columns:
        raise FileRejected("too_many_columns", f"{name} has {len(headers):,} columns; the limit is "
                                               f"{limits.max_columns:,}")
    return headers, delimiter


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return [h.strip() for h in next(csv.reader([line], delimiter=delimiter))]
    except (csv.Error, StopIteration):
        return [line.strip()]


def map_headers(entity: Entity, headers: list[str], name: str, template: EntityMapping | None = None) -> HeaderMap:
    """Each header to its staged column: the template's own map first, then the entity's aliases."""
    columns: list[str | None] = []
    seen: dict[str, str] = {}
    unknown: list[str] = []
    mapped = [((template.column_for(h) if template else None) or map_header(entity, h)) if h else None for h in headers]
    by_name = {c.name: c for c in entity.columns()}
    numbered = {c for c in mapped if c in by_name and by_name[c].group is not None and by_name[c].index > 1}
    for header, column in zip(headers, mapped, strict=True):
        if column is not None and column in seen:
            column = _next_list_slot(by_name, column, {*seen, *numbered}) or column
        if column is not None and column in seen:
            raise FileRejected(
                "duplicate_field",
                f"{name}: columns {seen[column]!r} and {header!r} both map to {column}; keep one",
            )
        if column is None and not is_messages_column(header):  # a fixed errors file's messages: ignored
            unknown.append(header or f"(unnamed column {len(columns) + 1})")
        else:
            seen[column] = header
        columns.append(column)
    constants = template.constants if template else {}
    if not seen and not constants:
        expected = [c.label for c in entity.columns() if c.index == 0][:12]
        raise FileRejected("no_entity", f"{name} matches no entity: none of its {len(headers):,} column headers is "
                                        f"one we know. The nearest entity is {entity.name}, whose headers are "
                                        f"{', '.join(expected)}; required: {', '.join(entity.required())}")
    missing = [f for f in entity.required() if f not in seen and f not in constants]
    if missing:
        raise FileRejected("missing_columns", f"{name}: required columns missing: {', '.join(missing)}"
                                              + whole_name_hint(entity, headers, missing))
    return HeaderMap(headers, columns, unknown)


def _next_list_slot(by_name: dict, column: str, taken: set[str]) -> str | None:
    """For a second unnumbered column of a one-field list (`Mobile` after `Home Phone`, both `phone`):
    the list's next free position (`phone_2`, ...), in column order; None for any other field (two
    columns for one address line are a mistake to report, not a second address)."""
    found = by_name.get(column)
    if found is None or found.group is None or len(found.group.fields) != 1 or found.index > 1:
        return None
    used = {max(by_name[t].index, 1) for t in taken if t in by_name and by_name[t].group is found.group}
    for position in range(2, MAX_GROUP_INDEX + 1):
        if position not in used:
            return found.group.column(found.field.name, position)
    return None


def detect_entity(name: str, headers: list[str]) -> Entity:
    """Which entity a file holds: by its name first, then by which entity's headers it matches best."""
    stem = Path(name).name.lower().split(".")[0]
    alias = FORMAT_ALIASES.get(re.split(r"[_\-\s]", stem)[0])
    if alias:
        return ENTITIES[alias]
    for entity in ENTITIES.values():
        if stem == entity.name or stem.startswith(entity.name + "_") or stem.startswith(entity.name + "s"):
            return entity

    def score(entity: Entity) -> tuple[int, int]:
        mapped = [c for h in headers if (c := map_header(entity, h))]
        return (all(r in mapped for r in entity.required()), len(mapped))

    return max(ENTITIES.values(), key=score)


def _protected_cells(staged: StagedFile) -> str:
    """`c0, .., cN`, a column that maps to an SSN field replaced by its token (entities/kinds.py)."""
    entities = [ENTITIES[staged.entity]] if staged.entity in ENTITIES else list(ENTITIES.values())
    kinds = {c.name: c.field.kind for e in entities for c in e.columns()}
    cells = []
    for j, (header, column) in enumerate(zip(staged.header.headers, staged.header.columns, strict=True)):
        names = [column] if column and column != "*" else [map_header(e, header) for e in entities]
        protect = any(n and kinds.get(n) is not None and kinds[n].hash_sql for n in names)
        cells.append(f"{SSN_TOKEN_MACRO}(c{j}) AS c{j}" if protect else f"c{j}")
    return ", ".join(cells) or "*"


def _has_blank_line(path: Path) -> bool:
    """Whether the file has an empty line (a spreadsheet row that DuckDB would skip, shifting numbers)."""
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            block = tail + chunk
            if b"\n\n" in block or b"\n\r\n" in block or b"\r\r" in block:
                return True
            tail = block[-3:]
    return False


def _rejected_table(db: StageDb, i: int, width: int) -> str:
    """A file's rows that could not be staged, with their cells as far as they were read (`c0`.. as in
    `raw_<i>`): the errors file echoes them for the partner to fix."""
    table = db.rejected(i)
    cells = "".join(f", c{j} VARCHAR" for j in range(width))
    db.con.execute(f"CREATE TABLE {table} (row_number BIGINT, error_type VARCHAR, found VARCHAR, "
                   f"external_id VARCHAR, message VARCHAR{cells})")
    return table


def _as_wide(row: list[str], width: int, delimiter: str) -> list[str]:
    """A row of the wrong width in the file's columns: a short row padded with empty cells, a long
    row's surplus cells kept in its last column, joined by the delimiter (nothing the partner sent is
    dropped from the errors file)."""
    if len(row) <= width:
        return row + [""] * (width - len(row))
    return row[:width - 1] + [delimiter.join(row[width - 1:])]


def _load_file(db: StageDb, staged: StagedFile, limits: Limits, key_position: int | None = None) -> None:
    """Read one CSV into `raw_<i>` with its row numbers, rows of the wrong width kept aside.

    A row number is the spreadsheet line of the row minus the header's: blank lines count, a quoted line
    break does not. A regular file is read by DuckDB alone; any irregularity (a blank line, a row of the
    wrong width, a quote problem, mixed line endings) is read by Python's csv module, which names the line.
    """
    con, i = db.con, staged.file_index
    raw = db.raw(i)
    width = len(staged.header.headers)
    columns = "{" + ", ".join(f"'c{j}': 'VARCHAR'" for j in range(width)) + "}"
    if not _has_blank_line(staged.path):
        try:
            con.execute(
                f"""
                CREATE TEMP TABLE accepted_{i} AS
                SELECT * FROM read_csv(?, header = true, columns = {columns}, delim = ?, quote = '"', escape = '"',
                                       strict_mode = true, encoding = 'utf-8', max_line_size = ?)
                """,
                [str(staged.path), staged.delimiter, limits.max_line_bytes],
            )
            # The file as read stays in memory (a TEMP table): `raw_<i>` keeps SSNs as tokens only.
            con.execute(f"CREATE TABLE {raw} AS SELECT rowid + 1 AS row_number, {_protected_cells(staged)} "
                        f"FROM accepted_{i}")
            con.execute(f"DROP TABLE accepted_{i}")
            _rejected_table(db, i, width)
            staged.rows = scalar(con, f"SELECT count(*) FROM {raw}")
            if staged.rows == 0:
                raise FileRejected("no_data", f"{staged.name} has a header but no data rows")
            return
        except duckdb.OutOfMemoryException:
            raise  # the careful way would run out too
        except duckdb.Error:
            con.execute(f"DROP TABLE IF EXISTS accepted_{i}")
            con.execute(f"DROP TABLE IF EXISTS {raw}")
            con.execute(f"DROP TABLE IF EXISTS {db.rejected(i)}")
    _load_carefully(db, staged, limits, key_position, columns)


def _load_carefully(db: StageDb, staged: StagedFile, limits: Limits, key_position: int | None,
                    columns: str) -> None:
    con, i, name = db.con, staged.file_index, staged.name
    width = len(staged.header.headers)
    folder = db.workspace.unpacked
    folder.mkdir(parents=True, exist_ok=True)
    # Named by this process (batches.LEFTOVER): the clean copy holds the file's cells in clear, and a
    # killed run's copies are removed by the next start's sweep.
    clean, rejects = folder / temporary_name(f"clean_{i:03d}.csv"), folder / temporary_name(f"rejects_{i:03d}.csv")
    csv.field_size_limit(max(limits.max_line_bytes, 1024))
    accepted = rejected = 0
    with staged.path.open("r", encoding="utf-8-sig", newline="") as src, \
            clean.open("w", encoding="utf-8", newline="") as good, \
            rejects.open("w", encoding="utf-8", newline="") as bad:
        reader = csv.reader(src, delimiter=staged.delimiter, strict=True)
        good_rows, bad_rows = csv.writer(good, lineterminator="\n"), csv.writer(bad, lineterminator="\n")
        try:
            next(reader)
        except (csv.Error, StopIteration):
            raise FileRejected("unreadable", f"{name}: the header line cannot be read; check its quotes") from None
        record = 0
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                record += 1
                text = str(exc)
                if "end of data" in text:
                    raise FileRejected("unterminated_quote", f"{name}: the quoted value that starts on line {start} "
                                                             "is never closed; close its quote and send the file "
                                                             "again") from None
                if "field limit" in text:
                    raise FileRejected("line_too_long", f"{name}: the row starting on line {start} is longer than "
                                                        f"{limits.max_line_bytes:,} bytes") from None
                cause = "text after a closing quote" if "expected after" in text else "a quote out of place"
                bad_rows.writerow([record, "QUOTE", "", "", f"row could not be read: {cause} on line "
                                                            f"{reader.line_num}; quote the whole value",
                                   *[""] * width])
                rejected += 1
                continue
            record += 1
            if not row:
                continue  # a blank line: a spreadsheet line, not a row
            if sum(map(len, row)) > limits.max_line_bytes:
                raise FileRejected("line_too_long", f"{name}: the row starting on line {start} is longer than "
                                                    f"{limits.max_line_bytes:,} bytes")
            if len(row) == width:
                good_rows.writerow([record, *row])
                accepted += 1
                continue
            key = row[key_position].strip() if key_position is not None and key_position < len(row) else ""
            kind = "MISSING COLUMNS" if len(row) < width else "TOO MANY COLUMNS"
            bad_rows.writerow([record, kind, len(row), key, "", *_as_wide(row, width, staged.delimiter)])
            rejected += 1
    if accepted + rejected == 0:
        raise FileRejected("no_data", f"{name} has a header but no data rows")
    all_columns = "{'row_number': 'BIGINT', " + columns[1:]
    cells = _protected_cells(staged)  # `raw_<i>` keeps SSNs as tokens only
    con.execute(f"CREATE TABLE {db.raw(i)} AS SELECT row_number, {cells} FROM read_csv(?, header = false, columns = {all_columns}, "
                "delim = ',', quote = '\"', escape = '\"', strict_mode = true, parallel = false) LIMIT 0",
                [str(clean)]) if accepted == 0 else con.execute(
        f"CREATE TABLE {db.raw(i)} AS SELECT row_number, {cells} FROM read_csv(?, header = false, "
        f"columns = {all_columns}, delim = ',', quote = '\"', escape = '\"', strict_mode = true, parallel = false, "
        "max_line_size = ?)",
        [str(clean), max(limits.max_line_bytes * 2, 2_097_152)])
    table = _rejected_table(db, i, width)
    if rejected:
        spec = ("{'row_number': 'BIGINT', 'error_type': 'VARCHAR', 'found': 'VARCHAR', 'external_id': 'VARCHAR', "
                "'message': 'VARCHAR', " + columns[1:])
        con.execute(f"INSERT INTO {table} SELECT row_number, error_type, found, external_id, message, {cells} "
                    f"FROM read_csv(?, header = false, columns = {spec}, delim = ',', quote = '\"', escape = '\"', "
                    "max_line_size = ?)", [str(rejects), max(limits.max_line_bytes * 2, 2_097_152)])
    staged.rows, staged.rejected_rows = accepted + rejected, rejected
    clean.unlink(missing_ok=True)
    rejects.unlink(missing_ok=True)


def stage_files(db: StageDb, files: list[tuple[str, Path]], max_bytes: int = DEFAULT_MAX_BYTES,
                entity: Entity | None = None, mapping: Mapping | None = None, limits: Limits | None = None,
                delimiter: str | None = None) -> list[StagedFile]:
    """Load every file of a batch into the staging database: one `staged_<entity>` table per entity.

    `staged_<entity>` has `rid` (unique in the batch), `file_index`, `row_number`, one VARCHAR column
    per mapped field (NULL when empty), `extra` (unknown columns as JSON) and `width_error` (a row
    staging could not take as it is: wrong width, a quote out of place, a control character in a cell).
    With a SQL mapping template, the files are its sources and its SELECTs make the entities.
    """
    limits = limits or Limits(max_bytes=max_bytes)
    delimiter = delimiter or (mapping.delimiter if mapping else None)
    files = expand_archives(files, db.workspace.unpacked, limits, mapping.sheet if mapping else None)
    sql_mode = mapping is not None and mapping.uses_sql
    staged: list[StagedFile] = []
    for i, (name, path) in enumerate(files):
        check_file(path, name, limits.max_bytes)
        # a workbook was written as comma-separated text by `_workbook_to_csv`, whatever its cells hold
        headers, file_delimiter = read_header(path, name, limits, "," if name.lower().endswith(".xlsx") else delimiter)
        if sql_mode:
            staged.append(StagedFile(i, name, path, SOURCE, HeaderMap(headers, ["*"] * len(headers)),
                                     file_delimiter))
            continue
        named = mapping.entity_for_file(name) if mapping else None
        file_entity = entity or (ENTITIES[named] if named else detect_entity(name, headers))
        template = mapping.entities.get(file_entity.name) if mapping else None
        staged.append(StagedFile(i, name, path, file_entity.name,
                                 map_headers(file_entity, headers, name, template), file_delimiter))
    for item in staged:
        key = ENTITIES[item.entity].key if item.entity in ENTITIES else None
        key_position = item.header.columns.index(key) if key in item.header.columns else None
        try:
            _load_file(db, item, limits, key_position)
        except duckdb.OutOfMemoryException:
            raise  # not the file's fault: the step fails naming the memory limit (errors.phi_safe)
        except duckdb.Error as exc:  # its text may quote a line of the file: keep only the type
            raise FileRejected("unreadable", f"{item.name} could not be read as CSV "
                                             f"({type(exc).__name__})") from None
    if sql_mode:
        _stage_with_sql(db, mapping, staged)
    else:
        for entity_name in sorted({s.entity for s in staged}):
            template = mapping.entities.get(entity_name) if mapping else None
            _union_entity(db, ENTITIES[entity_name], [s for s in staged if s.entity == entity_name], template)
    _record_files(db, staged)
    return staged


def _stage_with_sql(db: StageDb, mapping: Mapping, staged: list[StagedFile]) -> None:
    con = db.con
    by_table = {}
    for f in staged:
        table = table_name(f.name)
        by_table[table] = f
        columns = ", ".join(f'c{j} AS "{h.replace(chr(34), chr(34) * 2)}"' for j, h in enumerate(f.header.headers))
        con.execute(f"CREATE VIEW {table} AS SELECT row_number, {columns} FROM {db.raw(f.file_index)}")
    for name, template in mapping.entities.items():
        if not template.sql:
            continue
        driving = by_table.get(template.file)
        if driving is None:
            raise FileRejected("missing_file", f"template {mapping.name} needs a file {template.file}.csv for {name}")
        entity = ENTITIES[name]
        try:
            produced = [d[0] for d in con.execute(f"SELECT * FROM ({template.sql}) LIMIT 0").description]
        except duckdb.Error as exc:
            raise FileRejected("template_sql", f"template {mapping.name}: the SQL for {name} cannot run on these "
                                               f"files ({type(exc).__name__})") from None
        missing = [f for f in ("row_number", *entity.required()) if f not in produced and f not in template.constants]
        if missing:  # a SELECT * or a UNION could only be checked now
            raise FileRejected("template_sql", f"template {mapping.name}: the SQL for {name} does not produce "
                                               f"{', '.join(missing)}")
        known = [c.name for c in entity.columns()]
        present = [c for c in known if c in produced or c in template.constants]
        cells = [f"nullif(trim(CAST(q.{c} AS VARCHAR)), '') AS {c}" if c in produced
                 else f"{sql_literal(template.constants[c])} AS {c}" for c in present]
        i, width = driving.file_index, len(driving.header.headers)
        con.execute(f"""
            CREATE TABLE {db.staged(name)} AS
            SELECT CAST({i} AS BIGINT) * 10000000000 + q.row_number AS rid, {i} AS file_index, q.row_number,
                   {', '.join(cells)}, CAST(NULL AS JSON) AS extra, CAST(NULL AS VARCHAR) AS width_error
            FROM ({template.sql}) q
            UNION ALL
            SELECT CAST({i} AS BIGINT) * 10000000000 + x.row_number, {i}, x.row_number,
                   {', '.join('NULL' for _ in present)}, NULL, {_width_message(width)}
            FROM {db.rejected(i)} x
            ORDER BY rid""")


def _width_message(width: int) -> str:
    return (f"coalesce(x.message, CASE x.error_type "
            f"WHEN 'MISSING COLUMNS' THEN 'row has ' || x.found || ' values but the header has {width}' "
            f"WHEN 'TOO MANY COLUMNS' THEN 'row has more values than the header''s {width} columns' "
            f"ELSE 'row could not be parsed (' || lower(x.error_type) || '); check its quotes' END)")


def _control_message(headers: list[str]) -> str:
    """A row error naming each cell that holds a control character (PostgreSQL refuses NUL; no cell
    value is quoted). The whole row is tested once, the cells only when it matches."""
    cells = [f"c{j}" for j in range(len(headers))]
    if not cells:
        return "CAST(NULL AS VARCHAR)"
    named = ", ".join(
        f"CASE WHEN regexp_matches(coalesce(c{j}, ''), {_CONTROL}) THEN "
        f"{sql_literal((h or f'column {j + 1}') + ': contains a control character (such as NUL); remove it')} END"
        for j, h in enumerate(headers))
    return (f"CASE WHEN regexp_matches(concat({', '.join(cells)}), {_CONTROL}) "
            f"THEN concat_ws('; ', {named}) END")


def _cell(template: EntityMapping | None, column: str, raw: str) -> str:
    """A staged cell: trimmed text, through the template's value map and date format for its field.

    A leading `'` before a formula character (`= + - @`, tab, return) is the one this product's files
    (and spreadsheets) put there so the cell is not run as a formula: it is not part of the value."""
    # The regular expression only for a cell that starts with a quote: DuckDB evaluates the second term
    # of an AND only for the rows the first passes (RE2 on every cell: ~0.3 s of a 1M-row roster's checks).
    unquoted = (f"CASE WHEN starts_with({raw}, '''') AND regexp_matches({raw}, {NEUTRALIZED}) "
                f"THEN substr({raw}, 2) ELSE {raw} END")
    cell = f"nullif(trim({unquoted}), '')"
    if template is None:
        return cell
    if column in template.values:
        whens = " ".join(f"WHEN {sql_literal(k.lower())} THEN {sql_literal(v)}" for k, v in template.values[column].items())
        cell = f"(CASE lower({cell}) {whens} ELSE {cell} END)"
    if column in template.date_formats:
        cell = f"coalesce(strftime(try_strptime({cell}, {sql_literal(template.date_formats[column])}), '%Y-%m-%d'), {cell})"
    if column in template.constants:
        cell = f"coalesce({cell}, {sql_literal(template.constants[column])})"
    return cell


def _union_entity(db: StageDb, entity: Entity, files: list[StagedFile],
                  template: EntityMapping | None = None) -> None:
    constants = set(template.constants) if template else set()
    present = sorted({c for f in files for c in f.header.columns if c} | constants,
                     key=[c.name for c in entity.columns()].index)
    selects = []
    for f in files:
        i, width = f.file_index, len(f.header.headers)
        by_column = {c: j for j, c in enumerate(f.header.columns) if c}
        cells = [
            f"{_cell(template, c, f'c{by_column[c]}')} AS {c}" if c in by_column
            else f"{sql_literal(template.constants[c])} AS {c}" if c in constants else f"CAST(NULL AS VARCHAR) AS {c}"
            for c in present
        ]
        unknown = [(j, h) for j, (h, c) in enumerate(zip(f.header.headers, f.header.columns, strict=True))
                   if c is None and not is_messages_column(h)]
        extra, control, join = "CAST(NULL AS JSON)", _control_message(f.header.headers), ""
        if width > _WIDE:
            extra, control, join = "w.extra", "w.control", f"LEFT JOIN {_wide_cells(db, f)} w USING (row_number) "
        elif unknown:
            pairs = ", ".join(f"{sql_literal(h)}, nullif(trim(c{j}), '')" for j, h in unknown)
            values = ", ".join(f"nullif(trim(c{j}), '')" for j, _ in unknown)
            extra = f"CASE WHEN coalesce({values}) IS NOT NULL THEN json_object({pairs}) END"
        keyed = ["x.external_id" if c == entity.key else "NULL" for c in present]
        selects.append(
            f"SELECT CAST({i} AS BIGINT) * 10000000000 + r.row_number AS rid, {i} AS file_index, r.row_number, "
            f"{', '.join(cells) or 'NULL AS _none'}, {extra} AS extra, {control} AS width_error "
            f"FROM {db.raw(i)} r {join}"
            f"UNION ALL SELECT CAST({i} AS BIGINT) * 10000000000 + x.row_number, {i}, x.row_number, "
            f"{', '.join(keyed) or 'NULL'}, NULL, "
            f"{_width_message(width)} "
            f"FROM {db.rejected(i)} x"
        )
    # A view: row checks read it once, so the mapped cells are computed in that one pass instead of
    # being written as a third copy of the file. A wide file's cells come from this session's
    # temporary tables, so its rows are written out.
    # Rows come in file order, each file's rows of the wrong width after its others: every reader that
    # needs an order says so (ORDER BY rid), as a sort here would cost a pass over every column.
    kind = "TABLE" if any(len(f.header.headers) > _WIDE for f in files) else "VIEW"
    db.con.execute(f"CREATE {kind} {db.staged(entity.name)} AS " + " UNION ALL ".join(selects))


def _wide_cells(db: StageDb, f: StagedFile) -> str:
    """A wide file's unknown cells as JSON and its control-character messages, per row, computed on the
    cells unpivoted: DuckDB binds one expression per column in time that grows with the square of the
    columns (3,000 columns took over a minute), an UNPIVOT in time that grows with the cells."""
    con, i = db.con, f.file_index
    names = [f"c{j}" for j in range(len(f.header.headers))]
    shown = [h or f"(unnamed column {j + 1})" for j, h in enumerate(f.header.headers)]
    headers, params = select_lists({
        "name": ("VARCHAR", names),
        "position": ("BIGINT", range(len(names))),
        "header": ("VARCHAR", shown),
        "known": ("BOOLEAN", [c is not None for c in f.header.columns]),
        "message": ("VARCHAR", [f"{h}: contains a control character (such as NUL); remove it" for h in shown]),
    })
    con.execute(f"CREATE TEMP TABLE wide_headers_{i} AS {headers}", params)
    con.execute(f"""
        CREATE TEMP TABLE wide_cells_{i} AS
        SELECT u.row_number, u.value, h.* EXCLUDE (name)
        FROM (UNPIVOT {db.raw(i)} ON COLUMNS('^c[0-9]+$') INTO NAME name VALUE value) u
        JOIN wide_headers_{i} h USING (name)""")
    con.execute(f"""
        CREATE TEMP TABLE wide_{i} AS
        WITH extra AS (
            SELECT row_number, json_group_object(header, trim(value)) AS extra FROM wide_cells_{i}
            WHERE NOT known AND trim(value) <> '' GROUP BY row_number
        ), control AS (
            SELECT row_number, string_agg(message, '; ' ORDER BY position) AS control FROM wide_cells_{i}
            WHERE regexp_matches(value, {_CONTROL}) GROUP BY row_number
        )
        SELECT row_number, extra.extra, control.control FROM extra FULL JOIN control USING (row_number)""")
    con.execute(f"DROP TABLE wide_cells_{i}")
    return f"wide_{i}"


def _record_files(db: StageDb, staged: list[StagedFile]) -> None:
    con = db.con
    con.execute(f"CREATE TABLE {db.batch_files} (file_index INTEGER, name VARCHAR, entity VARCHAR, rows BIGINT, "
                "rejected_rows BIGINT, delimiter VARCHAR)")
    con.execute(f"CREATE TABLE {db.header_map} (file_index INTEGER, position INTEGER, header VARCHAR, "
                "column_name VARCHAR)")
    for s in staged:
        con.execute(f"INSERT INTO {db.batch_files} VALUES (?, ?, ?, ?, ?, ?)",
                    [s.file_index, s.name, s.entity, s.rows, s.rejected_rows, s.delimiter])
    rows = [(s.file_index, j, h, c) for s in staged
            for j, (h, c) in enumerate(zip(s.header.headers, s.header.columns, strict=True))]
    # One insert for thousands of columns (executemany is row by row).
    header_rows, params = select_lists({"file_index": ("INTEGER", [r[0] for r in rows]),
                                        "position": ("INTEGER", [r[1] for r in rows]),
                                        "header": ("VARCHAR", [r[2] for r in rows]),
                                        "column_name": ("VARCHAR", [r[3] for r in rows])})
    con.execute(f"INSERT INTO {db.header_map} {header_rows}", params)
