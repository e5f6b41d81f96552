"""The entities patient_etl imports, each declared once (see `spec.py`)."""

from patient_etl.entities.care import CARE
from patient_etl.entities.claim import CLAIM
from patient_etl.entities.eop import EOP
from patient_etl.entities.family import FAMILY
from patient_etl.entities.member import MEMBER
from patient_etl.entities.provider import PROVIDER
from patient_etl.entities.spec import Entity

# Parents before children: the target DDL is created in this order and its foreign keys need their parents.
ENTITIES: dict[str, Entity] = {e.name: e for e in (FAMILY, MEMBER, PROVIDER, CARE, CLAIM, EOP)}
FORMAT_ALIASES = {"roster": "member", "patient": "member", "patients": "member", "families": "family",
                  "eob": "eop", "eobs": "eop", "eops": "eop"}


def entity_named(name: str) -> Entity:
    key = FORMAT_ALIASES.get(name.lower(), name.lower())
    if key not in ENTITIES:
        raise KeyError(f"unknown entity {name!r}; known: roster, {', '.join(ENTITIES)}")
    return ENTITIES[key]
