"""Possible duplicates: the batch's members linked within the batch and against the target, before publish.

The stage sits between the `member` normalization and `published_batch`, which merges its pairs into the
batch's outcome (a warning per flagged row, the pairs file, the target's `possible_duplicate` table). It
links against the target as it was before this batch. It never stops a batch: when linkage is off, or
fails (a corrupt model, a wrong setting, Splink itself), it materializes with `outcome` saying so and no
pairs, and the batch is published without them.
"""

import json
import os
import signal
import subprocess
import sys

import dagster as dg

from patient_etl.entities.spec import derived_key_sql
from patient_etl.errors import SafeError, phi_safe
from patient_etl.linkage.settings import LinkageSettings
from patient_etl.partitions import batches
from patient_etl.resources import PatientEtl
from patient_etl.target.schema import REVIEW_DIFFERENT
from patient_etl.workspace import LINKAGE, StageDb, Workspace, entity_stage

# The target's member columns the records are built from (see linkage.records.member_records_sql).
MEMBER_COLUMNS = ("member_id", "first_name", "last_name", "birth_date", "sex", "addresses", "emails", "phones",
                  "ssn_hash", "match_key")


@dg.asset(partitions_def=batches, group_name="linkage", deps=[dg.AssetKey("member")])
def possible_duplicates(context: dg.AssetExecutionContext, etl: PatientEtl) -> dg.MaterializeResult:
    """The batch's members that may be patients the target already holds, or rows sent twice."""
    batch_id = context.partition_key
    workspace = etl.workspace(batch_id)
    workspace.discard(LINKAGE)  # publish merges only this run's pairs
    try:
        with phi_safe(etl.home_dir(), batch_id, "linking possible duplicates"):
            metadata = run_linkage(etl, batch_id) if etl.linkage_on() else {"outcome": "off"}
    except (dg.Failure, SafeError) as exc:  # both PHI-safe by construction
        metadata = {"outcome": "failed", "reason": exc.description if isinstance(exc, dg.Failure) else str(exc)}
    if metadata["outcome"] in ("failed", "timed out"):
        workspace.discard(LINKAGE)
        context.log.warning(f"batch {batch_id}: possible duplicates not looked for ({metadata['reason']}); "
                            "the batch is published without them")
    return dg.MaterializeResult(metadata=metadata)


def linkage_settings(etl: PatientEtl) -> LinkageSettings:
    """The linkage thresholds and engine from the settings (a ValueError names the setting that is wrong)."""
    defaults = LinkageSettings()
    try:
        possible = float(etl.linkage_possible) if etl.linkage_possible else defaults.possible
        likely = float(etl.linkage_likely) if etl.linkage_likely else max(defaults.likely, possible)
    except ValueError:
        raise ValueError("PATIENT_ETL_LINKAGE_POSSIBLE and _LIKELY must be numbers between 0 and 1") from None
    return LinkageSettings(possible=possible, likely=likely, engine=etl.linkage_engine.strip().lower(),
                           spark_master=etl.linkage_spark_master or defaults.spark_master)


def run_linkage(etl: PatientEtl, batch_id: str) -> dict:
    """`link_batch` in a process of its own (`python -m patient_etl.linkage.run`), stopped after the
    time limit: a slow linkage delays the batch's publish by that much at most, and Splink's memory
    (and a Spark session's JVM) goes with the process. Its traceback, which may quote data, goes to the
    home's logs, never to Dagster."""
    settings = {name: getattr(etl, name) for name in type(etl).model_fields}
    child = subprocess.Popen([sys.executable, "-m", "patient_etl.linkage.run", batch_id], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(json.dumps(settings), timeout=etl.linkage_timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # its own session: the process and whatever it started
        child.communicate()
        return {"outcome": "timed out", "reason": f"linkage took longer than {etl.linkage_timeout_seconds} s "
                                                   "(PATIENT_ETL_LINKAGE_TIMEOUT_SECONDS)"}
    lines = out.strip().splitlines()
    if child.returncode == 0 and lines:
        return json.loads(lines[-1])
    path = private_log(etl, batch_id, err)
    return {"outcome": "failed", "reason": f"the linkage process ended with code {child.returncode}; "
                                          f"its output (which may quote data) is in {path}"}


def private_log(etl: PatientEtl, batch_id: str, text: str) -> str:
    logs = etl.home_dir().logs
    logs.mkdir(mode=0o700, exist_ok=True)
    path = logs / f"{batch_id}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(f"--- linkage process\n{text}\n")
    return str(path)


def link_batch(etl: PatientEtl, workspace: Workspace) -> dict:
    """Link the batch's normalized members; the pairs stay in the stage's database for publish."""
    from patient_etl.linkage.link import find_possible_duplicates

    settings = linkage_settings(etl)
    with workspace.open(LINKAGE, reads=[entity_stage("member")]) as db:
        members = db.normalized("member")
        if not db.has_table(members):
            return {"outcome": "no members in the batch"}
        fetch_target_members(etl, db)
        members = keyed_members(db, members)
        result = find_possible_duplicates(db.con, members, db.linkage_target, etl.home_dir().linkage_models,
                                          settings, into=db.possible_duplicates, known_different=db.known_different)
    return {"outcome": "linked", "pairs": result.pairs, "within_batch": result.within_batch,
            "against_target": result.against_target, "batch_members": result.batch_members,
            "target_members": result.target_members, "model_version": result.model_version,
            "model_trained": result.trained, "engine": settings.engine, "seconds": result.seconds}


def keyed_members(db: StageDb, members: str) -> str:
    """The batch's members, each keyless row with the ID publish will give it (the one stored member with
    its match key, else the derived `auto-` key), so a decision on its pair holds the next time. A match
    key shared by two or more stored members stays keyless: publish errors that row."""
    keyed = db.scratch("batch_members")
    db.con.execute(f"""
        CREATE TABLE {keyed} AS
        SELECT m.* REPLACE (coalesce(m.member_id, CASE WHEN t.n = 1 THEN t.only_id
                                                       WHEN t.n IS NULL THEN {derived_key_sql('m.match_key')} END)
                            AS member_id)
        FROM {members} m
        LEFT JOIN (SELECT match_key, min(member_id) AS only_id, count(*) AS n FROM {db.linkage_target}
                   WHERE match_key IS NOT NULL GROUP BY match_key) t
               ON m.member_id IS NULL AND t.match_key = m.match_key""")
    return keyed


def fetch_target_members(etl: PatientEtl, db: StageDb) -> None:
    """The target's members and the pairs decided to be different people, copied into the stage's database
    (empty tables on a target that has none yet)."""
    from patient_etl.target import open_target

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
