"""The entities patient_etl imports, each declared once (see `spec.py`)."""

from patient_etl.entities.member import MEMBER
from patient_etl.entities.spec import Entity

ENTITIES: dict[str, Entity] = {e.name: e for e in (MEMBER,)}
FORMAT_ALIASES = {"roster": "member", "patient": "member", "patients": "member"}


def entity_named(name: str) -> Entity:
    key = FORMAT_ALIASES.get(name.lower(), name.lower())
    if key not in ENTITIES:
        raise KeyError(f"unknown entity {name!r}; known: roster, {', '.join(ENTITIES)}")
    return ENTITIES[key]
