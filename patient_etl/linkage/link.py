"""Find possible duplicates of a batch's members, within the batch and against the target.

The records are moved (as Arrow) into a Splink backend of their own, an in-memory DuckDB or a Spark
session, so Splink's working tables never land in the batch's DuckDB file. The pairs come back into
the caller's DuckDB connection as one table.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from patient_etl.duck import in_memory, scalar, spill_folder
from patient_etl.linkage import model as m
from patient_etl.linkage.default import default_model
from patient_etl.linkage.records import IDENTITY_COLUMNS, RECORD_COLUMNS, member_records_sql
from patient_etl.linkage.settings import LinkageSettings

log = logging.getLogger(__name__)

PAIR_COLUMNS = {
    "rid": "BIGINT", "row_number": "BIGINT", "external_id": "VARCHAR", "duplicate_in": "VARCHAR",
    "duplicate_of": "VARCHAR", "duplicate_of_rid": "BIGINT", "duplicate_of_row": "BIGINT",
    "match_probability": "DOUBLE", "match_weight": "DOUBLE", "strength": "VARCHAR", "agreed_fields": "VARCHAR",
    "similar_fields": "VARCHAR",
}


@dataclass(frozen=True)
class LinkResult:
    pairs: int  # rows in the output table
    within_batch: int
    against_target: int
    batch_members: int
    target_members: int
    model_version: int  # 0: the cold-start model (too few members to train on yet)
    trained: bool  # the model was trained and saved by this call (none existed yet)
    seconds: float
    candidate_pairs: int = 0  # pairs the kept blocking rules compare (an upper bound: rules overlap)
    skipped_rules: dict[str, int] = field(default_factory=dict)  # rule -> its pairs, past `max_pairs`


# -- backends ---------------------------------------------------------------------------------------

class _DuckDB:
    def __init__(self, spill: str):
        from splink import DuckDBAPI

        self.con = in_memory(spill)  # this call's own, spilling in the home: Splink's tables vanish with it
        # DuckDB's own limit (80% of the machine), not the stages' PATIENT_ETL_DUCKDB_MEMORY: Splink's
        # blocking holds joins that do not spill (100,000 rows against 1M members ran out at 256MB, and
        # peaked at ~1 GB in this process with DuckDB's default), and the linkage child is its own process.
        self.con.execute("RESET memory_limit")
        self.api = DuckDBAPI(self.con)

    def register(self, table, name: str):
        return self.api.register(table, table_name=name)

    def union(self, first, second, name: str):
        self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM {first.physical_name} "
                         f"UNION ALL SELECT * FROM {second.physical_name}")
        return self.api.register(name, table_name=f"{name}_input")

    def arrow(self, sdf):
        return self.con.sql(f"SELECT * FROM {sdf.physical_name}").to_arrow_table()

    def close(self):
        self.con.close()


class _Spark:
    def __init__(self, master: str, spill: str):
        from splink import SparkAPI

        self.spark = spark_session(master, spill)
        # Splink breaks long query lineages by checkpointing, which needs a checkpoint directory (shared
        # storage on a cluster); without one, persisted tables do the same job.
        lineage = None if self.spark.sparkContext.getCheckpointDir() else "persist"
        self.api = SparkAPI(spark_session=self.spark, break_lineage_method=lineage)
        self.tag = uuid.uuid4().hex[:8]  # temporary views are per session, and the session is shared
        self.views: list[str] = []

    def register(self, table, name: str):
        self.views.append(f"{name}_{self.tag}")
        return self.api.register(self.spark.createDataFrame(table), table_name=self.views[-1])

    def union(self, first, second, name: str):
        self.views.append(f"{name}_{self.tag}")
        both = first.as_spark_dataframe().unionByName(second.as_spark_dataframe())
        return self.api.register(both, table_name=self.views[-1])

    def arrow(self, sdf):
        return sdf.as_spark_dataframe().toArrow()

    def close(self):
        # Splink's own tables are dropped by the linker; the session is the process's, its owner stops it
        for view in self.views:
            self.spark.catalog.dropTempView(view)


def spark_session(master: str = "local[2]", spill: str | None = None):
    """The process's Spark session, with Splink's similarity functions (a jar shipped with Splink). In local
    mode its shuffle and spill files go to `spill` (inside the home), not the system's temporary folder."""
    from pyspark.sql import SparkSession
    from splink.backends.spark import similarity_jar_location

    builder = SparkSession.builder
    if spill and master.startswith("local"):
        builder = builder.config("spark.local.dir", spill)
    return (builder.master(master).appName("patient_etl linkage")
            .config("spark.jars", similarity_jar_location())
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate())


