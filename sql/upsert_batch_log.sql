-- One row per batch: its status and, once a run ends, that run's outcome (history: upsert_run_log.sql).
INSERT INTO import_batch (batch_id, source, file_names, sha256, status, reason, rows_total, created, updated,
                          unchanged, errored, results_file, registered_at, finished_at, run_id, status_at,
                          held_reason, decided_by, decided_at)
VALUES (:batch_id, :source, :file_names, :sha256, :status, :reason, :rows_total, :created, :updated,
        :unchanged, :errored, :results_file, :registered_at, :finished_at, :run_id, :status_at,
        :held_reason, :decided_by, :decided_at)
ON CONFLICT (batch_id) DO UPDATE SET
    status = excluded.status, reason = excluded.reason, rows_total = excluded.rows_total,
    created = excluded.created, updated = excluded.updated, unchanged = excluded.unchanged,
    errored = excluded.errored, results_file = excluded.results_file, finished_at = excluded.finished_at,
    sha256 = excluded.sha256, run_id = excluded.run_id, status_at = excluded.status_at,
    held_reason = excluded.held_reason, decided_by = excluded.decided_by, decided_at = excluded.decided_at;
