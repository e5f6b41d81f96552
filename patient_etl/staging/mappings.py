"""Mapping templates: how a source format's files become our entities (the MedTrainer idea).

A template is a YAML file in `data/mappings/` (or any path). Per entity it either maps the source's
headers to canonical fields (with value maps, date formats and constants), or, for connector feeds
that need joins or sums, gives a DuckDB SELECT over the batch's files, each a table named after its
file (`patients.csv` -> `patients`, with the file's own headers and a `row_number`). It may relax a
rule the source cannot meet to a warning. Templates are validated when loaded, before any data is read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import yaml

from patient_etl.duck import in_memory
from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import header_key
from patient_etl.errors import SafeError

MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "data" / "mappings"
_KEYS = {"columns", "values", "date_formats", "constants", "sql", "file", "relax"}


class MappingError(SafeError):
    """A template that cannot be used, and why. A batch whose template fails fails at file level."""

    code = "mapping"

    @property
    def reason(self) -> str:
        return str(self)


@dataclass(frozen=True)
class EntityMapping:
    entity: str
    columns: dict[str, str] = field(default_factory=dict)  # source header -> staged column
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # field -> source value -> value
    date_formats: dict[str, str] = field(default_factory=dict)  # field -> strptime format
    constants: dict[str, str] = field(default_factory=dict)
    sql: str | None = None
    file: str | None = None  # for SQL: the file whose row numbers the results cite
    relax: tuple[str, ...] = ()  # fields or groups whose errors become warnings

    def column_for(self, header: str) -> str | None:
        wanted = header_key(header)
        return next((column for source, column in self.columns.items() if header_key(source) == wanted), None)


@dataclass(frozen=True)
class Mapping:
    name: str
    description: str
    entities: dict[str, EntityMapping]
    files: dict[str, str]  # file name pattern (glob, case-insensitive) -> entity
    delimiter: str | None = None  # the files' delimiter, when detection should not decide
    sheet: str | None = None  # the workbook sheet to read (default: the first)

    @property
    def uses_sql(self) -> bool:
        return any(m.sql for m in self.entities.values())

    def entity_for_file(self, name: str) -> str | None:
        """By the template's `files` patterns; a template of a single entity takes every file."""
        stem = Path(name).name.lower()
        for pattern, entity in self.files.items():
            if Path(stem).match(pattern.lower()):
                return entity
        return next(iter(self.entities)) if len(self.entities) == 1 else None

    def relaxed(self, entity: str) -> frozenset[str]:
        mapping = self.entities.get(entity)
        return frozenset(mapping.relax) if mapping else frozenset()

    def not_month_first(self, entity: str) -> frozenset[str]:
        """The fields whose dates the template reads other than month first (`date_formats: {f: '%d.%m.%Y'}`)."""
        mapping = self.entities.get(entity)
        return frozenset(f for f, fmt in mapping.date_formats.items() if not fmt.lstrip().startswith("%m")) \
            if mapping else frozenset()


def table_name(file_name: str) -> str:
    """The table a template's SQL reads a file as: its stem, lower-case, non-alphanumerics as `_`."""
    return re.sub(r"[^0-9a-z]+", "_", Path(file_name).stem.lower()).strip("_") or "file"


def available() -> list[str]:
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = MAPPINGS_DIR / f"{name_or_path}.yaml"
    if re.fullmatch(r"[\w.-]+", name_or_path) and candidate.exists():
        return candidate
    raise MappingError(f"no mapping template {name_or_path!r}; saved templates: {', '.join(available()) or 'none'}")


