"""Publishing a batch: every entity applied and both logs written in one target transaction; the results
files written beside the target's writes, and linked into place once the transaction ends."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from patient_etl import results
from patient_etl.batches import Batch, Home
from patient_etl.entities import ENTITIES
from patient_etl.entities.spec import Entity
from patient_etl.publish import review
from patient_etl.publish.references import check_references
from patient_etl.results import STATUSES, batch_row, results_base, utc_now
from patient_etl.target import maybe_die_after_commit, maybe_die_before_commit, open_target
from patient_etl.workspace import CHECKS, PUBLISH, ROW_LOG, STAGED, StageDb, Workspace, entity_stage

if TYPE_CHECKING:
    from patient_etl.target.base import EntityOutcome


@dataclass
class PublishSummary:
    status: str
    counts: dict[str, int]
    results_file: str
    errors_files: list[str] = field(default_factory=list)
    by_entity: dict[str, dict[str, int]] = field(default_factory=dict)
    recovered_from: str | None = None  # the run whose committed outcome this is (it ended before recording it)
    held: str | None = None  # held for review: why (nothing was written to the target)
    changed_since_preview: dict[str, int] | None = None  # approval: outcomes that differ from the preview


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


def publish_batch(home: Home, batch: Batch, target_url: str, dry_run: bool = False,
                  run_id: str | None = None, hold: Callable[[dict[str, int]], str | None] | None = None,
                  previewed: Path | None = None) -> PublishSummary:
    """Apply the batch and write its logs in one target transaction; its results files are written on a
    thread as soon as the outcomes are decided, while the target writes (a file that cannot be written
    fails the publish before its commit), and linked into place once the transaction ends.

    When the target holds a run of this batch whose end the registry never recorded (the process died
    right after the commit), nothing is applied again: that run's committed outcome is reported, and its
    results files are written from the row log it committed. `hold`, given the would-be counts, says why
    to hold the batch for review (then it is previewed: rolled back like a dry run); `previewed`, at
    approval, the preview's outcomes to compare with.
    """
    workspace = Workspace(home, batch.batch_id)
    present = workspace.staged_entities()
    entities = publish_order([ENTITIES[name] for name in present])
    reads = [STAGED, CHECKS, *(entity_stage(e.name) for e in entities)]
    target = open_target(target_url, work_dir=workspace.folder)
    run_id = run_id or f"local-{uuid.uuid4().hex}"
    recovered = None
    try:
        with workspace.open(PUBLISH, reads=reads) as db, contextlib.ExitStack() as stack:
            duck = db.con
            now = utc_now()
            with target.connect() as conn:
                transaction = conn.begin()
                target.serialize_publishes(conn)
                target.bulk_settings(conn)
                # Raises TargetSchemaError (nothing applied) when the target differs in a way it never repairs.
                target.migrate(conn, list(ENTITIES.values()))
                committed = None if dry_run else target.latest_run(conn, batch.batch_id)
                if committed and committed["status"] != "Failed" and committed["run_id"] not in batch.run_ids:
                    recovered = committed
                    target.fetch_run_rows(conn, duck, committed["run_id"], ROW_LOG)
                    transaction.rollback()
                    decided = []
                else:
                    decided = _decide(conn, target, db, batch, entities)
                counts = dict(duck.execute(f"SELECT status, count(*) FROM {ROW_LOG} GROUP BY status").fetchall())
                counts = {s: counts.get(s, 0) for s in STATUSES}
                status = "Finished with Errors" if counts["Errored"] else "Finished"
                held = None if dry_run or recovered or hold is None else hold(counts)
                base = review.preview_base(batch) if held else results_base(batch, dry_run)
                tmp, final = results.claim_name(home.results, base)
                log, extra, changed = ROW_LOG, (), None
                if previewed is not None:
                    changed = review.compare_with_preview(duck, ROW_LOG, previewed)
                    log, extra = review.REVIEWED_LOG, ("since_preview",)
                # The row log is final: the files are written while the target writes the entities and
                # the logs (the Python process only waits on it then; the workbook is Python, cell by cell).
                files = stack.enter_context(_ResultsFiles(home, db, batch, results.file_label(dry_run, bool(held)),
                                                          results.results_query(log, db.batch_files, extra),
                                                          tmp, final))
                if dry_run or held:
                    transaction.rollback()
                    if held:
                        review.save_preview(duck, ROW_LOG, review.preview_outcomes(workspace))
                elif not recovered:
                    for entity, outcome in decided:
                        target.write_entity(conn, entity, outcome, batch.batch_id, now)
                    target.write_logs(conn, duck, f"SELECT * FROM {ROW_LOG}",
                                      batch_row(batch, status, counts, final.name, run_id=run_id))
                    files.wait()  # raises what stopped a file, before the commit: the publish rolls back
                    maybe_die_before_commit()
                    transaction.commit()
                    maybe_die_after_commit()
            results_file, errors_files = files.link_into_place()
            by_entity = {
                e: dict(duck.execute(f"SELECT status, count(*) FROM {ROW_LOG} WHERE entity = ? GROUP BY status",
                                     [e]).fetchall())
                for e in present
            }
        return PublishSummary(status, counts, str(results_file), errors_files, by_entity,
                              recovered_from=recovered["run_id"] if recovered else None, held=held,
                              changed_since_preview=changed)
    finally:
        target.dispose()


def _decide(conn, target, db: StageDb, batch: Batch, entities: list[Entity]) -> list[tuple[Entity, EntityOutcome]]:
    """Every entity's rows whose references hold, loaded into the target and their outcomes decided (the
    entities' own tables are not written yet: each entity's outcome depends only on its own table); the
    row log."""
    duck = db.con
    check_references(conn, target, db, entities)
    for entity in entities:  # what is applied: the normalized rows whose references hold
        duck.execute(f"""
            CREATE VIEW {entity.table} AS SELECT * FROM {db.normalized(entity.name)}
            WHERE rid NOT IN (SELECT rid FROM ref_messages WHERE entity = '{entity.name}'
                              AND severity = 'error')""")
    decided = [(entity, target.decide_entity(conn, duck, entity)) for entity in entities]
    _build_row_log(db, batch.batch_id, entities)
    return decided


def _build_row_log(db: StageDb, batch_id: str, entities: list[Entity]) -> None:
    selects = []
    for e in entities:
        checked, outcome = db.checked(e.name), db.outcome(e.name)
        checked_cols = {r[0] for r in db.con.execute(f"SELECT * FROM {checked} LIMIT 0").description}
        raw_key = f"c.{e.key}" if e.key in checked_cols else "NULL"
        selects.append(f"""
            SELECT '{batch_id}' AS batch_id, o.file_index, o.row_number, '{e.name}' AS entity,
                   coalesce(p.key, {raw_key}) AS external_id,
                   CASE WHEN o.errored OR p.status IN ('Conflict', 'Ambiguous') OR r.errors IS NOT NULL
                        THEN 'Errored' ELSE p.status END AS status,
                   nullif(concat_ws('; ',
                       CASE WHEN p.status = 'Conflict' THEN 'error: {e.key}: the same record as row '
                            || first.row_number || ' of this batch' END,
                       r.errors, o.messages, r.warnings, p.message), '') AS messages,
                   nullif(rtrim(p.changed_fields, ','), '') AS changed_fields
            FROM {outcome} o
            LEFT JOIN outcome_{e.name} p USING (rid)
            LEFT JOIN {checked} c USING (rid)
            LEFT JOIN {outcome} first ON first.rid = p.first_rid
            LEFT JOIN (SELECT rid, string_agg(message, '; ') FILTER (severity = 'error') AS errors,
                              string_agg(message, '; ') FILTER (severity = 'warning') AS warnings
                       FROM ref_messages WHERE entity = '{e.name}' GROUP BY rid) r USING (rid)""")
    # In the history's key order (Target.write_logs streams it as it lies): sorted here, before the
    # results files' thread and the target's writes begin, not while they run (the sort of a 10M-row
    # log at DuckDB's limit beside them was the publish's peak).
    db.con.execute(f"CREATE OR REPLACE TABLE {ROW_LOG} AS SELECT * FROM (" + " UNION ALL ".join(selects)
                   + ") ORDER BY entity, file_index, row_number")


@dataclass
class _ErrorsFile:
    """One file's errors CSV and workbook: what to write, where, and where it goes."""
    entity: str
    headers: list[tuple[int, str, str | None]]
    csv_query: str
    xlsx_query: str
    csv_tmp: Path
    csv_final: Path
    xlsx_tmp: Path
    xlsx_final: Path


