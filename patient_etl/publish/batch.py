"""Publishing a batch: every entity applied and both logs written in one target transaction, then
the results files. A file-level failure is recorded here too, with nothing applied."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from patient_etl.batches import Batch, Home
from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import Entity
from patient_etl.publish import results
from patient_etl.publish.references import check_references
from patient_etl.target import TargetSchemaError, maybe_die_before_commit, open_target, utc_now

STATUSES = ("Created", "Updated", "Unchanged", "Errored")


@dataclass
class PublishSummary:
    status: str
    counts: dict[str, int]
    results_file: str
    errors_files: list[str] = field(default_factory=list)
    by_entity: dict[str, dict[str, int]] = field(default_factory=dict)
    reason: str | None = None


def publish_order(entities: list[Entity]) -> list[Entity]:
    """Parents before children, following the references."""
    ordered: list[Entity] = []
    pending = list(entities)
    names = {e.name for e in entities}
    while pending:
        ready = [e for e in pending if all(r.entity not in names or r.entity in {o.name for o in ordered}
                                           for r in e.references)]
        if not ready:
            raise ValueError("entity references form a cycle")
        ordered += ready
        pending = [e for e in pending if e not in ready]
    return ordered


def batch_row(batch: Batch, status: str, counts: dict[str, int], results_file: str | None,
              reason: str | None = None) -> dict:
    return {
        "batch_id": batch.batch_id, "source": batch.source, "file_names": json.dumps([f.name for f in batch.files]),
        "sha256": json.dumps({f["name"]: f["sha256"] for f in batch.landed}) if batch.landed else None,
        "status": status, "reason": reason, "rows_total": sum(counts.values()),
        "created": counts.get("Created", 0), "updated": counts.get("Updated", 0),
        "unchanged": counts.get("Unchanged", 0), "errored": counts.get("Errored", 0),
        "results_file": results_file, "registered_at": batch.registered_at, "finished_at": utc_now(),
    }


def _results_base(batch: Batch, dry_run: bool) -> str:
    label = "_dry-run" if dry_run else ""
    return f"{batch.received_on.isoformat()}_{results.safe_stem(batch.display_name)}{label}_results"


def publish_batch(home: Home, batch: Batch, target_url: str, dry_run: bool = False) -> PublishSummary:
    folder = home.batch_staging(batch.batch_id)
    db = folder / "publish.duckdb"
    db.unlink(missing_ok=True)
    duck = duckdb.connect(str(db))
    target = open_target(target_url, work_dir=folder)
    try:
        duck.execute(f"ATTACH '{folder / 'staged.duckdb'}' AS staged (READ_ONLY)")
        duck.execute(f"ATTACH '{folder / 'checks.duckdb'}' AS checks (READ_ONLY)")
        present = staged_entities(folder)
        entities = publish_order([ENTITIES[name] for name in present])
        for entity in entities:
            duck.execute(f"ATTACH '{folder / (entity.name + '.duckdb')}' AS ent_{entity.name} (READ_ONLY)")
        now = utc_now()
        with target.connect() as conn:
            transaction = conn.begin()
            target.serialize_publishes(conn)
            target.migrate(conn, list(ENTITIES.values()))
            check_references(conn, target, duck, entities)
            for entity in entities:  # what is applied: the normalized rows whose references hold
                duck.execute(f"""
                    CREATE VIEW {entity.table} AS SELECT * FROM ent_{entity.name}.{entity.table}
                    WHERE rid NOT IN (SELECT rid FROM ref_messages WHERE entity = '{entity.name}'
                                      AND severity = 'error')""")
            for entity in entities:
                target.apply_entity(conn, duck, entity, batch.batch_id, now, write=not dry_run)
            _build_row_log(duck, batch.batch_id, entities)
            counts = dict(duck.execute("SELECT status, count(*) FROM row_log GROUP BY status").fetchall())
            counts = {s: counts.get(s, 0) for s in STATUSES}
            status = "Finished with Errors" if counts["Errored"] else "Finished"
            tmp, final = results.claim_name(home.results, _results_base(batch, dry_run))
            results.write_csv(duck, results.results_query("row_log", "staged.batch_files"), tmp)
            if dry_run:
                transaction.rollback()
            else:
                target.write_logs(conn, duck, "SELECT * FROM row_log",
                                  batch_row(batch, status, counts, final.name))
                maybe_die_before_commit()
                transaction.commit()
        results_file = results.link_into_place(tmp, final)
        errors_files = _write_errors_files(home, duck, batch, dry_run)
        by_entity = {
            e: dict(duck.execute("SELECT status, count(*) FROM row_log WHERE entity = ? GROUP BY status",
                                 [e]).fetchall())
            for e in present
        }
        return PublishSummary(status, counts, str(results_file), errors_files, by_entity)
    except TargetSchemaError as exc:  # nothing applied: the transaction rolled back with the connection
        results_file = record_failure(home, batch, None if dry_run else target_url, exc.reason, "target")
        return PublishSummary("Failed", {s: 0 for s in STATUSES}, results_file, reason=exc.reason)
    finally:
        duck.close()
        target.dispose()


def _build_row_log(duck: duckdb.DuckDBPyConnection, batch_id: str, entities: list[Entity]) -> None:
    selects = []
    for e in entities:
        checked_cols = {r[0] for r in duck.execute(f"SELECT * FROM checks.checked_{e.name} LIMIT 0").description}
        raw_key = f"c.{e.key}" if e.key in checked_cols else "NULL"
        selects.append(f"""
            SELECT '{batch_id}' AS batch_id, o.file_index, o.row_number, '{e.name}' AS entity,
                   coalesce(p.key, {raw_key}) AS external_id,
                   CASE WHEN o.errored OR p.status = 'Conflict' OR r.errors IS NOT NULL THEN 'Errored'
                        ELSE p.status END AS status,
                   nullif(concat_ws('; ',
                       CASE WHEN p.status = 'Conflict' THEN 'error: {e.key}: the same record as row '
                            || first.row_number || ' of this batch' END,
                       r.errors, o.messages, r.warnings), '') AS messages,
                   nullif(rtrim(p.changed_fields, ','), '') AS changed_fields
            FROM checks.row_outcome_{e.name} o
            LEFT JOIN outcome_{e.name} p USING (rid)
            LEFT JOIN checks.checked_{e.name} c USING (rid)
            LEFT JOIN checks.row_outcome_{e.name} first ON first.rid = p.first_rid
            LEFT JOIN (SELECT rid, string_agg(message, '; ') FILTER (severity = 'error') AS errors,
                              string_agg(message, '; ') FILTER (severity = 'warning') AS warnings
                       FROM ref_messages WHERE entity = '{e.name}' GROUP BY rid) r USING (rid)""")
    duck.execute("CREATE OR REPLACE TABLE row_log AS " + " UNION ALL ".join(selects))


def _write_errors_files(home: Home, duck: duckdb.DuckDBPyConnection, batch: Batch, dry_run: bool) -> list[str]:
    written = []
    files = duck.execute(
        "SELECT f.file_index, f.name FROM staged.batch_files f WHERE f.entity <> 'source' AND EXISTS "
        "(SELECT 1 FROM row_log r WHERE r.file_index = f.file_index AND r.status = 'Errored') ORDER BY 1"
    ).fetchall()
    for file_index, name in files:
        headers = duck.execute(
            "SELECT position, header, column_name FROM staged.header_map WHERE file_index = ? ORDER BY position",
            [file_index],
        ).fetchall()
        label = "_dry-run" if dry_run else ""
        tmp, final = results.claim_name(
            home.results, f"{batch.received_on.isoformat()}_{results.safe_stem(name)}{label}_errors")
        query = results.errors_query(f"staged.raw_{file_index}", headers, "row_log", file_index)
        results.write_csv(duck, query, tmp)
        written.append(str(results.link_into_place(tmp, final)))
    return written


def record_failure(home: Home, batch: Batch, target_url: str | None, reason: str, scope: str = "file") -> str:
    """A batch that failed at file level (or `scope`): a results file saying why, and the batch log; no data."""
    tmp, final = results.claim_name(home.results, _results_base(batch, False))
    duck = duckdb.connect()
    try:
        results.write_csv(duck, f"""
            SELECT NULL::BIGINT AS row_number, NULL AS entity, NULL AS external_id, 'Failed' AS status,
                   {results.neutralize('?')} AS messages""".replace("?", _sql_literal(f"error: {scope}: " + reason)), tmp)
    finally:
        duck.close()
    path = results.link_into_place(tmp, final)
    if target_url:
        target = open_target(target_url)
        try:
            target.record_batch(batch_row(batch, "Failed", {}, path.name, reason), list(ENTITIES.values()))
        finally:
            target.dispose()
    return str(path)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def staged_entities(folder: Path) -> list[str]:
    """The entities a batch holds: one `staged_<entity>` table each."""
    with duckdb.connect(str(folder / "staged.duckdb"), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    return sorted(t.removeprefix("staged_") for t in tables if t.startswith("staged_"))
