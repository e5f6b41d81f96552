-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- PostgreSQL; SQLite runs the same with its own types. Applied where missing by the schema migration.
CREATE TABLE IF NOT EXISTS eop (
    eop_id TEXT PRIMARY KEY,
    claim_id TEXT,
    payment_date DATE,
    paid_amount NUMERIC(14,2),
    patient_responsibility NUMERIC(14,2),
    adjustment_amount NUMERIC(14,2),
    adjustment_codes TEXT,
    check_number TEXT,
    extra TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    FOREIGN KEY (claim_id) REFERENCES claim (claim_id)
);
