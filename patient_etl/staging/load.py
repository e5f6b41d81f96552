"""Staging: a batch's files checked at file level, then loaded into DuckDB as all-text tables.

File-level problems raise `FileRejected` with a code and a reason a partner can act on; they fail
the batch. Everything row-level (a row with too few values, a bad date) is left to the row checks.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from patient_etl.duck import scalar
from patient_etl.entities import ENTITIES, FORMAT_ALIASES
from patient_etl.entities.spec import Entity, is_messages_column, map_header, whole_name_hint
from patient_etl.errors import SafeError
from patient_etl.resources import DEFAULT_MAX_BYTES
from patient_etl.staging.mappings import EntityMapping, Mapping, table_name
from patient_etl.workspace import StageDb

SOURCE = "source"  # batch_files.entity of a file a SQL template reads
_CHUNK = 8 * 1024 * 1024
_DELIMITERS = (",", ";", "\t", "|")
_BINARY_MAGIC = {
    b"PK\x03\x04": "a zip or Excel workbook (save it as CSV UTF-8)",
    b"\xd0\xcf\x11\xe0": "an old Excel/Office document (save it as CSV UTF-8)",
    b"%PDF": "a PDF document",
}


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
        if b"\x00" in head:
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


def expand_archives(files: list[tuple[str, Path]], target: Path, max_bytes: int) -> list[tuple[str, Path]]:
    """Zips become their CSV members (extracted into `target`); other files pass through.

    Member names are untrusted: only their base name is used, and the total size is bounded, so a
    zip cannot write outside `target` or fill the disk.
    """
    out: list[tuple[str, Path]] = []
    for name, path in files:
        if not name.lower().endswith(".zip"):
            out.append((name, path))
            continue
        target.mkdir(parents=True, exist_ok=True)
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise FileRejected("not_csv", f"{name} is not a readable zip file") from None
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir()
                       and not Path(m.filename).name.startswith((".", "__MACOSX"))
                       and "__MACOSX" not in m.filename and Path(m.filename).suffix.lower() in (".csv", ".txt")]
            if not members:
                raise FileRejected("empty", f"{name} holds no CSV file")
            if sum(m.file_size for m in members) > max_bytes:
                raise FileRejected("too_large", f"{name} unpacks to more than {max_bytes:,} bytes")
            for index, member in enumerate(sorted(members, key=lambda m: m.filename)):
                base = Path(member.filename).name
                safe = re.sub(r"[^\w.-]+", "_", base)
                dest = target / f"{index:03d}_{safe}"
                with archive.open(member) as src, dest.open("wb") as handle:
                    copied = 0
                    while block := src.read(1 << 20):
                        copied += len(block)
                        if copied > max_bytes:
                            raise FileRejected("too_large", f"{name} unpacks to more than {max_bytes:,} bytes")
                        handle.write(block)
                out.append((base, dest))
    return out


def read_header(path: Path, name: str) -> tuple[list[str], str]:
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        first = handle.readline(1024 * 1024)
    if not first.strip():
        raise FileRejected("no_header", f"{name} has no header line")
    delimiter = max(_DELIMITERS, key=first.count)
    headers = next(csv.reader(io.StringIO(first), delimiter=delimiter))
    return [h.strip() for h in headers], delimiter


def map_headers(entity: Entity, headers: list[str], name: str, template: EntityMapping | None = None) -> HeaderMap:
    """Each header to its staged column: the template's own map first, then the entity's aliases."""
    columns: list[str | None] = []
    seen: dict[str, str] = {}
    unknown: list[str] = []
    for header in headers:
        column = ((template.column_for(header) if template else None) or map_header(entity, header)) if header \
            else None
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
    missing = [f for f in entity.required() if f not in seen and f not in constants]
    if missing:
        raise FileRejected("missing_columns", f"{name}: required columns missing: {', '.join(missing)}"
                                              + whole_name_hint(entity, headers, missing))
    return HeaderMap(headers, columns, unknown)


def detect_entity(name: str, headers: list[str]) -> Entity:
    """Which entity a file holds: by its name first, then by which entity's headers it matches best."""
    stem = Path(name).stem.lower()
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


