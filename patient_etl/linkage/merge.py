"""Possible duplicates merged into the batch's outcome, after publish (which they never delay).

Each flagged row gets a warning in the results file naming what it may duplicate by ID only (never the
other member's values): the results file publish wrote is rewritten in place, before it is delivered.
The pairs go to `YYYY-MM-DD_<file>_possible_duplicates.csv` beside it and, for a published batch, to the
target's `possible_duplicate` table: one row per pair of member IDs, kept across runs with its review
status. A batch whose linkage was off or failed has no pairs here.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from patient_etl import results
from patient_etl.batches import Batch, Home, temporary_name
from patient_etl.duck import in_memory, scalar
from patient_etl.target.schema import POSSIBLE_DUPLICATE, REVIEW_DIFFERENT, REVIEW_OPEN, REVIEW_SAME
from patient_etl.workspace import LINKAGE, StageDb, Workspace

RESOLVED = "possible_duplicate_pairs"  # the merge's own table: the pairs by published member IDs
PAIR_FILE_COLUMNS = ("row_number", "external_id", "duplicate_of", "match_probability", "strength", "agreed_fields",
                     "similar_fields", "file")


def available(db: StageDb) -> bool:
    """Whether this run's linkage stage left pairs (it is absent when off or failed)."""
    if not db.workspace.exists(LINKAGE):
        return False
    db.attach(LINKAGE)
    return db.has_table(db.possible_duplicates)


def merge_pairs(home: Home, target, workspace: Workspace, batch: Batch, label: str, record: bool) -> dict:
    """The linkage stage's pairs into the batch's outcome: warnings into its results file, the pairs file
    and, when `record` (the batch was published, not previewed or dry-run), the target's table."""
    db = StageDb(workspace, "merge", in_memory())  # its own tables in memory, the stages' attached read-only
    try:
        if not available(db) or not scalar(db.con, f"SELECT count(*) FROM {db.possible_duplicates}"):
            return {"flagged_rows": 0}
        reviewed = db.has_table(db.reviewed_log)
        log = db.reviewed_log if reviewed else db.row_log
        flagged = add_warnings(db, log, "amended_log")
        rewrite_results(db, "amended_log", ("since_preview",) if reviewed else (), Path(batch.results_file))
        pairs_file = write_pairs_file(home, db, batch, label)
        recorded = resolve_pairs(db, db.row_log) if record else 0
        if recorded:
            with target.begin() as conn:
                target.serialize_publishes(conn)
                record_pairs(conn, target, db, batch.batch_id, results.utc_now())
        return {"flagged_rows": flagged, "possible_duplicates_file": pairs_file, "pairs_recorded": recorded}
    finally:
        db.con.close()


def rewrite_results(db: StageDb, log: str, extra: tuple[str, ...], path: Path) -> None:
    """The batch's results file again, from `log`, in place (it has not been delivered yet)."""
    tmp = path.with_name(temporary_name(path.name))
    results.write_csv(db.con, results.results_query(log, db.batch_files, extra), tmp)
    os.replace(tmp, path)


def add_warnings(db: StageDb, log: str, into: str) -> int:
    """`into`: the row log with a warning on each flagged member row, by ID and probability, most probable
    first (an Errored row too: a keyless row matching several stored members is named its candidates).
    Returns how many rows were flagged."""
    probability = "CAST(floor(p.match_probability * 100) / 100 AS DECIMAL(3, 2))"
    db.con.execute(f"""
        CREATE OR REPLACE TABLE warnings AS
        SELECT o.file_index, o.row_number, string_agg(
                   'warning: member: possible duplicate of '
                   || CASE WHEN p.duplicate_in = 'target' THEN 'member ' || p.duplicate_of
                           WHEN p.duplicate_of LIKE 'row %' THEN p.duplicate_of || ' of this batch'
                           ELSE 'member ' || p.duplicate_of || ' (row ' || p.duplicate_of_row || ' of this batch)' END
                   || ' (match probability ' || {probability} || ')',
                   '; ' ORDER BY p.match_probability DESC, p.duplicate_of) AS warnings
        FROM {db.possible_duplicates} p JOIN {db.outcome('member')} o USING (rid)
        GROUP BY ALL""")
    db.con.execute(f"""
        CREATE OR REPLACE TABLE {into} AS
        SELECT r.* REPLACE (CASE WHEN w.warnings IS NULL THEN r.messages
                                 ELSE concat_ws('; ', r.messages, w.warnings) END AS messages)
        FROM {log} r LEFT JOIN warnings w
          ON r.entity = 'member' AND r.file_index = w.file_index AND r.row_number = w.row_number""")
    return scalar(db.con, "SELECT count(*) FROM warnings")


def resolve_pairs(db: StageDb, row_log: str) -> int:
    """The pairs by the member IDs publish gave both sides (a keyless row's matched or derived ID), as
    (`member_id_a` < `member_id_b`); rows that ended Errored are left out. Returns the count."""
    db.con.execute(f"""
        CREATE OR REPLACE TABLE {RESOLVED} AS
        WITH ids AS (SELECT o.rid, r.external_id FROM {db.outcome('member')} o
                     JOIN {row_log} r ON r.entity = 'member' AND r.file_index = o.file_index
                                      AND r.row_number = o.row_number
                     WHERE r.status <> 'Errored' AND r.external_id IS NOT NULL),
        pairs AS (SELECT a.external_id AS one,
                         CASE WHEN p.duplicate_in = 'target' THEN p.duplicate_of ELSE b.external_id END AS other,
                         p.match_probability, p.agreed_fields, p.similar_fields
                  FROM {db.possible_duplicates} p JOIN ids a ON a.rid = p.rid
                  LEFT JOIN ids b ON b.rid = p.duplicate_of_rid)
        SELECT least(one, other) AS member_id_a, greatest(one, other) AS member_id_b,
               max(match_probability) AS match_probability,
               arg_max(agreed_fields, match_probability) AS agreed_fields,
               arg_max(similar_fields, match_probability) AS similar_fields
        FROM pairs WHERE other IS NOT NULL AND one <> other
        GROUP BY ALL ORDER BY 1, 2
    """)
    return scalar(db.con, f"SELECT count(*) FROM {RESOLVED}")