def _backend(settings: LinkageSettings, con: duckdb.DuckDBPyConnection):
    """The engine's backend; what it spills goes where `con` (a database in the home) spills."""
    spill = spill_folder(con)
    return _Spark(settings.spark_master, spill) if settings.engine == "spark" else _DuckDB(spill)


def _linker(backend, records, splink_model):
    """A linker over `records` (a registered table) with the saved model, or untrained settings."""
    from splink import Linker

    settings = m.for_dialect(splink_model, backend.api.sql_dialect.sql_dialect_str) if splink_model \
        else m.splink_settings()
    # Splink's settings validation only logs warnings (columns its SQL names that the input lacks: ours are
    # fixed, RECORD_COLUMNS), and parses every SQL snippet of the model to do so: ~0.3 s a linkage, of any size.
    return Linker(records, settings, log_level=None, validate_settings=False)


# -- training -------------------------------------------------------------------------------------

def train_model(con: duckdb.DuckDBPyConnection, target: str, model_dir: Path | str,
                settings: LinkageSettings | None = None, batch: str | None = None) -> m.ModelInfo:
    """Train a model on the target's members (and the batch's, when given) and save the next version.

    `target` and `batch` are member-shaped tables in `con` (see `member_records_sql`). This is what
    `patient-etl linkage train` runs; `find_possible_duplicates` runs it once when no model exists.
    """
    settings = settings or LinkageSettings()
    tables = [member_records_sql(con, target, "target")]
    if batch:
        tables.append(member_records_sql(con, batch, "batch"))
    cols = ", ".join(RECORD_COLUMNS)
    records = con.sql(" UNION ALL ".join(f"SELECT {cols} FROM ({sql})" for sql in tables)).to_arrow_table()
    if records.num_rows < m.MIN_TRAINING_RECORDS:
        raise ValueError(f"too few members to train a linkage model: {records.num_rows} "
                         f"(at least {m.MIN_TRAINING_RECORDS})")
    backend = _backend(settings, con)
    try:
        linker = _linker(backend, backend.register(records, "linkage_records"), None)
        m.train(linker, settings, records.num_rows)
        splink_model = linker.misc.save_model_to_json()
    finally:
        backend.close()
    counts = {"target": con.sql(f"SELECT count(*) FROM {target}").fetchall()[0][0],
              "batch": con.sql(f"SELECT count(*) FROM {batch}").fetchall()[0][0] if batch else 0}
    return m.save_model(model_dir, splink_model, counts)


# -- linking --------------------------------------------------------------------------------------

