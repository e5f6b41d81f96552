"""The entity spec: each entity's fields, rules, key and references, declared once.

Staging columns, header aliases, the Great Expectations suite, the cross-row rules, the normalization
SQL, the target DDL and the CSV template are all derived from an `Entity`; nothing downstream names
a field itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from patient_etl.entities.kinds import TEXT, Check, Kind

MAX_GROUP_INDEX = 10

def header_key(header: str) -> str:
    """Headers match case-, space-, underscore- and punctuation-insensitively."""
    return re.sub(r"[^0-9a-z]", "", header.lower())


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind = TEXT
    required: bool = False
    aliases: tuple[str, ...] = ()
    describe: str = ""
    options: dict = field(default_factory=dict, hash=False, compare=False)
    references: str | None = None  # the entity whose key this field holds

    def checks(self) -> list[Check]:
        return self.kind.checks(self.options)


def refers_to(parent: Entity, *more: str, required: bool = True, describe: str = "") -> Field:
    """A field holding `parent`'s key, spelled as the parent says other files name it (plus `more`)."""
    return Field(parent.key, required=required, aliases=(*parent.referred_as, *more), describe=describe,
                 references=parent.name)


@dataclass(frozen=True)
class Group:
    """Indexed multi-value columns: a plain group and `-1`..`-10`, stored as one JSON list."""

    name: str
    stored_as: str
    fields: tuple[Field, ...]
    complete: tuple[str, ...] = ()  # members required once any member of an index has a value
    numbered_lines: tuple[str, ...] = ()  # spellings a number follows as the line (`Address 2`), never the group

    def column(self, member: str, index: int) -> str:
        return member if index == 0 else f"{member}_{index}"

    def label(self, member: str, index: int) -> str:
        return member if index == 0 else f"{member}-{index}"


@dataclass(frozen=True)
class Reference:
    field: str
    entity: str


@dataclass(frozen=True)
class NotBefore:
    """A rule across two date fields of a row: `later` may not be before `earlier` (when both are set)."""

    later: str
    earlier: str


@dataclass(frozen=True)
class TotalNotAbove:
    """A rule across rows and batches: the `amount`s of the rows that reference one parent (this batch's
    plus what the target already holds from earlier batches) add up to no more than the parent's `limit`.
    Every row of an exceeded parent gets the message (a warning unless said otherwise)."""

    amount: str  # a field of this entity
    reference: str  # a reference field of this entity
    limit: str  # a field of the referenced entity
    says: str  # the message: {parent}, {key}, {total} and {limit} are filled in
    severity: str = "warning"


@dataclass(frozen=True)
class Column:
    """One staged column: a scalar field, or one member of one index of a group."""

    name: str
    label: str
    field: Field
    group: Group | None = None
    index: int = 0


@dataclass(frozen=True)
class Entity:
    name: str
    key: str
    fields: tuple[Field, ...]
    groups: tuple[Group, ...] = ()
    match_on: tuple[str, ...] = ()  # identity when the key is empty (see README, "Matching")
    order_rules: tuple[NotBefore, ...] = ()
    totals: tuple[TotalNotAbove, ...] = ()
    referred_as: tuple[str, ...] = ()  # how other entities' files spell this entity's key
    describe: str = ""

    @property
    def table(self) -> str:
        return self.name

    @property
    def references(self) -> tuple[Reference, ...]:
        return tuple(Reference(f.name, f.references) for f in self.fields if f.references)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def columns(self) -> list[Column]:
        out = [Column(f.name, f.name, f) for f in self.fields]
        for group in self.groups:
            for index in range(MAX_GROUP_INDEX + 1):
                out += [
                    Column(group.column(f.name, index), group.label(f.name, index), f, group, index)
                    for f in group.fields
                ]
        return out

    def header_index(self) -> dict[str, str]:
        """Normalized header -> staged column name: every field's name and aliases, as written (no index);
        built once per entity."""
        cached = self.__dict__.get("_header_index")
        if cached is not None:
            return cached
        index: dict[str, str] = {}
        for f in self.fields:
            for spelling in (f.name, *f.aliases):
                index[header_key(spelling)] = f.name
        for group in self.groups:
            for f in group.fields:
                for spelling in (f.name, *f.aliases):
                    index[header_key(spelling)] = group.column(f.name, 0)
        object.__setattr__(self, "_header_index", index)  # frozen: a cache, not state
        return index

    def required(self) -> list[str]:
        return [f.name for f in self.fields if f.required]


