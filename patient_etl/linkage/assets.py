"""Possible duplicates: the batch's members linked within the batch and against the target, after publish.

The stage follows `published_batch`, so a slow or failing linkage never delays or blocks publishing, and
precedes `delivered_results`, so the partner's results file carries its warnings. It links the rows as
published (each with the member ID publish gave it) against the target's other members, which is the
target as it was before this batch. Its pairs are merged by `linkage.merge`: a warning per flagged row in
the results file, the pairs file, the target's `possible_duplicate` table. It never stops a batch: when
linkage is off, or fails (a corrupt model, a wrong setting, Splink itself), or runs out of time, it
materializes with `outcome` saying so and no pairs.
"""

import contextlib
import json
import os
import signal
import subprocess

import dagster as dg

from patient_etl.batches import AWAITING_APPROVAL, Batch
from patient_etl.errors import SafeError, phi_safe
from patient_etl.linkage import process
from patient_etl.linkage.merge import merge_pairs
from patient_etl.linkage.settings import LinkageSettings
from patient_etl.partitions import batches
from patient_etl.resources import PatientEtl
from patient_etl.results import file_label
from patient_etl.target import open_target
from patient_etl.target.schema import REVIEW_DIFFERENT
from patient_etl.workspace import CHECKS, LINKAGE, PUBLISH, StageDb, Workspace, entity_stage

# The target's member columns the records are built from (see linkage.records.member_records_sql).
MEMBER_COLUMNS = ("member_id", "first_name", "last_name", "birth_date", "sex", "addresses", "emails", "phones",
                  "ssn_hash", "match_key")
LINKED = ("Finished", "Finished with Errors", AWAITING_APPROVAL)  # a batch published, dry-run or previewed


class LinkageProcess(dg.ConfigurableResource):
    """The linkage process (`linkage.process`), started as the run starts (Dagster sets resources up
    then) unless one already waits, and closed unused by a run that needs no linkage."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        process.prewarm()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        process.close_unused()

    def link(self, etl: PatientEtl, batch_id: str) -> dict:
        return run_linkage(etl, batch_id)


@dg.asset(partitions_def=batches, group_name="linkage", deps=[dg.AssetKey("published_batch")])
def possible_duplicates(context: dg.AssetExecutionContext, etl: PatientEtl,
                        linkage_process: LinkageProcess) -> dg.MaterializeResult:
    """The batch's members that may be patients the target already holds, or rows sent twice."""
    batch_id = context.partition_key
    batch = etl.registry().require(batch_id)
    workspace = etl.workspace(batch_id)
    workspace.discard(LINKAGE)  # only this run's pairs are merged
    if batch.status not in LINKED:  # rejected or expired: nothing was published or previewed
        return dg.MaterializeResult(metadata={"outcome": f"not looked for: the batch is {batch.status}"})
    try:
        with phi_safe(etl.home_dir(), batch_id, "linking possible duplicates"):
            metadata = linkage_process.link(etl, batch_id) if etl.linkage_on() else {"outcome": "off"}
            if metadata["outcome"] == "linked":
                metadata |= merge(etl, workspace, batch)
    except (dg.Failure, SafeError) as exc:  # both PHI-safe by construction
        metadata = {"outcome": "failed", "reason": exc.description if isinstance(exc, dg.Failure) else str(exc)}
    if metadata["outcome"] in ("failed", "timed out"):
        workspace.discard(LINKAGE)
        context.log.warning(f"batch {batch_id}: possible duplicates not looked for ({metadata['reason']}); "
                            "the batch is published without them")
    if metadata.get("possible_duplicates_file"):
        metadata["possible_duplicates_file"] = dg.MetadataValue.path(metadata["possible_duplicates_file"])
    else:
        metadata.pop("possible_duplicates_file", None)
    return dg.MaterializeResult(metadata=metadata)


