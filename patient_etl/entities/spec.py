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
        """Normalized header -> staged column name, with every alias and `-N` spelling (built once)."""
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
                    base = header_key(spelling)
                    index[base] = group.column(f.name, 0)
                    for i in range(1, MAX_GROUP_INDEX + 1):
                        index[f"{base}{i}"] = group.column(f.name, i)
        object.__setattr__(self, "_header_index", index)  # frozen: a cache, not state
        return index

    def required(self) -> list[str]:
        return [f.name for f in self.fields if f.required]


def map_header(entity: Entity, header: str) -> str | None:
    """The staged column a source header maps to, or None when the header is unknown.

    `email-3`, `email_3`, `Email 3` and `addressLine1-2` carry a group index after a separator; the
    separator matters, because `addressLine1` alone is the plain group's line 1.
    """
    index = entity.header_index()
    match = re.fullmatch(r"(.*?\S)[\s_-]+(\d{1,2})", header.strip())
    if match and 1 <= int(match.group(2)) <= MAX_GROUP_INDEX:
        base = header_key(match.group(1))
        column = index.get(base)
        if column is not None and any(
            column == g.column(f.name, 0) for g in entity.groups for f in g.fields
        ):
            return index.get(f"{base}{int(match.group(2))}")
    return index.get(header_key(header))


def _name_part(expr: str) -> str:
    return f"coalesce(regexp_replace(lower(strip_accents({expr})), '[^a-z0-9]', '', 'g'), '')"


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