def _load_file(db: StageDb, staged: StagedFile) -> None:
    """Read one CSV into `raw_<i>` with its 1-based data row numbers, rows of the wrong width kept aside.

    DuckDB's rejects table numbers records (not physical lines), so a rejected record's row number
    is exact even with quoted newlines; accepted rows take the remaining numbers in file order.
    """
    con, i = db.con, staged.file_index
    raw, rejected = db.raw(i), db.rejected(i)
    width = len(staged.header.headers)
    columns = "{" + ", ".join(f"'c{j}': 'VARCHAR'" for j in range(width)) + "}"
    con.execute(
        f"""
        CREATE TABLE accepted_{i} AS
        SELECT * FROM read_csv(?, header = true, columns = {columns}, delim = ?, quote = '"', escape = '"',
                               store_rejects = true, rejects_table = 'rejects_{i}', rejects_scan = 'scan_{i}',
                               strict_mode = true, encoding = 'utf-8')
        """,
        [str(staged.path), staged.delimiter],
    )
    con.execute(
        f"""
        CREATE TABLE {rejected} AS
        SELECT DISTINCT ON (line) CAST(line - 1 AS BIGINT) AS row_number, error_type,
               CAST(regexp_extract(error_message, 'Found: ([0-9]+)', 1) AS VARCHAR) AS found
        FROM rejects_{i} ORDER BY line
        """
    )
    accepted = scalar(con, f"SELECT count(*) FROM accepted_{i}")
    rejected_rows = scalar(con, f"SELECT count(*) FROM {rejected}")
    if accepted + rejected_rows == 0:
        raise FileRejected("no_data", f"{staged.name} has a header but no data rows")
    if rejected_rows == 0:
        con.execute(f"CREATE TABLE {raw} AS SELECT rowid + 1 AS row_number, * FROM accepted_{i}")
        staged.rows, staged.rejected_rows = accepted, 0
        return
    con.execute(
        f"""
        CREATE TABLE {raw} AS
        WITH numbers AS (
            SELECT n AS row_number, row_number() OVER (ORDER BY n) AS k
            FROM range(1, {accepted + rejected_rows + 1}) t(n)
            WHERE n NOT IN (SELECT row_number FROM {rejected})
        ),
        ordered AS (SELECT *, rowid + 1 AS k FROM accepted_{i})
        SELECT numbers.row_number, ordered.* EXCLUDE (k) FROM ordered JOIN numbers USING (k)
        """
    )
    staged.rows, staged.rejected_rows = accepted + rejected_rows, rejected_rows


def stage_files(db: StageDb, files: list[tuple[str, Path]], max_bytes: int = DEFAULT_MAX_BYTES,
                entity: Entity | None = None, mapping: Mapping | None = None) -> list[StagedFile]:
    """Load every file of a batch into the staging database: one `staged_<entity>` table per entity.

    `staged_<entity>` has `rid` (unique in the batch), `file_index`, `row_number`, one VARCHAR column
    per mapped field (NULL when empty), `extra` (unknown columns as JSON) and `width_error`.
    With a SQL mapping template, the files are its sources and its SELECTs make the entities.
    """
    files = expand_archives(files, db.workspace.unpacked, max_bytes)
    sql_mode = mapping is not None and mapping.uses_sql
    staged: list[StagedFile] = []
    for i, (name, path) in enumerate(files):
        check_file(path, name, max_bytes)
        headers, delimiter = read_header(path, name)
        if sql_mode:
            staged.append(StagedFile(i, name, path, SOURCE, HeaderMap(headers, ["*"] * len(headers)), delimiter))
            continue
        named = mapping.entity_for_file(name) if mapping else None
        file_entity = entity or (ENTITIES[named] if named else detect_entity(name, headers))
        template = mapping.entities.get(file_entity.name) if mapping else None
        staged.append(StagedFile(i, name, path, file_entity.name,
                                 map_headers(file_entity, headers, name, template), delimiter))
    for item in staged:
        try:
            _load_file(db, item)
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
                 else f"{_literal(template.constants[c])} AS {c}" for c in present]
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


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _width_message(width: int) -> str:
    return (f"CASE x.error_type WHEN 'MISSING COLUMNS' THEN 'row has ' || x.found || ' values but the header has {width}' "
            f"WHEN 'TOO MANY COLUMNS' THEN 'row has more values than the header''s {width} columns' "
            f"ELSE 'row could not be parsed (' || lower(x.error_type) || '); check its quotes' END")


