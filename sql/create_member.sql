-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- PostgreSQL; SQLite runs the same with its own types. Applied where missing by the schema migration.
CREATE TABLE IF NOT EXISTS member (
    member_id TEXT PRIMARY KEY,
    first_name TEXT,
    middle_name TEXT,
    last_name TEXT,
    birth_date DATE,
    sex TEXT,
    ssn TEXT,
    family_id TEXT,
    relationship TEXT,
    ssn_hash TEXT,
    addresses TEXT,
    emails TEXT,
    phones TEXT,
    extra TEXT,
    match_key TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    FOREIGN KEY (family_id) REFERENCES family (family_id)
);
CREATE INDEX IF NOT EXISTS member_match_key ON member (match_key);
