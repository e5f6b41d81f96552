-- A batch's status as it moves through the stages; its counts stay those of its last finished run.
INSERT INTO import_batch (batch_id, source, file_names, sha256, status, reason, registered_at, run_id, status_at)
VALUES (:batch_id, :source, :file_names, :sha256, :status, NULL, :registered_at, :run_id, :status_at)
ON CONFLICT (batch_id) DO UPDATE SET
    status = excluded.status, reason = NULL, sha256 = coalesce(excluded.sha256, import_batch.sha256),
    run_id = coalesce(excluded.run_id, import_batch.run_id), status_at = excluded.status_at;