def merge(etl: PatientEtl, workspace: Workspace, batch: Batch) -> dict:
    """The pairs into the batch's results file and pairs file and, when it was published, the target."""
    held = batch.status == AWAITING_APPROVAL
    target = open_target(etl.target(), work_dir=workspace.folder)
    try:
        return merge_pairs(etl.home_dir(), target, workspace, batch, file_label(batch.dry_run, held),
                           record=not (batch.dry_run or held))
    finally:
        target.dispose()


def linkage_settings(etl: PatientEtl) -> LinkageSettings:
    """The linkage thresholds and engine from the settings (a ValueError names the setting that is wrong)."""
    defaults = LinkageSettings()
    try:
        possible = float(etl.linkage_possible) if etl.linkage_possible else defaults.possible
        likely = float(etl.linkage_likely) if etl.linkage_likely else max(defaults.likely, possible)
    except ValueError:
        raise ValueError("PATIENT_ETL_LINKAGE_POSSIBLE and _LIKELY must be numbers between 0 and 1") from None
    try:
        max_pairs = float(etl.linkage_max_pairs) if etl.linkage_max_pairs else defaults.max_pairs
    except ValueError:
        raise ValueError("PATIENT_ETL_LINKAGE_MAX_PAIRS must be a number of pairs") from None
    return LinkageSettings(possible=possible, likely=likely, engine=etl.linkage_engine.strip().lower(),
                           spark_master=etl.linkage_spark_master or defaults.spark_master, max_pairs=max_pairs)


def run_linkage(etl: PatientEtl, batch_id: str) -> dict:
    """`link_batch` in a process of its own (`python -m patient_etl.linkage.run`), stopped after the
    time limit: a slow linkage delays the delivery of the results file by that much at most (publishing
    is already done), and Splink's memory (and a Spark session's JVM) goes with the process. Its
    traceback, which may quote data, goes to the home's logs, never to Dagster."""
    request = json.dumps({"batch_id": batch_id, "settings": {name: getattr(etl, name) for name in type(etl).model_fields}})
    child = process.take()
    try:
        out, err = child.communicate(request + "\n", timeout=etl.linkage_timeout_seconds)
    except subprocess.TimeoutExpired:
        _stop(child)
        return {"outcome": "timed out", "reason": f"linkage took longer than {etl.linkage_timeout_seconds} s "
                                                   "(PATIENT_ETL_LINKAGE_TIMEOUT_SECONDS)"}
    except BaseException:  # the run interrupted (Ctrl-C, a terminated run): its linkage goes with it
        _stop(child)
        raise
    lines = out.strip().splitlines()
    if child.returncode == 0 and lines:
        return json.loads(lines[-1])
    path = private_log(etl, batch_id, err)
    return {"outcome": "failed", "reason": f"the linkage process ended with code {child.returncode}; "
                                          f"its output (which may quote data) is in {path}"}


def _stop(child: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)  # its own session: the process and whatever it started
    child.communicate()


def private_log(etl: PatientEtl, batch_id: str, text: str) -> str:
    logs = etl.home_dir().logs
    logs.mkdir(mode=0o700, exist_ok=True)
    path = logs / f"{batch_id}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(f"--- linkage process\n{text}\n")
    return str(path)


