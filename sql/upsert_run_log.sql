-- One row per processing run that ended, written with the data it applied. History is never overwritten:
-- the failure path that ends a run which had already committed leaves the committed outcome in place.
INSERT INTO import_run (run_id, batch_id, status, reason, rows_total, created, updated, unchanged, errored,
                        results_file, finished_at)
VALUES (:run_id, :batch_id, :status, :reason, :rows_total, :created, :updated, :unchanged, :errored,
        :results_file, :finished_at)
ON CONFLICT (run_id) DO NOTHING;