def find_possible_duplicates(
    con: duckdb.DuckDBPyConnection,
    batch: str,
    target: str,
    model_dir: Path | str,
    settings: LinkageSettings | None = None,
    into: str = "possible_duplicates",
    known_different: str | None = None,
) -> LinkResult:
    """Link the batch's members within the batch and against the target's; write the pairs to `into`.

    `batch` is the batch's normalized member table (rid, row_number, member_id, names, birth_date,
    sex, addresses/emails/phones JSON, match_key, ssn_hash); `target` the target's members, same
    shape without rid/row_number. Both live in `con`. `known_different`, when given, is a table in
    `con` of (`member_id_a`, `member_id_b`) pairs a person decided are different people: never flagged.

    `into` gets one row per pair at or above `settings.possible` (PAIR_COLUMNS): the batch row, what
    it may duplicate (a target member ID, or an earlier row of the batch), the probability, and which
    fields agreed exactly (`agreed_fields`) or nearly (`similar_fields`). Pairs that are the same record by the
    deterministic rules (same member ID, or a keyless row's match key) are not reported.
    """
    settings = settings or LinkageSettings()
    started = time.perf_counter()
    # One copy of the records, in Arrow: Splink reads the compared columns (a zero-copy selection),
    # the output joins the identity columns back (a view over the same buffers).
    batch_records = con.sql(member_records_sql(con, batch, "batch")).to_arrow_table()
    target_records = con.sql(member_records_sql(con, target, "target")).to_arrow_table()
    n_batch, n_target = batch_records.num_rows, target_records.num_rows

    info = m.current_model(model_dir)
    trained = False
    if info is None and n_target + n_batch >= m.MIN_TRAINING_RECORDS:
        # First run with enough members: train on the target with this batch (never on the batch
        # alone when the target has members; when it has none, the batch is all there is).
        info, trained = train_model(con, target, model_dir, settings, batch=batch), True
    elif info is None:
        info = default_model()  # too few to train on: the cold-start model, not saved

    kept, candidate_pairs, skipped = bounded_blocking(con, batch_records, target_records, settings.max_pairs)
    rules = m.blocking_rules(kept)
    backend = _backend(settings, con)
    try:
        batch_sdf = backend.register(batch_records.select(list(RECORD_COLUMNS)), "linkage_batch")
        target_sdf = backend.register(target_records.select(list(RECORD_COLUMNS)), "linkage_target")
        linker = _linker(backend, backend.union(batch_sdf, target_sdf, "linkage_records"), info.splink)
        for column in m.TF_COLUMNS:  # frequencies over the target and the batch together
            linker.table_management.compute_tf_table(column)
        within = backend.arrow(linker.inference.predict_within(
            batch_sdf, blocking_rules_to_generate_predictions=rules, threshold_match_probability=settings.possible,
            warning_mode="never"))
        between = None
        if n_target:
            between = backend.arrow(linker.inference.predict_between(
                batch_sdf, target_sdf, blocking_rules_to_generate_predictions=rules,
                threshold_match_probability=settings.possible, warning_mode="never"))
        linker.table_management.delete_tables_created_by_splink_from_db()
    finally:
        backend.close()

    con.register("_linkage_batch", batch_records)
    con.register("_linkage_target", target_records)
    try:
        _write_pairs(con, within, between, info.splink, settings, into, known_different)
    finally:
        con.unregister("_linkage_batch")
        con.unregister("_linkage_target")
    counts = dict(con.sql(f"SELECT duplicate_in, count(*) FROM {into} GROUP BY ALL").fetchall())
    result = LinkResult(
        pairs=sum(counts.values()), within_batch=counts.get("batch", 0), against_target=counts.get("target", 0),
        batch_members=n_batch, target_members=n_target, model_version=info.version, trained=trained,
        seconds=round(time.perf_counter() - started, 2), candidate_pairs=candidate_pairs, skipped_rules=skipped)
    log.info("linkage: %s pairs (%s within the batch, %s against the target), model v%s", result.pairs,
             result.within_batch, result.against_target, result.model_version)
    return result


def bounded_blocking(con: duckdb.DuckDBPyConnection, batch, target, max_pairs: float):
    """The blocking rules to predict with: each rule's candidate pairs counted exactly (group counts,
    within the batch and against the target), then taken cheapest first while the total fits in
    `max_pairs`. A rule past it blocks on a value very many records share (the synthetic 1M roster's
    first+last name: 10^9 pairs), which would cost hours and tens of GB to compare and says little.
    Returns (kept keys, their pairs, {skipped rule: its pairs})."""
    con.register("_blocking_batch", batch)
    con.register("_blocking_target", target)
    try:
        counted = [(keys, _rule_pairs(con, keys)) for keys in (*m.BLOCKING_KEYS, None)]
    finally:
        con.unregister("_blocking_batch")
        con.unregister("_blocking_target")
    kept, total, skipped = [], 0, {}
    for keys, pairs in sorted(counted, key=lambda kp: kp[1]):
        if total + pairs <= max_pairs:
            kept.append(keys)
            total += pairs
        else:
            skipped[m.rule_name(keys)] = pairs
    order = {k: i for i, (k, _) in enumerate(counted)}  # Splink's order: the cheap exact rules first
    return tuple(sorted(kept, key=order.__getitem__)), total, skipped


def _rule_pairs(con: duckdb.DuckDBPyConnection, keys: tuple[str, ...] | None) -> int:
    """The pairs one rule makes: within the batch (each pair once) plus batch against target."""
    if keys is None:  # the swapped names: one record's first name is the other's last, and back
        left, right = ("first_name", "last_name"), ("last_name", "first_name")
    else:
        left = right = keys

    def groups(table: str, exprs: tuple[str, ...]) -> str:
        present = " AND ".join(f"({e}) IS NOT NULL" for e in exprs)
        cols = ", ".join(f"{e} AS k{i}" for i, e in enumerate(exprs))
        return f"SELECT {cols}, count(*) AS n FROM {table} WHERE {present} GROUP BY ALL"

    on = " AND ".join(f"a.k{i} = b.k{i}" for i in range(len(left)))
    within = (f"SELECT sum(n * (n - 1) / 2) FROM ({groups('_blocking_batch', left)})" if keys is not None else
              f"SELECT sum(a.n * b.n) / 2 FROM ({groups('_blocking_batch', left)}) a "
              f"JOIN ({groups('_blocking_batch', right)}) b ON {on}")
    between = (f"SELECT sum(a.n * b.n) FROM ({groups('_blocking_batch', left)}) a "
               f"JOIN ({groups('_blocking_target', right)}) b ON {on}")
    return int(sum(scalar(con, sql) or 0 for sql in (within, between)))


