-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- PostgreSQL; SQLite runs the same with its own types. Applied where missing by the schema migration.
CREATE TABLE IF NOT EXISTS schema_migration (
    id BIGINT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL,
    description TEXT NOT NULL,
    statement TEXT NOT NULL,
    spec_version TEXT NOT NULL
);
