"""The same batch reprocessed from the command line and from the asset graph, side by side.

`patient-etl rerun BATCH` runs import_job in-process; `dagster asset materialize --select '*'
--partition BATCH` is what Materialize in the asset graph (and a backfill) runs: the implicit asset job
with the Definitions' executor. Both are whole processes here (start, code-location load, the run), on
the same home, the same instance and the same landed batch, alternated so the machine's noise falls on
both. The aim (issue 8): the asset-graph path within 1.5x of the CLI.

    .venv/bin/python benchmarks/launch_paths.py --rows 4 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def roster(path: Path, rows: int) -> Path:
    with path.open("w") as out:
        out.write("Patient ID,First Name,Last Name,DOB,Sex,City,State,Zip\n")
        for i in range(rows):
            out.write(f"B{i},First{i % 997},Last{i % 991},19{50 + i % 50}-0{1 + i % 9}-1{i % 9},"
                      f"{'MF'[i % 2]},Boston,MA,0{2100 + i % 800}\n")
    return path


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


def measure(rows: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        # The command in its own process, as `dagster asset materialize` is: the executors are compared.
        env = {**os.environ, "PATIENT_ETL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
               "PATIENT_ETL_COMMAND_IDLE_SECONDS": "0"}
        (home / "dagster").mkdir(parents=True)
        shutil.copy(ROOT / "benchmarks" / "local_dagster.yaml", home / "dagster" / "dagster.yaml")
        first = subprocess.run([str(BIN / "patient-etl"), "import", str(roster(Path(tmp) / "r.csv", rows)), "--json"],
                               env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        batch = json.loads(first.stdout)["batch_id"]
        cli, graph = [], []
        for _ in range(repeat):
            cli.append(timed([str(BIN / "patient-etl"), "rerun", batch, "--json"], env))
            graph.append(timed([str(BIN / "dagster"), "asset", "materialize", "-m", "patient_etl.definitions",
                                "--select", "*", "--partition", batch], env))
    return {"rows": rows, "cli_s": statistics.median(cli), "asset_graph_s": statistics.median(graph),
            "ratio": statistics.median(graph) / statistics.median(cli), "runs": repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| rows | CLI rerun s (median) | asset-graph materialize s (median) | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for rows in args.rows:
        r = measure(rows, args.repeat)
        print(f"| {r['rows']:,} | {r['cli_s']:.1f} | {r['asset_graph_s']:.1f} | {r['ratio']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