# Columns a results or errors file adds: re-uploading a fixed errors file ignores them (never stored).
MESSAGES_HEADERS = frozenset(header_key(h) for h in (
    "errors", "error", "messages", "message", "error messages", "error message", "import errors",
    "import messages", "validation errors"))


def is_messages_column(header: str) -> bool:
    """Whether a header is the messages column of our own errors file (ignored on re-upload)."""
    return header_key(header) in MESSAGES_HEADERS


# One cell holding a whole name cannot be split reliably ("Mary Ann Van Dyke", "Smith, John Jr").
WHOLE_NAME_HEADERS = frozenset(header_key(h) for h in (
    "patient name", "full name", "name", "member name", "patient full name", "patientName", "fullName"))


def map_header(entity: Entity, header: str) -> str | None:
    """The staged column a source header maps to, or None when the header is unknown.

    The whole header is tried first as a field's name or alias (`Address 2`, `Address Line 2`,
    `Street 2` are line 2). Otherwise a group index is a `-N` or `_N` suffix (`email-3`,
    `addressLine1-2`, `Address 1_2`), or a ` N` / `N` suffix right after a group field's spelling
    (`Email 3`, `Phone2`) -- except after `address`, `address line` or `street`, where a number
    is the address line, never the group. `address_line1` alone is the plain group's line 1.
    """
    index = entity.header_index()
    text = header.strip()
    whole = index.get(header_key(text))
    if whole is not None:
        return whole
    match = re.fullmatch(r"(.*?\S)\s*([-_])\s*(\d{1,2})", text) or re.fullmatch(r"(.*?\D)\s*(\d{1,2})", text)
    if match is None or not 1 <= int(match.groups()[-1]) <= MAX_GROUP_INDEX:
        return None
    base, number = header_key(match.group(1)), int(match.groups()[-1])
    spaced = len(match.groups()) == 2
    for group in entity.groups:
        if spaced and base in {header_key(s) for s in group.numbered_lines}:
            return None  # `Address 3`: a line number we do not have, not group 3
        for f in group.fields:
            if index.get(base) == group.column(f.name, 0):
                return group.column(f.name, number)
    return None


def whole_name_hint(entity: Entity, headers: list[str], missing: list[str]) -> str:
    """What to say when the names are missing but a column holds the whole name (`Patient Name`)."""
    whole = [h for h in headers if header_key(h) in WHOLE_NAME_HEADERS and map_header(entity, h) is None]
    if not whole or not {"first_name", "last_name"} & set(missing):
        return ""
    return (f"; column {whole[0]!r} holds the whole name, which cannot be split reliably "
            "(\"Mary Ann Van Dyke\", \"Smith, John Jr\"): send first and last names in their own columns "
            "(First Name, Last Name)")


def _name_part(expr: str) -> str:
    return f"coalesce(regexp_replace(lower(strip_accents({expr})), '[^a-z0-9]', '', 'g'), '')"


def derived_key_sql(match_key: str) -> str:
    """The key a keyless row gets when its match key finds no stored record: `auto-` and 20 hex digits."""
    return f"'auto-' || substr({match_key}, 1, 20)"


def match_key_sql(entity: Entity, column: str = "{name}") -> str:
    """Documented identity for rows without a key: md5 of the normalized match fields, `|`-joined.

    Names are lower-cased, accents stripped and everything but letters and digits dropped.
    `column` places each field's name in the column that holds it (its checked value when checking).
    """
    parts = []
    for name in entity.match_on:
        col = column.format(name=name)
        kind = entity.field(name).kind.name
        parts.append(_name_part(col) if kind == "text" else f"coalesce(CAST({col} AS VARCHAR), '')")
    return "md5(" + " || '|' || ".join(parts) + ")"
