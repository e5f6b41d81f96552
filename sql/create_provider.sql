-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- PostgreSQL; SQLite runs the same with its own types. Applied where missing by the schema migration.
CREATE TABLE IF NOT EXISTS provider (
    provider_id TEXT PRIMARY KEY,
    provider_name TEXT,
    npi TEXT,
    taxonomy_code TEXT,
    specialty TEXT,
    organization_name TEXT,
    phone TEXT,
    addresses TEXT,
    extra TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ
);