def record_pairs(conn: sa.Connection, target, db: StageDb, batch_id: str, now: str) -> None:
    """Holding the publish lock: new pairs added as open with the next IDs, pairs already known (whatever
    their review status) marked as seen again."""
    columns = {"member_id_a": "text", "member_id_b": "text", "match_probability": "double",
               "agreed_fields": "text", "similar_fields": "text"}
    target.temp_table(conn, "incoming_pairs", columns)
    target.load(conn, db.con, f"SELECT {', '.join(columns)} FROM {RESOLVED}", "incoming_pairs", list(columns))
    table = POSSIBLE_DUPLICATE.name
    same = f"i.member_id_a = {table}.member_id_a AND i.member_id_b = {table}.member_id_b"
    conn.execute(sa.text(f"""
        UPDATE {table} SET last_batch_id = :batch_id, last_seen_at = :now,
            match_probability = (SELECT i.match_probability FROM incoming_pairs i WHERE {same})
        WHERE EXISTS (SELECT 1 FROM incoming_pairs i WHERE {same})"""), {"batch_id": batch_id, "now": now})
    conn.execute(sa.text(f"""
        INSERT INTO {table} (id, member_id_a, member_id_b, match_probability, agreed_fields, similar_fields, status,
                             first_batch_id, last_batch_id, found_at, last_seen_at)
        SELECT (SELECT coalesce(max(id), 0) FROM {table}) + row_number() OVER (ORDER BY i.member_id_a, i.member_id_b),
               i.member_id_a, i.member_id_b, i.match_probability, i.agreed_fields, i.similar_fields, :open,
               :batch_id, :batch_id, :now, :now
        FROM incoming_pairs i
        WHERE NOT EXISTS (SELECT 1 FROM {table} d WHERE d.member_id_a = i.member_id_a
                                                    AND d.member_id_b = i.member_id_b)"""),
        {"batch_id": batch_id, "now": now, "open": REVIEW_OPEN})
    conn.exec_driver_sql("DROP TABLE IF EXISTS incoming_pairs")


def write_pairs_file(home: Home, db: StageDb, batch: Batch, label: str = "") -> str:
    """`YYYY-MM-DD_<file>[label]_possible_duplicates.csv` beside the results file (never overwriting): IDs,
    probability and the fields that agreed, formula starts neutralised."""
    base = f"{batch.received_on.isoformat()}_{results.safe_stem(batch.display_name)}{label}_possible_duplicates"
    tmp, final = results.claim_name(home.results, base)
    n = results.neutralize
    results.write_csv(db.con, f"""
        SELECT p.row_number, {n('p.external_id')} AS external_id, {n('p.duplicate_of')} AS duplicate_of,
               p.match_probability, p.strength, {n('p.agreed_fields')} AS agreed_fields,
               {n('p.similar_fields')} AS similar_fields, {n('f.name')} AS file
        FROM {db.possible_duplicates} p JOIN {db.outcome('member')} o USING (rid)
        JOIN {db.batch_files} f ON f.file_index = o.file_index
        ORDER BY o.file_index, p.row_number, p.match_probability DESC, p.duplicate_of""", tmp)
    return str(results.link_into_place(tmp, Path(final)))


# -- review: what `patient-etl duplicates` lists and decides ----------------------------------------

DECISIONS = {"same": REVIEW_SAME, "different": REVIEW_DIFFERENT}
LISTED = ("id", "member_id_a", "member_id_b", "match_probability", "agreed_fields", "similar_fields", "status",
          "first_batch_id", "last_batch_id", "found_at", "decided_by", "decided_at")


def list_pairs(target, only_open: bool = False) -> list[dict]:
    """The target's pairs, most probable first: IDs, probability, fields, review status (no values)."""
    with target.connect() as conn:
        if POSSIBLE_DUPLICATE.name not in target.catalog(conn):
            return []
        where = f"WHERE status = '{REVIEW_OPEN}'" if only_open else ""
        rows = conn.execute(sa.text(f"SELECT {', '.join(LISTED)} FROM {POSSIBLE_DUPLICATE.name} {where} "
                                    "ORDER BY match_probability DESC, id")).mappings().all()
    return [{k: (str(v) if k.endswith("_at") and v is not None else v) for k, v in row.items()} for row in rows]


def decide_pair(target, pair_id: int, decision: str, decided_by: str, now: str) -> dict | None:
    """Record a person's decision on a pair (nothing is merged); None when there is no such pair. A pair
    decided to be different people is not flagged again (linkage reads them as known different)."""
    with target.begin() as conn:
        if POSSIBLE_DUPLICATE.name not in target.catalog(conn):
            return None
        changed = conn.execute(sa.text(f"UPDATE {POSSIBLE_DUPLICATE.name} SET status = :status, decided_by = :by, "
                                       "decided_at = :now WHERE id = :id"),
                               {"status": DECISIONS[decision], "by": decided_by, "now": now, "id": pair_id})
        if not changed.rowcount:
            return None
    return next(p for p in list_pairs(target) if p["id"] == pair_id)