def _cell(template: EntityMapping | None, column: str, raw: str) -> str:
    """A staged cell: trimmed text, through the template's value map and date format for its field."""
    cell = f"nullif(trim({raw}), '')"
    if template is None:
        return cell
    if column in template.values:
        whens = " ".join(f"WHEN {_literal(k.lower())} THEN {_literal(v)}" for k, v in template.values[column].items())
        cell = f"(CASE lower({cell}) {whens} ELSE {cell} END)"
    if column in template.date_formats:
        cell = f"coalesce(strftime(try_strptime({cell}, {_literal(template.date_formats[column])}), '%Y-%m-%d'), {cell})"
    if column in template.constants:
        cell = f"coalesce({cell}, {_literal(template.constants[column])})"
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
            else f"{_literal(template.constants[c])} AS {c}" if c in constants else f"CAST(NULL AS VARCHAR) AS {c}"
            for c in present
        ]
        unknown = [(j, h) for j, (h, c) in enumerate(zip(f.header.headers, f.header.columns, strict=True))
                   if c is None and not is_messages_column(h)]
        extra = "CAST(NULL AS JSON)"
        if unknown:
            pairs = ", ".join(f"'{h.replace(chr(39), chr(39) * 2)}', nullif(trim(c{j}), '')" for j, h in unknown)
            values = ", ".join(f"nullif(trim(c{j}), '')" for j, _ in unknown)
            extra = f"CASE WHEN coalesce({values}) IS NOT NULL THEN json_object({pairs}) END"
        selects.append(
            f"SELECT CAST({i} AS BIGINT) * 10000000000 + r.row_number AS rid, {i} AS file_index, r.row_number, "
            f"{', '.join(cells) or 'NULL AS _none'}, {extra} AS extra, CAST(NULL AS VARCHAR) AS width_error "
            f"FROM {db.raw(i)} r "
            f"UNION ALL SELECT CAST({i} AS BIGINT) * 10000000000 + x.row_number, {i}, x.row_number, "
            f"{', '.join('NULL' for _ in present) or 'NULL'}, NULL, "
            f"{_width_message(width)} "
            f"FROM {db.rejected(i)} x"
        )
    db.con.execute(f"CREATE TABLE {db.staged(entity.name)} AS " + " UNION ALL ".join(selects) + " ORDER BY rid")


def _record_files(db: StageDb, staged: list[StagedFile]) -> None:
    con = db.con
    con.execute(f"CREATE TABLE {db.batch_files} (file_index INTEGER, name VARCHAR, entity VARCHAR, rows BIGINT, "
                "rejected_rows BIGINT, delimiter VARCHAR)")
    con.execute(f"CREATE TABLE {db.header_map} (file_index INTEGER, position INTEGER, header VARCHAR, "
                "column_name VARCHAR)")
    for s in staged:
        con.execute(f"INSERT INTO {db.batch_files} VALUES (?, ?, ?, ?, ?, ?)",
                    [s.file_index, s.name, s.entity, s.rows, s.rejected_rows, s.delimiter])
        con.executemany(f"INSERT INTO {db.header_map} VALUES (?, ?, ?, ?)",
                        [[s.file_index, j, h, c] for j, (h, c) in
                         enumerate(zip(s.header.headers, s.header.columns, strict=True))])