class _ResultsFiles:
    """The batch's results file and its errors files (a CSV and a workbook for each file with errored
    rows), written from the final row log on a thread of their own while the target writes the entities
    and the logs (the workbook is written cell by cell in Python, seconds per 10,000 errored rows, while
    the run mostly waits on the target), then linked into place: only once the batch's outcome is
    committed (or rolled back, for a preview or a dry run). When the publish fails instead, the thread is
    stopped and waited for, and its files removed."""

    def __init__(self, home: Home, db: StageDb, batch: Batch, label: str, results_query: str, results_tmp: Path,
                 results_final: Path):
        self.error: BaseException | None = None
        self.linked = False
        self.results_query, self.results_tmp, self.results_final = results_query, results_tmp, results_final
        # What to write, read here: the thread touches only its own cursor, never the publish's connection.
        self.files: list[_ErrorsFile] = []
        found = db.con.execute(
            f"SELECT f.file_index, f.name, f.entity FROM {db.batch_files} f WHERE EXISTS "
            f"(SELECT 1 FROM {ROW_LOG} r WHERE r.file_index = f.file_index AND r.status = 'Errored') ORDER BY 1"
        ).fetchall()
        for file_index, name, entity in found:
            if entity not in ENTITIES:  # a file a SQL template reads: its rows were transformed, not echoed
                continue
            headers = db.con.execute(
                f"SELECT position, header, column_name FROM {db.header_map} WHERE file_index = ? ORDER BY position",
                [file_index],
            ).fetchall()
            base = f"{batch.received_on.isoformat()}_{results.safe_stem(name)}{label}_errors"
            csv_query, xlsx_query = (
                results.errors_query(db.raw(file_index), headers, ROW_LOG, file_index, entity=entity,
                                     neutralized=neutralized, rejected=db.rejected(file_index))
                for neutralized in (True, False))
            # Two files of a batch may share a name: each one's temporary files are its own.
            self.files.append(_ErrorsFile(entity, headers, csv_query, xlsx_query,
                                          *results.claim_name(home.results, base, part=file_index),
                                          *results.claim_name(home.results, base, ".xlsx", part=file_index)))
        self.cursor = db.con.cursor()  # DuckDB: a connection object serves one thread at a time
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._write, name="results-files", daemon=True)

    def __enter__(self) -> _ResultsFiles:
        self.thread.start()
        return self

    def __exit__(self, failed, *exc) -> None:
        if failed is not None:  # the files are not wanted: no waiting for them to be finished
            self.stop.set()
            self.cursor.interrupt()
        self.thread.join()
        self.cursor.close()
        if not self.linked:
            for path in (self.results_tmp, *(p for f in self.files for p in (f.csv_tmp, f.xlsx_tmp))):
                with contextlib.suppress(OSError):  # never in place of what failed the publish
                    path.unlink(missing_ok=True)

    def _write(self) -> None:
        try:
            results.write_csv(self.cursor, self.results_query, self.results_tmp)
            for file in self.files:
                if self.stop.is_set():
                    return
                results.write_errors_csv(self.cursor, file.csv_query, file.headers, file.csv_tmp)
                results.write_errors_xlsx(self.cursor, file.xlsx_query, file.entity, file.headers, file.xlsx_tmp,
                                          stop=self.stop)
        except BaseException as error:  # raised in the publish's thread, by wait
            self.error = error

    def wait(self) -> None:
        """Once every file is written; raises what stopped one."""
        self.thread.join()
        if self.error is not None:
            raise self.error

    def link_into_place(self) -> tuple[Path, list[str]]:
        """The results file's path and the errors files' paths, once written and linked into place."""
        self.wait()
        results_file = results.link_into_place(self.results_tmp, self.results_final)
        linked = []
        for file in self.files:
            csv_file = results.link_into_place(file.csv_tmp, file.csv_final)
            # The workbook is named after the CSV (`..._errors-2.xlsx` beside `..._errors-2.csv`).
            xlsx_file = results.link_into_place(file.xlsx_tmp, file.xlsx_final.with_stem(csv_file.stem))
            linked += [str(csv_file), str(xlsx_file)]
        self.linked = True
        return results_file, linked
