-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- PostgreSQL; SQLite runs the same with its own types. Applied where missing by the schema migration.
CREATE TABLE IF NOT EXISTS care (
    care_id TEXT PRIMARY KEY,
    member_id TEXT,
    provider_id TEXT,
    start_date DATE,
    end_date DATE,
    care_type TEXT,
    diagnosis_codes TEXT,
    description TEXT,
    extra TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    FOREIGN KEY (member_id) REFERENCES member (member_id),
    FOREIGN KEY (provider_id) REFERENCES provider (provider_id)
);
