"""End-to-end roster benchmark: `patient-etl import` on generated 100k / 1M-row rosters, against
the floor (DuckDB reading the same CSV, plus the target's own bulk load of it: PostgreSQL's COPY, SQLite's
`.import`).

    python benchmarks/roster.py [--rows 100000 1000000] [--target sqlite|postgres|both] [--out DIR]
                                [--repeat N] [--profile]

For each size and target it runs `patient-etl import FILE --json` as a subprocess with a fresh
PATIENT_ETL_HOME (and, for postgres, a fresh database), `--repeat` times, then once more on the last
run's home and target (the re-import: every good row Unchanged). It measures wall time, rows/s and
peak memory (GNU time's max RSS of the child, and the sampled RSS sum of the whole process tree),
checks the JSON counts add up to the row count and match what the generator planted, collects the
per-step durations from Dagster's STEP_SUCCESS lines, and prints markdown tables. `--profile` also
runs the smallest size under cProfile and prints the top hot spots.

Generated data and logs go to --out (default benchmarks/out/, which is gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HEADER = ("Patient ID,First Name,Last Name,Date of Birth,Sex,Address Line 1,City,State,Zip,Email,Phone,SSN")
BAD_PER_10K = 100  # 1% of rows carry exactly one error
BAD_KINDS = ("impossible date", "unknown sex", "bad email", "7-digit phone", "incomplete address", "duplicate id")
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_TARGET = PG_ADMIN.rsplit("/", 1)[0] + "/{db}"  # the same server, a fresh database per run
GNU_TIME = "/usr/bin/time"
GENERATOR_VERSION = 3  # bump when the generated file or its sidecar changes

FIRST = ["Avery", "Jordan", "Casey", "Riley", "Sam", "Taylor", "Drew", "Jamie", "Robin", "Morgan", "Alex",
         "Quinn", "Harper", "Rowan", "Emerson", "Skyler", "Dakota", "Reese", "Parker", "Sasha", "Noor",
         "Mateo", "Aiko", "Chidi", "Ingrid", "Tomás", "Zoë", "Priya", "Wei", "Olamide", "Siobhan", "Kai"]
LAST = ["Quinton", "Mistral", "Lindqvist", "Tran", "Delacroix", "Ishikawa", "Forsythe", "Achebe", "O'Brien",
        "Nguyen", "García", "Okafor", "Kowalski", "Haddad", "Murphy", "Chen", "Patel", "Schmidt", "Rossi",
        "Johansson", "Dubois", "Kim", "Silva", "Novak", "Müller", "Cohen", "Singh", "Ivanova", "Walsh", "Baker"]
STREETS = ["Harbor Rd", "Beacon St", "Pine Ave", "Mill Ln", "Main St", "Oak St", "Shore Dr", "Elm St",
           "Maple Ave", "Cedar Ct", "Washington Blvd", "Lake Rd", "Hill St", "Park Pl", "River Rd", "Church St"]
CITIES = ["Boston", "Springfield", "Lowell", "Salem", "Gloucester", "Worcester", "Cambridge", "Quincy",
          "Newton", "Somerville", "Portland", "Hartford", "Providence", "Albany", "Austin", "Denver"]
STATES = [("MA", "Massachusetts"), ("NY", "New York"), ("CA", "California"), ("TX", "Texas"),
          ("CT", "Connecticut"), ("RI", "Rhode Island"), ("NH", "New Hampshire"), ("ME", "Maine"),
          ("NJ", "New Jersey"), ("CO", "Colorado"), ("FL", "Florida"), ("WA", "Washington"),
          ("DC", "District of Columbia"), ("PR", "Puerto Rico"), ("IL", "Illinois"), ("OH", "Ohio")]


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def generate(path: Path, rows: int, seed: int) -> dict:
    """Write a roster CSV of `rows` data rows with DuckDB (set-based, deterministic for a seed).

    Every random choice is `hash(i, seed, salt)`, so the file depends only on (rows, seed, DuckDB's
    hash). About 1% of rows (`bad`) carry one planted error each; everything else is valid, though
    mixed in form (MM/DD/YYYY dates, 4-digit zips, full state names, phone punctuation, quoted
    addresses) so that the normalizing expressions do real work.

    The name, birth date and sex (a keyless row's identity) are hashed once more: DuckDB combines the
    hashes of several values so that their low bits move together, and the picks, taken modulo small
    numbers, were correlated (480 of the 960 name pairs; 593k distinct name, birth date and sex in 1M
    rows where independent picks give ~984k), so that most rows shared a stored member's identity
    and a re-import warned on 86% of them. The planted errors are picked as before (10,088 at 1M).
    """
    import duckdb

    con = duckdb.connect()
    r = lambda salt: f"hash(i, {seed}, {salt})"  # noqa: E731 - a UBIGINT per row and salt
    mixed = lambda salt: f"hash({r(salt)})"  # noqa: E731 - the same, independent of the other salts' picks
    pick = lambda values, salt, h=r: f"{_sql_list(values)}[1 + ({h(salt)} % {len(values)})::INTEGER]"  # noqa: E731
    states = _sql_list([a for a, _ in STATES]), _sql_list([n for _, n in STATES])
    patient_id = ("CASE WHEN bad = 6 AND i >= dup_back THEN 'P' || lpad((i - dup_back)::VARCHAR, 8, '0') "
                  "ELSE 'P' || lpad(i::VARCHAR, 8, '0') END")
    con.execute(f"""
        CREATE TABLE base AS
        SELECT i,
               CASE WHEN {r(0)} % 10000 < {BAD_PER_10K} THEN ({r(1)} % {len(BAD_KINDS)})::INTEGER + 1
                    ELSE 0 END AS bad,
               {pick(FIRST, 2, mixed)} AS first_name,
               {pick(LAST, 3, mixed)} AS last_name,
               DATE '1930-01-01' + ({mixed(4)} % 32000)::INTEGER AS dob,
               ({r(5)} % 100)::INTEGER AS u_date,
               {pick(['F', 'M', 'F', 'M', 'female', 'male', 'U', 'O'], 6, mixed)} AS sex,
               (1 + {r(7)} % 9999)::VARCHAR || ' ' || {pick(STREETS, 8)} AS street,
               ({r(9)} % 100)::INTEGER AS u_addr,
               {pick(CITIES, 10)} AS city,
               (1 + {r(11)} % {len(STATES)})::INTEGER AS state_ix,
               ({r(12)} % 100)::INTEGER AS u_state,
               ({r(13)} % 100000)::INTEGER AS zip_n,
               ({r(14)} % 100)::INTEGER AS u_zip,
               ({r(15)} % 100)::INTEGER AS u_email,
               (200 + {r(16)} % 800)::INTEGER AS area,
               (200 + {r(17)} % 800)::INTEGER AS exch,
               ({r(18)} % 10000)::INTEGER AS line,
               ({r(19)} % 100)::INTEGER AS u_phone,
               ({r(20)} % 1000000000)::BIGINT AS ssn_n,
               ({r(21)} % 100)::INTEGER AS u_ssn,
               (1 + {r(22)} % 1000)::BIGINT AS dup_back
        FROM range({rows}) t(i)
    """)
    con.execute(f"""
        CREATE VIEW roster AS
        SELECT
            {patient_id} AS "Patient ID",
            first_name AS "First Name",
            last_name AS "Last Name",
            CASE WHEN bad = 1 THEN ['2021-02-30', '02/30/2021', '1999-13-01', '04/31/1987'][1 + i % 4]
                 WHEN u_date < 30 THEN strftime(dob, '%m/%d/%Y')
                 ELSE strftime(dob, '%Y-%m-%d') END AS "Date of Birth",
            CASE WHEN bad = 2 THEN ['X', 'N/A', '9', 'femme'][1 + i % 4] ELSE sex END AS "Sex",
            CASE WHEN u_addr < 2 THEN street || ', Apt ' || (1 + u_addr * 7)::VARCHAR ELSE street END
                AS "Address Line 1",
            CASE WHEN bad = 5 THEN NULL ELSE city END AS "City",
            CASE WHEN u_state < 10 THEN {states[1]}[state_ix] ELSE {states[0]}[state_ix] END AS "State",
            CASE WHEN u_zip < 5 THEN ((zip_n % 9000) + 1000)::VARCHAR
                 WHEN u_zip < 10 THEN lpad(zip_n::VARCHAR, 5, '0') || '-' || lpad((zip_n % 10000)::VARCHAR, 4, '0')
                 ELSE lpad(zip_n::VARCHAR, 5, '0') END AS "Zip",
            CASE WHEN bad = 3 THEN lower(first_name[1:1]) || '.' || i::VARCHAR || ['@example', '@@example.org',
                                   ' at example.org', '@example..org'][1 + i % 4]
                 WHEN u_email < 20 THEN NULL
                 ELSE lower(strip_accents(replace(first_name, '''', ''))) || '.'
                      || lower(strip_accents(replace(last_name, '''', ''))) || i::VARCHAR
                      || ['@example.org', '@example.com', '@Mail.Example.NET'][1 + i % 3] END AS "Email",
            CASE WHEN bad = 4 THEN exch::VARCHAR || '-' || lpad(line::VARCHAR, 4, '0')
                 WHEN u_phone < 15 THEN NULL
                 WHEN u_phone < 40 THEN '(' || area::VARCHAR || ') ' || exch::VARCHAR || '-' || lpad(line::VARCHAR, 4, '0')
                 WHEN u_phone < 65 THEN area::VARCHAR || '-' || exch::VARCHAR || '-' || lpad(line::VARCHAR, 4, '0')
                 WHEN u_phone < 90 THEN area::VARCHAR || exch::VARCHAR || lpad(line::VARCHAR, 4, '0')
                 ELSE '+1 ' || area::VARCHAR || ' ' || exch::VARCHAR || ' ' || lpad(line::VARCHAR, 4, '0') END AS "Phone",
            CASE WHEN u_ssn < 70 THEN NULL
                 WHEN u_ssn < 85 THEN lpad(ssn_n::VARCHAR, 9, '0')
                 ELSE lpad((ssn_n // 1000000)::VARCHAR, 3, '0') || '-' || lpad((ssn_n // 10000 % 100)::VARCHAR, 2, '0')
                      || '-' || lpad((ssn_n % 10000)::VARCHAR, 4, '0') END AS "SSN"
        FROM base ORDER BY i
    """)
    tmp = path.with_name(path.name + ".part")
    con.execute(f"COPY (SELECT * FROM roster) TO '{tmp}' (FORMAT csv, HEADER true)")
    os.replace(tmp, path)
    # What the import must report Errored: the planted field errors, and every row whose ID an earlier
    # row already has (a duplicate pointing at another duplicate's row may itself come first).
    planted = dict(con.execute(f"""
        SELECT CASE WHEN seen > 1 THEN 6 WHEN bad = 6 THEN 0 ELSE bad END AS kind, count(*)
        FROM (SELECT bad, count(*) OVER (PARTITION BY {patient_id} ORDER BY i) AS seen FROM base)
        WHERE kind > 0 GROUP BY kind ORDER BY kind""").fetchall())
    con.close()
    with path.open(encoding="utf-8") as handle:
        assert handle.readline().rstrip("\r\n") == HEADER, "unexpected header"
    return {"rows": rows, "seed": seed, "bad": sum(planted.values()),
            "bad_by_kind": {BAD_KINDS[k - 1]: n for k, n in planted.items()}, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def roster_file(out: Path, rows: int, seed: int) -> tuple[Path, dict]:
    """The roster for (rows, seed), generated once and reused while its sidecar still matches."""
    import duckdb  # here and in the benchmark's other DuckDB functions: --dlt-python's venv has only dlt

    path = out / f"roster_{rows}_seed{seed}.csv"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (meta.get("duckdb"), meta.get("generator"), meta.get("size")) == (
                duckdb.__version__, GENERATOR_VERSION, path.stat().st_size):
            return path, meta
    started = time.perf_counter()
    meta = generate(path, rows, seed)
    meta |= {"duckdb": duckdb.__version__, "generator": GENERATOR_VERSION, "size": path.stat().st_size,
             "generate_s": round(time.perf_counter() - started, 2)}
    meta_path.write_text(json.dumps(meta, indent=2))
    return path, meta


# -- the floor ---------------------------------------------------------------------------------------

def duckdb_floor(path: Path) -> float:
    """DuckDB reading the file, all text, into a table of an on-disk database (as staging does)."""
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "floor.duckdb"))
        started = time.perf_counter()
        con.execute("CREATE TABLE roster AS SELECT * FROM read_csv(?, header = true, all_varchar = true)",
                    [str(path)])
        con.execute("CHECKPOINT")
        elapsed = time.perf_counter() - started
        con.close()
    return elapsed


def pg_floor(path: Path, db: str) -> float:
    """PostgreSQL COPY of the file into an all-text table, in one transaction (psycopg 3 COPY)."""
    import psycopg

    columns = ", ".join(f"c{j} TEXT" for j in range(len(HEADER.split(","))))
    with psycopg.connect(PG_TARGET.format(db=db)) as conn:
        conn.execute(f"CREATE TABLE floor_roster ({columns})")
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY floor_roster FROM STDIN (FORMAT csv, HEADER true)") as copy, \
                path.open("rb") as handle:
            while block := handle.read(1 << 20):
                copy.write(block)
        conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE floor_roster")
        conn.commit()
    return elapsed


def sqlite_floor(path: Path) -> tuple[float, str]:
    """SQLite's fastest bulk load of the file into an all-text table, in one transaction: the `sqlite3`
    shell's `.import --csv` (C, SQLite's own CSV reader; the nearest it has to PostgreSQL's COPY), with
    the target's settings (WAL, synchronous NORMAL). Without the shell, Python's csv reader into
    `executemany`: slower, and said so in the results."""
    columns = ", ".join(f"c{j} TEXT" for j in range(len(HEADER.split(","))))
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "floor.sqlite"
        shell = shutil.which("sqlite3")
        started = time.perf_counter()
        if shell:
            subprocess.run([shell, str(db), "PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
                            f"CREATE TABLE floor_roster ({columns})",
                            f".import --csv --skip 1 '{path}' floor_roster"],
                           check=True, stdout=subprocess.DEVNULL)
            how = "sqlite3 .import"
        else:
            import csv
            import sqlite3

            with sqlite3.connect(db, isolation_level=None) as conn, path.open(newline="") as handle:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"CREATE TABLE floor_roster ({columns})")
                conn.execute("BEGIN")
                rows = csv.reader(handle)
                next(rows)
                conn.executemany(f"INSERT INTO floor_roster VALUES ({', '.join('?' * len(HEADER.split(',')))})",
                                 rows)
                conn.execute("COMMIT")
            how = "Python csv + executemany"
        return time.perf_counter() - started, how


def create_db(prefix: str = "bench") -> str:
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name


def drop_db(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- one import ----------------------------------------------------------------------------------------

class TreeRss:
    """Samples the summed RSS of a process and all its descendants (from /proc) every `interval` s;
    `at_peak` is what each process held at the tree's peak (by a short name: which one to shrink)."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self.at_peak: dict[str, int] = {}
        self.peak_time = 0.0  # time.time() at the peak
        self.samples: list[tuple[float, int]] = []  # (time.time(), the tree's KB) at each sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as handle:
                        todo += [int(c) for c in handle.read().split()]
            except OSError:
                pass
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            held: dict[str, int] = {}
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/status") as handle:
                        for line in handle:
                            if line.startswith("VmRSS:"):
                                name = _process_name(pid)
                                held[name] = held.get(name, 0) + int(line.split()[1])
                                break
                except OSError:
                    pass
            total, now = sum(held.values()), time.time()
            self.samples.append((now, total))
            if total > self.peak_kb:
                self.peak_kb, self.at_peak, self.peak_time = total, held, now
            self._stop.wait(self.interval)


def _process_name(pid: int) -> str:
    """A process of an import's tree, by role: the validator, the linkage child, else the command's name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return "?"
    text = " ".join(argv)
    for role in ("validator", "linkage"):
        if role in text:
            return role
    return Path(argv[0]).name if argv else "?"


_DURATION = re.compile(r'Finished execution of step "([^"]+)" in ([0-9.]+)(ms|s|m)\b')
_IN_PROCESS = re.compile(r"Finished steps in process \(pid: \d+\) in ([0-9.]+)(ms|s|m)\b")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


def step_durations(stderr: str, home: Path | None = None, run_id: str | None = None
                   ) -> tuple[dict[str, float], float | None]:
    """Per-step seconds: from the home's Dagster instance (the CLI is quiet), else from logged lines."""
    if home is not None and (home / "dagster" / "dagster.yaml").exists():
        import dagster as dg

        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            run_id = run_id or next((r.run_id for r in instance.get_runs(limit=1)), None)  # the import just run
            stats = instance.get_run_step_stats(run_id) if run_id else []
        steps = {s.step_key: s.end_time - s.start_time for s in stats if s.end_time and s.start_time}
        return steps, (sum(steps.values()) if steps else None)
    steps = {name: float(v) * _UNITS[u] for name, v, u in _DURATION.findall(stderr)}
    total = _IN_PROCESS.search(stderr)
    return steps, (float(total.group(1)) * _UNITS[total.group(2)] if total else None)


def step_peaks(home: Path, run_id: str | None, sampler: TreeRss) -> tuple[str | None, dict[str, float]]:
    """The step of the run (by default the home's last) under way at the tree's peak, and each step's
    own peak (MB), from the home's instance and the sampler's samples."""
    if not (home / "dagster" / "dagster.yaml").exists():
        return None, {}
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        run_id = run_id or next((r.run_id for r in instance.get_runs(limit=1)), None)  # the import just run
        stats = instance.get_run_step_stats(run_id) if run_id else []
    spans = [(s.step_key, s.start_time, s.end_time) for s in stats if s.start_time and s.end_time]
    at_peak = next((key for key, start, end in spans if start <= sampler.peak_time <= end),
                   "no step (startup, between steps or exit)")
    peaks = {key: max((kb for when, kb in sampler.samples if start <= when <= end), default=0) / 1024
             for key, start, end in spans}
    return at_peak, peaks


@dataclass
class Run:
    rows: int
    target: str
    label: str  # "import #1", "re-import"...
    wall_s: float
    rc: int
    outcome: dict | None
    maxrss_mb: float | None  # GNU time: max RSS of the largest process
    tree_mb: float  # sampled sum over the process tree
    steps: dict[str, float] = field(default_factory=dict)
    steps_total_s: float | None = None
    log: str = ""

    @property
    def peak_mb(self) -> float:
        return max(self.maxrss_mb or 0.0, self.tree_mb)


TREE: Path | None = None  # --tree: the source tree whose `patient-etl` runs (PYTHONPATH), to compare commits


def run_import(path: Path, home: Path, target_url: str | None, log: Path, profile: Path | None = None) -> tuple:
    env = os.environ.copy()
    env.pop("DAGSTER_HOME", None)  # an ephemeral instance, as the CLI uses by default
    env["PATIENT_ETL_HOME"] = str(home)
    # A private validator, and the command run in its own process: the peak is the import's process tree,
    # which a server's worker (a child of its server) is not part of.
    env.setdefault("PATIENT_ETL_VALIDATOR_IDLE_SECONDS", "0")
    env.setdefault("PATIENT_ETL_COMMAND_IDLE_SECONDS", "0")  # the same for the command's server's worker
    env.pop("PATIENT_ETL_TARGET_URL", None)
    if target_url:
        env["PATIENT_ETL_TARGET_URL"] = target_url
    if profile:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "patient_etl.cli"]
    elif TREE is not None:
        env["PYTHONPATH"] = str(TREE)
        module = "patient_etl.command" if (TREE / "patient_etl" / "command.py").exists() else "patient_etl.cli"
        command = [sys.executable, "-P", "-c", f"from {module} import entry; entry()"]  # -P: not the cwd's
    else:
        exe = shutil.which("patient-etl") or str(Path(sys.executable).with_name("patient-etl"))
        command = [exe]
    command += ["import", str(path), "--json"]
    return measured(command, env, log)


def measured(command: list[str], env: dict, log: Path) -> tuple:
    """Run `command` (under GNU time when present) with its process tree's RSS sampled; stderr goes to
    `log`. Returns wall s, exit code, the last JSON line of stdout, max RSS MB, tree peak MB, stderr and
    the sampler (the peak's time, every sample)."""
    timed = os.path.exists(GNU_TIME)
    if timed:
        command = [GNU_TIME, "-v", *command]
    started = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        with TreeRss(proc.pid) as sampler:
            stdout, _ = proc.communicate()
    wall = time.perf_counter() - started
    stderr = log.read_text(errors="replace")
    maxrss = None
    if timed:
        if m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr):
            maxrss = int(m.group(1)) / 1024
    else:
        import resource
        maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child so far
    outcome = next((json.loads(line) for line in reversed(stdout.splitlines()) if line.startswith("{")), None)
    print("    at the peak: " + ", ".join(f"{name} {kb / 1024:,.0f} MB" for name, kb in
                                       sorted(sampler.at_peak.items(), key=lambda item: -item[1])), flush=True)
    return wall, proc.returncode, outcome, maxrss, sampler.peak_kb / 1024, stderr, sampler


def one_import(path: Path, rows: int, target: str, label: str, home: Path, db: str | None, logs: Path,
               profile: Path | None = None) -> Run:
    url = PG_TARGET.format(db=db) if db else None
    log = logs / f"import_{rows}_{target}_{label.replace(' ', '').replace('#', '')}.log"
    wall, rc, outcome, maxrss, tree, stderr, sampler = run_import(path, home, url, log, profile)
    steps, total = step_durations(stderr, home, (outcome or {}).get("run_id"))
    step, peaks = step_peaks(home, (outcome or {}).get("run_id"), sampler)
    if step:
        print(f"    the peak was in {step}; each step's peak: "
              + ", ".join(f"{key} {mb:,.0f} MB" for key, mb in peaks.items() if mb), flush=True)
    run = Run(rows, target, label, wall, rc, outcome, maxrss, tree, steps, total, str(log))
    counts = (outcome or {}).get("counts", {})
    print(f"  {target:8} {rows:>9,} {label:10} rc={rc} wall={wall:6.1f}s peak={run.peak_mb:6.0f} MB "
          f"status={(outcome or {}).get('status')} counts={counts} sum={sum(counts.values()):,}", flush=True)
    if rc != 0 or outcome is None:
        tail = "\n".join(stderr.splitlines()[-25:])
        print(f"  !! import failed (rc {rc}); log {log}\n{tail}", flush=True)
    return run


def check_counts(run: Run, meta: dict, reimport: bool) -> list[str]:
    problems = []
    if not run.outcome:
        return ["no JSON outcome"]
    counts, rows, bad = run.outcome["counts"], meta["rows"], meta["bad"]
    if sum(counts.values()) != rows:
        problems.append(f"counts sum to {sum(counts.values()):,}, not {rows:,}")
    expected = {"Errored": bad, ("Unchanged" if reimport else "Created"): rows - bad}
    for status, n in expected.items():
        if counts.get(status) != n:
            problems.append(f"{status} is {counts.get(status)}, expected {n:,}")
    return problems


# -- the import job as the Dagster UI, sensors and schedules launch it ---------------------------------

def resolved_job():
    """`import_job`'s assets under Dagster's default executor, so run config can choose in-process or
    multiprocess for the comparison (`import_job` itself is fixed to in-process)."""
    import dagster as dg

    from patient_etl.definitions import build_defs
    from patient_etl.jobs import import_job
    from patient_etl.partitions import batches

    job = dg.define_asset_job("import_job_any_executor", selection=import_job.selection, partitions_def=batches)
    return dg.Definitions.merge(build_defs(), dg.Definitions(jobs=[job])).resolve_job_def(job.name)


def job_child(path: Path, executor: str) -> int:
    """Inside the child: register the file as a batch and run `import_job` on it with `executor`
    on a persistent instance (DAGSTER_HOME), as a launched run would; print one JSON line."""
    import dagster as dg

    from patient_etl.batches import SourceFile
    from patient_etl.resources import PatientEtl

    etl = PatientEtl(home=os.environ["PATIENT_ETL_HOME"], target_url=os.environ.get("PATIENT_ETL_TARGET_URL"))
    source = SourceFile(path.name, str(path.absolute()), path.stat().st_size, path.stat().st_mtime_ns)
    batch = etl.registry().register("cli", [source], uuid.uuid4().hex)
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("batches", [batch.batch_id])
    result = dg.execute_job(dg.reconstructable(resolved_job), instance=instance,
                            tags={"dagster/partition": batch.batch_id},
                            run_config={"execution": {"config": {executor: {}}}})
    done = etl.registry().require(batch.batch_id)
    steps = {e.step_key: e.event_specific_data.duration_ms / 1000 for e in result.all_events
             if e.event_type_value == "STEP_SUCCESS"}
    print(json.dumps({"batch_id": done.batch_id, "status": done.status if result.success else "Error",
                      "counts": {k: done.counts.get(k, 0) for k in ("Created", "Updated", "Unchanged", "Errored")},
                      "results_file": done.results_file, "steps": steps}))
    return 0 if result.success else 1


def one_job_run(path: Path, rows: int, executor: str, logs: Path) -> Run:
    """`import_job` with the given executor, in a child process with fresh homes (sqlite target)."""
    home = Path(tempfile.mkdtemp(prefix=f"bench_home_{rows}_"))
    dagster_home = Path(tempfile.mkdtemp(prefix="bench_dagster_"))
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PATIENT_ETL_TARGET_URL",)}
    env |= {"PATIENT_ETL_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    command = [sys.executable, str(Path(__file__).resolve()), "--job-child", str(path), "--executor", executor]
    log = logs / f"job_{rows}_{executor}.log"
    try:
        wall, rc, outcome, maxrss, tree, _, _ = measured(command, env, log)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(dagster_home, ignore_errors=True)
    steps = (outcome or {}).pop("steps", {})
    run = Run(rows, "sqlite", f"job {executor}", wall, rc, outcome, maxrss, tree, steps, sum(steps.values()), str(log))
    print(f"  job      {rows:>9,} {executor:12} rc={run.rc} wall={wall:6.1f}s peak={run.peak_mb:6.0f} MB "
          f"(largest process {run.maxrss_mb or 0:.0f} MB) counts={(outcome or {}).get('counts')}", flush=True)
    return run


# -- where the time goes, statement by statement --------------------------------------------------------

def trace_child(argv: list[str]) -> int:
    """Inside the child: `patient-etl import` in-process with every DuckDB and target statement, the
    GX validation and the target's bulk moves timed; the top entries go to stderr as `TRACE` lines.
    Monkeypatching only: nothing in patient_etl is changed."""
    import atexit
    from collections import defaultdict

    import duckdb
    import sqlalchemy as sa

    times: list[tuple[str, float, str]] = []

    def short(sql) -> str:
        return re.sub(r"\s+", " ", str(sql)).strip()[:100]

    class Traced:
        def __init__(self, con):
            self._con = con

        def __getattr__(self, name):
            return getattr(self._con, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._con.close()
            return False

        def execute(self, sql, *a, **k):
            started = time.perf_counter()
            result = self._con.execute(sql, *a, **k)
            times.append(("duckdb", time.perf_counter() - started, short(sql)))
            return result

    connect = duckdb.connect
    duckdb.connect = lambda *a, **k: Traced(connect(*a, **k))
    exec_driver_sql = sa.engine.Connection.exec_driver_sql

    def traced_exec(self, sql, *a, **k):
        started = time.perf_counter()
        result = exec_driver_sql(self, sql, *a, **k)
        times.append(("target", time.perf_counter() - started, short(sql)))
        return result

    sa.engine.Connection.exec_driver_sql = traced_exec

    def timed(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            started = time.perf_counter()
            result = original(*a, **k)
            detail = next((x for x in a if isinstance(x, str) and re.fullmatch(r"\w+", x)), "")
            times.append(("python", time.perf_counter() - started, f"{label} {detail}".strip()))
            return result

        setattr(owner, name, wrapper)

    def timed_generator(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            inner, total = original(*a, **k), 0.0
            while True:
                started = time.perf_counter()
                try:
                    item = next(inner)
                except StopIteration:
                    total += time.perf_counter() - started
                    break
                total += time.perf_counter() - started
                yield item
            times.append(("python", total, label))

        setattr(owner, name, wrapper)

    from patient_etl.quality import row_checks
    from patient_etl.quality.validator import Validator
    from patient_etl.target.base import Target
    from patient_etl.target.postgres import PostgresTarget
    from patient_etl.target.sqlite import SqliteTarget

    timed_generator(Validator, "validate", "GX validate (validator process), all chunks (incl. reading them from DuckDB)")
    timed_generator(row_checks._GroupFrames, "frames", "  of which: DuckDB -> Arrow frames")
    timed(row_checks, "run_row_checks", "row_checks.run_row_checks")
    for cls in (Target, PostgresTarget, SqliteTarget):
        for name in ("decide_entity", "write_entity", "load", "fetch", "write_logs", "migrate"):
            if name in vars(cls):
                timed(cls, name, f"Target.{name}")

    @atexit.register
    def report() -> None:
        totals: dict = defaultdict(lambda: [0, 0.0])
        for kind, seconds, what in times:
            totals[(kind, what)][0] += 1
            totals[(kind, what)][1] += seconds
        for (kind, what), (n, seconds) in sorted(totals.items(), key=lambda x: -x[1][1])[:30]:
            if seconds >= 0.05:
                print(f"TRACE {seconds:7.2f} s  x{n:<3} {kind:7} {what}", file=sys.stderr, flush=True)

    from patient_etl.cli import main as cli_main

    return cli_main(argv)


def trace_run(path: Path, rows: int, logs: Path, target_url: str | None = None) -> list[str]:
    home = Path(tempfile.mkdtemp(prefix="bench_home_trace_"))
    env = {k: v for k, v in os.environ.items() if k not in ("PATIENT_ETL_TARGET_URL", "DAGSTER_HOME")}
    env["PATIENT_ETL_HOME"] = str(home)
    if target_url:
        env["PATIENT_ETL_TARGET_URL"] = target_url
    log = logs / f"trace_{rows}_{'postgres' if target_url else 'sqlite'}.log"
    try:
        with log.open("w") as err:
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--trace-child", "import", str(path),
                            "--json"], env=env, stdout=subprocess.DEVNULL, stderr=err, check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return [line[6:] for line in log.read_text(errors="replace").splitlines() if line.startswith("TRACE ")]


# -- reporting -----------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("duckdb", "great_expectations", "dagster", "pandas", "pyarrow", "sqlalchemy", "psycopg"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = "?"
    return out


def machine() -> str:
    mem = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"nproc {os.cpu_count()}, {cpu}\n{mem}"


def table(runs: list[Run], floors: dict[int, dict[str, float]]) -> str:
    # Two ratios: to the floor this file has always quoted (PG COPY alone for postgres, DuckDB's read for
    # sqlite), and to the floor as issue 10 words it: DuckDB's read of the file plus the target's own bulk
    # load of it (PostgreSQL's COPY; SQLite's `.import`, its nearest to COPY).
    lines = ["| rows | target | run | import wall s | rows/s | peak MB | DuckDB read s | target load s | "
             "ratio import/floor | ratio to read + load | counts (C/U/Un/E) |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in runs:
        floor = floors.get(r.rows, {})
        duck_s, load_s = floor.get("duckdb"), floor.get(r.target)
        base = load_s if r.target == "postgres" and load_s else duck_s
        c = (r.outcome or {}).get("counts", {})
        counts = "/".join(f"{c.get(k, '?'):,}" if isinstance(c.get(k), int) else "?"
                          for k in ("Created", "Updated", "Unchanged", "Errored"))
        if r.rc != 0:  # a run that failed has no figures, only its log
            lines.append(f"| {r.rows:,} | {r.target} | {r.label} | failed (exit {r.rc}): {r.log} |" + " - |" * 7)
            continue
        lines.append(
            f"| {r.rows:,} | {r.target} | {r.label} | {r.wall_s:.1f} | {r.rows / r.wall_s:,.0f} | {r.peak_mb:,.0f} | "
            f"{_f(duck_s)} | {_f(load_s)} | "
            f"{(r.wall_s / base) if base else float('nan'):.0f}x | "
            f"{f'{r.wall_s / (duck_s + load_s):.1f}x' if duck_s and load_s else '-'} | "
            f"{counts} |")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def steps_table(runs: list[Run]) -> str:
    names: list[str] = []
    for r in runs:
        names += [n for n in r.steps if n not in names]
    head = "| step | " + " | ".join(f"{r.rows // 1000}k {r.target} {r.label}" for r in runs) + " |"
    lines = [head, "| --- |" + " ---: |" * len(runs)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_f(r.steps.get(n)) for r in runs) + " |")
    lines.append("| **all steps (in process)** | " + " | ".join(_f(r.steps_total_s) for r in runs) + " |")
    lines.append("| **process wall (startup + steps + exit)** | " + " | ".join(f"{r.wall_s:.2f}" for r in runs) + " |")
    return "\n".join(lines)


def profile_report(prof: Path, top: int = 30) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(prof), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    out.write("\n---- by cumulative time ----\n")
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# -- main -------------------------------------------------------------------------------------------------

def dlt_child(path: Path, db: str, work: Path) -> int:
    """dlt's merge load of the roster into PostgreSQL, as its documentation writes one: the file read
    as Arrow batches (all text), merged on the patient ID. It validates nothing; for comparison only."""
    import dlt
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = HEADER.split(",")

    def roster():
        options = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True)
        reader = pacsv.open_csv(path, convert_options=options, read_options=pacsv.ReadOptions(block_size=8 << 20))
        yield from reader

    resource = dlt.resource(roster, name="member", write_disposition="merge", primary_key="patient_id")
    url = PG_TARGET.format(db=db)
    if "@" in url and ":" not in url.split("://", 1)[1].split("@", 1)[0]:
        url = url.replace("@", ":unused@", 1)  # dlt insists on a password; a trust-auth server ignores it
    pipeline = dlt.pipeline("roster_bench", destination=dlt.destinations.postgres(url),
                            dataset_name="roster", pipelines_dir=str(work))
    info = pipeline.run(resource)
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM member")[0][0]
    print(json.dumps({"loads": len(info.loads_ids), "rows_in_target": rows}))
    return 0


DLT_PYTHON = sys.executable  # --dlt-python: an interpreter with dlt (a venv of its own keeps its pins apart)


def dlt_runs(path: Path, rows: int, logs: Path) -> list[Run]:
    """Two dlt merge loads of the file into a fresh database (the second: every row already there)."""
    db = create_db("benchdlt")
    work = Path(tempfile.mkdtemp(prefix="bench_dlt_"))
    runs = []
    try:
        for label in ("dlt merge #1", "dlt merge again"):
            log = logs / f"dlt_{rows}_{label.split()[-1].strip('#')}.log"
            command = [DLT_PYTHON, str(Path(__file__).resolve()), "--dlt-child", str(path), db, str(work)]
            wall, rc, outcome, maxrss, tree, _, _ = measured(command, os.environ.copy(), log)
            run = Run(rows, "postgres", label, wall, rc, outcome, maxrss, tree, {}, None, str(log))
            print(f"  dlt      {rows:>9,} {label:15} rc={rc} wall={wall:6.1f}s peak={run.peak_mb:6.0f} MB "
                  f"target rows={(outcome or {}).get('rows_in_target')}", flush=True)
            runs.append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        drop_db(db)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--target", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    parser.add_argument("--seed", type=int, default=20240101)
    parser.add_argument("--repeat", type=int, default=2, help="fresh imports per size and target (default 2)")
    parser.add_argument("--no-reimport", action="store_true", help="skip the second import on the same home")
    parser.add_argument("--profile", action="store_true",
                        help="also run the smallest size under cProfile (sqlite) and print the hot spots")
    parser.add_argument("--dagster-job", action="store_true",
                        help="also run `import_job` through Dagster's executors (in_process and multiprocess, "
                             "the default for launched runs) on a persistent instance, sqlite target")
    parser.add_argument("--profile-rows", type=int, help="the size --profile runs on (default: the smallest)")
    parser.add_argument("--dlt", action="store_true",
                        help="also run dlt's merge load of each file into PostgreSQL (pip install -e '.[bench]')")
    parser.add_argument("--tree", help="run the `patient-etl` of this source tree (a checkout of another commit)")
    parser.add_argument("--dlt-python", help="the interpreter --dlt runs dlt with (default: this one)")
    parser.add_argument("--dlt-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--job-child", help=argparse.SUPPRESS)
    parser.add_argument("--executor", default="multiprocess", help=argparse.SUPPRESS)
    if argv is None and sys.argv[1:2] == ["--trace-child"]:
        return trace_child(sys.argv[2:])
    args = parser.parse_args(argv)
    if args.job_child:
        return job_child(Path(args.job_child), args.executor)
    if args.dlt_child:
        return dlt_child(Path(args.dlt_child[0]), args.dlt_child[1], Path(args.dlt_child[2]))

    global TREE, DLT_PYTHON
    TREE = Path(args.tree).resolve() if args.tree else None
    DLT_PYTHON = args.dlt_python or sys.executable
    out = Path(args.out).absolute()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    targets = ["sqlite", "postgres"] if args.target == "both" else [args.target]
    print(f"# roster benchmark {dt.datetime.now().isoformat(timespec='seconds')}"
          + (f" (tree {TREE})" if TREE else ""))
    print(machine())
    print(" ".join(f"{k} {v}" for k, v in versions().items()), flush=True)

    runs: list[Run] = []
    floors: dict[int, dict[str, float]] = {}
    problems: list[str] = []
    metas = {}
    for rows in sorted(args.rows):
        path, meta = roster_file(out, rows, args.seed)
        metas[rows] = meta
        print(f"\n## {rows:,} rows: {path} ({meta['size'] / 1e6:.0f} MB, generated in {meta.get('generate_s')} s, "
              f"planted errors {meta['bad']:,}: {meta['bad_by_kind']})", flush=True)
        floors[rows] = {"duckdb": duckdb_floor(path)}
        if "sqlite" in targets:
            floors[rows]["sqlite"], sqlite_how = sqlite_floor(path)
        if "postgres" in targets:
            db = create_db("benchfloor")
            try:
                floors[rows]["postgres"] = pg_floor(path, db)
            finally:
                drop_db(db)
        print(f"  floor: DuckDB read_csv {floors[rows]['duckdb']:.2f} s"
              + (f", SQLite load ({sqlite_how}) {floors[rows]['sqlite']:.2f} s" if "sqlite" in floors[rows] else "")
              + (f", PostgreSQL COPY {floors[rows]['postgres']:.2f} s" if "postgres" in floors[rows] else ""),
              flush=True)
        for target in targets:
            for n in range(1, args.repeat + 1):
                last = n == args.repeat
                home = Path(tempfile.mkdtemp(prefix=f"bench_home_{rows}_"))
                db = create_db() if target == "postgres" else None
                try:
                    run = one_import(path, rows, target, f"import #{n}", home, db, logs)
                    runs.append(run)
                    problems += [f"{rows:,} {target} {run.label}: {p}" for p in check_counts(run, meta, False)]
                    if last and not args.no_reimport and run.rc == 0:
                        again = one_import(path, rows, target, "re-import", home, db, logs)
                        runs.append(again)
                        problems += [f"{rows:,} {target} re-import: {p}" for p in check_counts(again, meta, True)]
                finally:
                    shutil.rmtree(home, ignore_errors=True)
                    if db:
                        drop_db(db)
        if args.dlt:
            runs += dlt_runs(path, rows, logs)

    if args.dagster_job:
        print("\n## import_job through Dagster executors (sqlite)", flush=True)
        for rows in sorted(args.rows):
            path, meta = roster_file(out, rows, args.seed)
            for executor in ("in_process", "multiprocess"):
                run = one_job_run(path, rows, executor, logs)
                runs.append(run)
                problems += [f"{rows:,} {run.label}: {p}" for p in check_counts(run, meta, False)]

    print("\n## Results\n")
    print(table(runs, floors))
    print("\nPeak MB is the larger of GNU time's max RSS and the sampled RSS sum of the process tree. "
          "Ratio: import wall / floor (DuckDB read for sqlite, PG COPY for postgres); read + load: import wall / "
          "(DuckDB read + the target's bulk load of the file).")
    print("\n## Per-step durations (s, from Dagster STEP_SUCCESS events)\n")
    print(steps_table(runs))
    print("\n## Count checks\n")
    print("\n".join(f"- {p}" for p in problems) if problems else "all counts add up to the row count and match "
          "the planted errors (first import: Created + Errored; re-import: Unchanged + Errored)")

    if args.profile:
        rows = args.profile_rows or min(args.rows)
        path, _ = roster_file(out, rows, args.seed)
        prof = out / f"import_{rows}_sqlite.prof"
        home = Path(tempfile.mkdtemp(prefix="bench_home_prof_"))
        try:
            print(f"\n## cProfile: {rows:,} rows, sqlite ({prof})\n", flush=True)
            run = one_import(path, rows, "sqlite", "cProfile", home, None, logs, profile=prof)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if prof.exists():
            report = profile_report(prof)
            (out / f"import_{rows}_sqlite.prof.txt").write_text(report)
            print("```\n" + report + "```")
        print(steps_table([run]))
        for target in targets:
            db = create_db() if target == "postgres" else None
            try:
                lines = trace_run(path, rows, logs, PG_TARGET.format(db=db) if db else None)
            finally:
                if db:
                    drop_db(db)
            print(f"\n## Statement trace: {rows:,} rows, {target} (top entries, seconds)\n\n```")
            print("\n".join(lines) + "\n```", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
