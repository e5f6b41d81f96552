"""Target DDL, derived from the entity spec."""

from __future__ import annotations

from patient_etl.entities.spec import Entity, stored_columns


def create_table_sql(entity: Entity) -> str:
    """Target DDL. One text for PostgreSQL and SQLite (SQLite takes any type name by affinity)."""
    lines = [f"{name} {target_type}" + (" PRIMARY KEY" if name == entity.key else "")
             for name, _, target_type in stored_columns(entity)]
    lines += ["created_batch_id TEXT", "updated_batch_id TEXT", "created_at TIMESTAMPTZ", "updated_at TIMESTAMPTZ"]
    lines += [f"FOREIGN KEY ({ref.field}) REFERENCES {ref.entity} ({ref.field})" for ref in entity.references]
    sql = f"CREATE TABLE IF NOT EXISTS {entity.table} (\n    " + ",\n    ".join(lines) + "\n);\n"
    if entity.match_on:
        sql += f"CREATE INDEX IF NOT EXISTS {entity.table}_match_key ON {entity.table} (match_key);\n"
    return sql
