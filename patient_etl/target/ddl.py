"""Writes the target's SQL in sql/ from the spec: `python -m patient_etl.target.ddl`.

The files are the PostgreSQL text (the production target, what a DBA reviews); a test keeps them in
step with what the targets run. SQLite runs the same statements generated with its own types
(`SqliteTarget.TYPES`), so one set of files would misstate one of the two; the upserts are the same on both.
"""

from __future__ import annotations

from patient_etl.entities import ENTITIES
from patient_etl.target import SQL_DIR
from patient_etl.target.postgres import PostgresTarget
from patient_etl.target.schema import (
    IMPORT_BATCH,
    IMPORT_ROW,
    IMPORT_RUN,
    IMPORT_RUN_ROW,
    POSSIBLE_DUPLICATE,
    SCHEMA_MIGRATION,
    entity_table,
)

HEADER = "-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.\n"
CREATE = "-- PostgreSQL; SQLite runs the same with its own types. Applied where missing by the schema migration.\n"
UPSERT = ("-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. Into an empty table the rows\n"
          "-- are loaded in key order and inserted without the ORDER BY. The same on SQLite, except that its insert\n"
          "-- joins each row to its outcome (Target.upsert_statements).\n")


def generated_files() -> dict[str, str]:
    """sql/ file name -> its text."""
    ddl = PostgresTarget.create_table_sql
    files = {"create_import_log.sql": "\n".join([*(ddl(t) for t in (IMPORT_BATCH, IMPORT_RUN, IMPORT_RUN_ROW)),
                                                  IMPORT_ROW.create_statement() + ";\n"]),
             "create_schema_migration.sql": ddl(SCHEMA_MIGRATION),
             "create_possible_duplicate.sql": ddl(POSSIBLE_DUPLICATE)}
    for entity in ENTITIES.values():
        files[f"create_{entity.name}.sql"] = ddl(entity_table(entity))
        files[f"upsert_{entity.name}.sql"] = PostgresTarget.upsert_sql(entity)
    return {name: HEADER + (UPSERT if name.startswith("upsert_") else CREATE) + text for name, text in files.items()}


def write_all() -> None:
    for name, text in generated_files().items():
        (SQL_DIR / name).write_text(text)


if __name__ == "__main__":
    write_all()
