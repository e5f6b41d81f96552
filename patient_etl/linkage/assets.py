"""Possible duplicates: the batch's members linked within the batch and against the target, before publish.

The stage sits between the `member` normalization and `published_batch`, which merges its pairs into the
batch's outcome (a warning per flagged row, the pairs file, the target's `possible_duplicate` table). It
links against the target as it was before this batch. It never stops a batch: when linkage is off, or
fails (a corrupt model, a wrong setting, Splink itself), it materializes with `outcome` saying so and no
pairs, and the batch is published without them.
"""

import dagster as dg

from patient_etl.errors import SafeError, phi_safe
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
    workspace.path(LINKAGE).unlink(missing_ok=True)  # publish merges only this run's pairs
    try:
        with phi_safe(etl.home_dir(), batch_id, "linking possible duplicates"):
            if not etl.linkage_on():
                return dg.MaterializeResult(metadata={"outcome": "off"})
            metadata = link_batch(etl, workspace)
    except (dg.Failure, SafeError) as exc:  # both PHI-safe by construction
        workspace.path(LINKAGE).unlink(missing_ok=True)
        reason = exc.description if isinstance(exc, dg.Failure) else str(exc)
        context.log.warning(f"batch {batch_id}: possible duplicates not looked for ({reason}); "
                            "the batch is published without them")
        return dg.MaterializeResult(metadata={"outcome": "failed", "reason": reason})
    return dg.MaterializeResult(metadata=metadata)


def link_batch(etl: PatientEtl, workspace: Workspace) -> dict:
    """Link the batch's normalized members; the pairs stay in the stage's database for publish."""
    from patient_etl.linkage.link import find_possible_duplicates

    settings = etl.linkage_settings()
    with workspace.open(LINKAGE, reads=[entity_stage("member")]) as db:
        members = db.normalized("member")
        if not db.has_table(members):
            return {"outcome": "no members in the batch"}
        fetch_target_members(etl, db)
        result = find_possible_duplicates(db.con, members, db.linkage_target, etl.home_dir().linkage_models,
                                          settings, into=db.possible_duplicates, known_different=db.known_different)
    return {"outcome": "linked", "pairs": result.pairs, "within_batch": result.within_batch,
            "against_target": result.against_target, "batch_members": result.batch_members,
            "target_members": result.target_members, "model_version": result.model_version,
            "model_trained": result.trained, "engine": settings.engine, "seconds": result.seconds}


def fetch_target_members(etl: PatientEtl, db: StageDb) -> None:
    """The target's members and the pairs decided to be different people, copied into the stage's database
    (empty tables on a target that has none yet)."""
    from patient_etl.target import open_target

    target = open_target(etl.target(), work_dir=db.workspace.folder)
    try:
        with target.connect() as conn:
            catalog = target.catalog(conn)
            found = catalog.get("member")
            columns = [c for c in MEMBER_COLUMNS if found and c in found.columns]
            if "member_id" in columns:
                target.fetch(conn, db.con, f"SELECT {', '.join(columns)} FROM member", db.linkage_target,
                             dict.fromkeys(columns, "VARCHAR"))
            else:
                db.con.execute(f"CREATE TABLE {db.linkage_target} (member_id VARCHAR)")
            if "possible_duplicate" in catalog:
                target.fetch(conn, db.con, "SELECT member_id_a, member_id_b FROM possible_duplicate "
                             f"WHERE status = '{REVIEW_DIFFERENT}'", db.known_different,
                             {"member_id_a": "VARCHAR", "member_id_b": "VARCHAR"})
            else:
                db.con.execute(f"CREATE TABLE {db.known_different} (member_id_a VARCHAR, member_id_b VARCHAR)")
    finally:
        target.dispose()


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[possible_duplicates])


def train_from_target(etl: PatientEtl):
    """`patient-etl linkage train`: a new model version from the target's members (ValueError when too few)."""
    from patient_etl.linkage.link import train_model

    workspace = etl.workspace("linkage-training")  # a scratch folder under staging, removed after
    try:
        with workspace.open(LINKAGE) as db:
            fetch_target_members(etl, db)
            return train_model(db.con, db.linkage_target, etl.home_dir().linkage_models, etl.linkage_settings())
    finally:
        workspace.remove()
