"""Writes `sql/create_<entity>.sql` from the spec: `python -m patient_etl.entities.ddl`."""

from patient_etl.entities import ENTITIES
from patient_etl.entities.normalize import create_table_sql
from patient_etl.publish.target import SQL_DIR

HEADER = "-- Generated from the entity spec by `python -m patient_etl.entities.ddl`, not by hand.\n"


def write_all() -> None:
    for entity in ENTITIES.values():
        (SQL_DIR / f"create_{entity.name}.sql").write_text(HEADER + create_table_sql(entity))


if __name__ == "__main__":
    write_all()