def _agreement_sql(splink_model: dict) -> tuple[str, str]:
    """SQL lists of the fields whose comparison reached its top level (agreed) or a level between
    (similar), from the pair's gamma columns."""
    agreed, similar = [], []
    for comparison in splink_model["comparisons"]:
        name = comparison["output_column_name"]
        levels = [lv for lv in comparison["comparison_levels"] if not lv.get("is_null_level")]
        top = len(levels) - 1
        agreed.append(f"CASE WHEN p.gamma_{name} = {top} THEN '{name}' END")
        similar.append(f"CASE WHEN p.gamma_{name} BETWEEN 1 AND {top - 1} THEN '{name}' END")
    return (f"concat_ws(',', {', '.join(agreed)})", f"concat_ws(',', {', '.join(similar)})")


def _write_pairs(con, within, between, splink_model, settings, into, known_different) -> None:
    agreed, similar = _agreement_sql(splink_model)
    gammas = [f"gamma_{c['output_column_name']}" for c in splink_model["comparisons"]]
    pair_cols = ["unique_id_l", "unique_id_r", "match_probability", "match_weight", *gammas]
    con.execute("CREATE OR REPLACE TEMP TABLE _linkage_pairs (unique_id_l BIGINT, unique_id_r BIGINT, "
                "match_probability DOUBLE, match_weight DOUBLE, " + ", ".join(f"{g} INTEGER" for g in gammas) + ")")
    for table in (within, between):
        if table is not None and table.num_rows:
            con.register("_linkage_found", table)
            con.execute(f"INSERT INTO _linkage_pairs SELECT {', '.join(pair_cols)} FROM _linkage_found")
            con.unregister("_linkage_found")
    identity = ", ".join(IDENTITY_COLUMNS)
    different = ""
    if known_different:
        different = f"""AND NOT EXISTS (SELECT 1 FROM {known_different} k
                            WHERE (k.member_id_a = a.member_id AND k.member_id_b = b.member_id)
                               OR (k.member_id_a = b.member_id AND k.member_id_b = a.member_id))"""
    con.execute(f"""
        CREATE OR REPLACE TABLE {into} AS
        WITH records AS (SELECT {identity}, 'batch' AS side FROM _linkage_batch
                         UNION ALL SELECT {identity}, 'target' FROM _linkage_target),
        oriented AS (  -- the batch row, and for a pair inside the batch the later row, on the left
            SELECT CASE WHEN unique_id_r >= 0 AND unique_id_r > unique_id_l THEN unique_id_r ELSE unique_id_l END
                       AS id_a,
                   CASE WHEN unique_id_r >= 0 AND unique_id_r > unique_id_l THEN unique_id_l ELSE unique_id_r END
                       AS id_b,
                   *
            FROM _linkage_pairs)
        SELECT a.unique_id AS rid, a.row_number, a.member_id AS external_id, b.side AS duplicate_in,
               coalesce(b.member_id, CASE WHEN b.side = 'batch' THEN 'row ' || b.row_number END) AS duplicate_of,
               CASE WHEN b.side = 'batch' THEN b.unique_id END AS duplicate_of_rid,
               b.row_number AS duplicate_of_row,
               round(p.match_probability, 6) AS match_probability, round(p.match_weight, 3) AS match_weight,
               CASE WHEN p.match_probability >= {settings.likely} THEN 'likely' ELSE 'possible' END AS strength,
               {agreed} AS agreed_fields, {similar} AS similar_fields
        FROM oriented p
        JOIN records a ON a.unique_id = p.id_a AND a.side = 'batch'
        JOIN records b ON b.unique_id = p.id_b AND b.side = CASE WHEN p.id_b < 0 THEN 'target' ELSE 'batch' END
        WHERE p.match_probability >= {settings.possible}
          -- the same record by the deterministic rules: an update or an in-file conflict, not a duplicate
          AND coalesce(a.member_id = b.member_id, false) = false
          AND NOT (a.member_id IS NULL AND coalesce(a.match_key = b.match_key, false))
          AND NOT (b.side = 'batch' AND b.member_id IS NULL AND coalesce(a.match_key = b.match_key, false))
          {different}
        ORDER BY a.row_number, p.match_probability DESC, duplicate_of
    """)
