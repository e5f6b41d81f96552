-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- PostgreSQL; SQLite runs the same with its own types. Applied where missing by the schema migration.
CREATE TABLE IF NOT EXISTS import_batch (
    batch_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    file_names TEXT NOT NULL,
    sha256 TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    rows_total BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL DEFAULT 0,
    updated BIGINT NOT NULL DEFAULT 0,
    unchanged BIGINT NOT NULL DEFAULT 0,
    errored BIGINT NOT NULL DEFAULT 0,
    results_file TEXT,
    registered_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    run_id TEXT,
    status_at TIMESTAMPTZ,
    held_reason TEXT,
    decided_by TEXT,
    decided_at TIMESTAMPTZ,
    row_log_run_id TEXT
);

CREATE TABLE IF NOT EXISTS import_run (
    run_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    rows_total BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL DEFAULT 0,
    updated BIGINT NOT NULL DEFAULT 0,
    unchanged BIGINT NOT NULL DEFAULT 0,
    errored BIGINT NOT NULL DEFAULT 0,
    results_file TEXT,
    finished_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS import_run_batch ON import_run (batch_id, finished_at);

CREATE TABLE IF NOT EXISTS import_run_row (
    run_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    file_index INTEGER NOT NULL,
    row_number BIGINT NOT NULL,
    entity TEXT NOT NULL,
    external_id TEXT,
    status TEXT NOT NULL,
    messages TEXT,
    changed_fields TEXT,
    PRIMARY KEY (run_id, entity, file_index, row_number)
);

CREATE VIEW import_row AS
SELECT r.batch_id, r.file_index, r.row_number, r.entity, r.external_id, r.status, r.messages, r.changed_fields, r.run_id
FROM import_batch b JOIN import_run_row r ON r.run_id = b.row_log_run_id AND r.batch_id = b.batch_id;