def load_mapping(name_or_path: str) -> Mapping:
    path = resolve(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise MappingError(f"template {path.name} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("entities"), dict) or not raw["entities"]:
        raise MappingError(f"template {path.name} needs an `entities:` section naming at least one entity")
    entities = {name: _entity_mapping(path.name, name, spec or {}) for name, spec in raw["entities"].items()}
    files = {str(k): str(v) for k, v in (raw.get("files") or {}).items()}
    for pattern, entity in files.items():
        if entity not in ENTITIES:
            raise MappingError(f"template {path.name}: files pattern {pattern!r} names unknown entity {entity!r}")
    delimiter = raw.get("delimiter")
    delimiter = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(
        delimiter, delimiter) if delimiter is not None else None
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n"):
        raise MappingError(f"template {path.name}: `delimiter` is one character (or tab, comma, semicolon, pipe)")
    sheet = str(raw["sheet"]) if raw.get("sheet") is not None else None
    return Mapping(path.stem, str(raw.get("description", "")), entities, files, delimiter, sheet)


def _entity_mapping(template: str, name: str, spec: dict) -> EntityMapping:
    where = f"template {template}, entity {name}"
    if name not in ENTITIES:
        raise MappingError(f"{where}: unknown entity; known: {', '.join(ENTITIES)}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    entity = ENTITIES[name]
    known = {c.name for c in entity.columns()}
    columns = {str(k): str(v) for k, v in (spec.get("columns") or {}).items()}
    seen: dict[str, str] = {}
    for source, column in columns.items():
        if column not in known:
            raise MappingError(f"{where}: column {source!r} maps to {column!r}, which is not a {name} field")
        if column in seen:
            raise MappingError(f"{where}: columns {seen[column]!r} and {source!r} both map to {column}")
        seen[column] = source
    constants = {str(k): str(v) for k, v in (spec.get("constants") or {}).items()}
    for target in (*constants, *(spec.get("values") or {}), *(spec.get("date_formats") or {})):
        if target not in known:
            raise MappingError(f"{where}: {target!r} is not a {name} field")
    groups = {g.name for g in entity.groups}
    relax = tuple(str(r) for r in spec.get("relax") or ())
    for item in relax:
        if item not in known and item not in groups:
            raise MappingError(f"{where}: cannot relax {item!r}: not a {name} field or group")
    sql = spec.get("sql")
    if sql:
        produced = _select_aliases(where, sql)
        missing = [f for f in ("row_number", *entity.required())
                   if produced is not None and f not in produced and f not in constants]
        if missing:
            raise MappingError(f"{where}: the SQL does not produce {', '.join(missing)}")
        if not spec.get("file"):
            raise MappingError(f"{where}: a SQL mapping names the `file` whose row numbers it selects")
    else:
        missing = [f for f in entity.required() if f not in seen and f not in constants]
        if missing:
            raise MappingError(f"{where}: required fields not mapped: {', '.join(missing)}")
    return EntityMapping(name, columns, {k: {str(a): str(b) for a, b in v.items()} for k, v in
                                         (spec.get("values") or {}).items()},
                         {str(k): str(v) for k, v in (spec.get("date_formats") or {}).items()}, constants,
                         sql, table_name(spec["file"]) if spec.get("file") else None, relax)


def _select_aliases(where: str, sql: str) -> set[str] | None:
    """The output names of a SELECT, from DuckDB's own parser (nothing is run); None when they can only
    be known by running it (`*`, a set operation): staging then checks what the SELECT produced."""
    con = in_memory()
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.ParserException as exc:
            raise MappingError(f"{where}: the SQL does not parse: {str(exc).splitlines()[0]}") from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise MappingError(f"{where}: the SQL must be a single SELECT")
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    finally:
        con.close()
    if tree.get("error"):
        raise MappingError(f"{where}: the SQL does not parse: {tree.get('error_message', 'syntax error')}")
    node = tree["statements"][0]["node"]
    if node.get("type") != "SELECT_NODE":
        return None
    names = set()
    for item in node.get("select_list", []):
        if item.get("class") == "STAR":
            return None
        if item.get("alias"):
            names.add(item["alias"])
        elif item.get("class") == "COLUMN_REF":
            names.add(item["column_names"][-1])
    return names
