-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- PostgreSQL; SQLite runs the same with its own types. Applied where missing by the schema migration.
CREATE TABLE IF NOT EXISTS possible_duplicate (
    id BIGINT PRIMARY KEY,
    member_id_a TEXT NOT NULL,
    member_id_b TEXT NOT NULL,
    match_probability DOUBLE PRECISION NOT NULL,
    agreed_fields TEXT,
    similar_fields TEXT,
    status TEXT NOT NULL DEFAULT 'open',
    first_batch_id TEXT NOT NULL,
    last_batch_id TEXT,
    found_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ,
    decided_by TEXT,
    decided_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS possible_duplicate_pair ON possible_duplicate (member_id_a, member_id_b);
CREATE INDEX IF NOT EXISTS possible_duplicate_status ON possible_duplicate (status);