def link_batch(etl: PatientEtl, workspace: Workspace) -> dict:
    """Link the batch's members as published; the pairs stay in the stage's database for the merge."""
    from patient_etl.linkage.link import find_possible_duplicates

    settings = linkage_settings(etl)
    with workspace.open(LINKAGE, reads=[entity_stage("member"), CHECKS, PUBLISH]) as db:
        members = db.normalized("member")
        if not db.has_table(members):
            return {"outcome": "no members in the batch"}
        members = published_members(db, members)
        fetch_target_members(etl, db)
        # The target as it was before this batch: the members the batch created or updated are its rows.
        db.con.execute(f"DELETE FROM {db.linkage_target} WHERE member_id IN "
                       f"(SELECT member_id FROM {members} WHERE member_id IS NOT NULL)")
        result = find_possible_duplicates(db.con, members, db.linkage_target, etl.home_dir().linkage_models,
                                          settings, into=db.possible_duplicates, known_different=db.known_different)
    return {"outcome": "linked", "pairs": result.pairs, "within_batch": result.within_batch,
            "against_target": result.against_target, "batch_members": result.batch_members,
            "target_members": result.target_members, "model_version": result.model_version,
            "model_trained": result.trained, "engine": settings.engine, "seconds": result.seconds,
            "candidate_pairs": result.candidate_pairs,
            **({"blocking_rules_skipped": ", ".join(f"{rule} ({pairs:,} pairs)" for rule, pairs in
                                                   result.skipped_rules.items())} if result.skipped_rules else {})}


def published_members(db: StageDb, members: str) -> str:
    """The batch's member rows as publish decided them, each with the member ID it was published under (a
    keyless row's matched or derived ID), so a decision on its pair holds the next time. Errored rows are
    left out, except a keyless row whose name, birth date and sex matched several stored members: it is
    linked without an ID (and without its match key, so those members are not taken for itself), which
    names its candidates. A recovered run (no outcome tables) links the rows the row log published."""
    keyed = db.scratch("batch_members")
    outcome = db.published_outcome("member")
    ambiguous = (f"o.rid IN (SELECT rid FROM {outcome} WHERE status = 'Ambiguous')" if db.has_table(outcome)
                 else "false")
    db.con.execute(f"""
        CREATE TABLE {keyed} AS
        SELECT m.* REPLACE (r.external_id AS member_id,
                            CASE WHEN r.status = 'Errored' THEN NULL ELSE m.match_key END AS match_key)
        FROM {members} m
        JOIN {db.outcome('member')} o USING (rid)
        JOIN {db.row_log} r ON r.entity = 'member' AND r.file_index = o.file_index AND r.row_number = o.row_number
        WHERE r.status <> 'Errored' OR {ambiguous}""")
    return keyed


def fetch_target_members(etl: PatientEtl, db: StageDb) -> None:
    """The target's members and the pairs decided to be different people, copied into the stage's database
    (empty tables on a target that has none yet)."""
    target = open_target(etl.target(), work_dir=db.workspace.folder)
    try:
        with target.connect() as conn:
            catalog = target.catalog(conn)
            found = catalog.get("member")
            columns = dict.fromkeys(MEMBER_COLUMNS, "VARCHAR")
            if found is not None:  # a column an older target lacks (until publish migrates it) reads as NULL
                listed = ", ".join(c if c in found.columns else f"NULL AS {c}" for c in columns)
                target.fetch(conn, db.con, f"SELECT {listed} FROM member", db.linkage_target, columns)
            else:
                db.con.execute(f"CREATE TABLE {db.linkage_target} ({', '.join(f'{c} VARCHAR' for c in columns)})")
            if "possible_duplicate" in catalog:
                target.fetch(conn, db.con, "SELECT member_id_a, member_id_b FROM possible_duplicate "
                             f"WHERE status = '{REVIEW_DIFFERENT}'", db.known_different,
                             {"member_id_a": "VARCHAR", "member_id_b": "VARCHAR"})
            else:
                db.con.execute(f"CREATE TABLE {db.known_different} (member_id_a VARCHAR, member_id_b VARCHAR)")
    finally:
        target.dispose()


def train_from_target(etl: PatientEtl):
    """`patient-etl linkage train`: a new model version from the target's members (ValueError when too few)."""
    from patient_etl.linkage.link import train_model

    workspace = etl.workspace("linkage-training")  # a scratch folder under staging, removed after
    try:
        with workspace.open(LINKAGE) as db:
            fetch_target_members(etl, db)
            return train_model(db.con, db.linkage_target, etl.home_dir().linkage_models, linkage_settings(etl))
    finally:
        workspace.remove()


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[possible_duplicates])
