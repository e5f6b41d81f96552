"""A small file end to end, beside `python -c "import dagster"` (issue 10: a 4-row file within 3x).

Each round runs, one after another so that the machine's noise falls on all of them: `import dagster`,
loading the code location (`import patient_etl.definitions`), and `patient-etl import` of a 4-row roster
(one row errored) with linkage off and on, each a fresh process on a warm home (the home's Dagster
instance exists, as it does after the first import). A tree with the shared validator is also run
with PATIENT_ETL_VALIDATOR_IDLE_SECONDS=0 (a private validator importing GX in every run); its shared
runs find the server the warm-up started, as every run after the first does. A tree with the command's
server (`command_server.py`) is run served (the warm-up call started the server) and, with
PATIENT_ETL_COMMAND_IDLE_SECONDS=0, in the command's own process. With `--trees A B`, the imports run once per
source tree (PYTHONPATH, with `python -P` so that the working directory's checkout does not come first),
to compare two commits side by side.

    .venv/bin/python benchmarks/small_file.py --repeat 5
    .venv/bin/python benchmarks/small_file.py --repeat 5 --trees /path/to/old/checkout .
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("Patient ID,First Name,Last Name,Date of Birth,Sex,Address Line 1,City,State,Zip,Email,Phone",
        "S1,Ann,Lee,1980-01-02,F,1 Main St,Boston,MA,02110,a@example.com,617-555-0101",
        "S2,Bob,Ray,1975-03-04,M,2 Elm St,Boston,MA,02111,,617-555-0102",
        "S3,Cy,Fox,1990-05-06,M,3 Oak St,Boston,MA,02112,,",
        "S4,Di,Kim,13/13/2000,F,4 Pine St,Boston,MA,02113,,")


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--trees", nargs="+", default=[str(ROOT)], help="source trees to compare (PYTHONPATH)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="small_file_"))
    roster = work / "four.csv"
    roster.write_text("\n".join(ROWS) + "\n")
    python = sys.executable
    base = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PATIENT_ETL_TARGET_URL")}
    cases: dict[str, tuple[list[str], dict]] = {
        "python -c 'import dagster'": ([python, "-c", "import dagster"], base),
    }
    for n, tree in enumerate(args.trees):
        tree = str(Path(tree).resolve())
        label = f" [{Path(tree).name}]" if len(args.trees) > 1 else ""
        env = {**base, "PYTHONPATH": tree}
        # The tree's own `patient-etl` entry point (the installed script names only one tree's).
        module = "patient_etl.command" if (Path(tree) / "patient_etl" / "command.py").exists() else "patient_etl.cli"
        command = [python, "-P", "-c", f"from {module} import entry; entry()"]
        cases[f"code location load{label}"] = ([python, "-P", "-c", "import patient_etl.definitions"], env)
        validator = Path(tree) / "patient_etl" / "quality" / "validator.py"
        shared = validator.exists() and "serve_shared" in validator.read_text()
        served = (Path(tree) / "patient_etl" / "command_server.py").exists()
        # (linkage, validator idle seconds, command server idle seconds)
        variants = [("off", "600", "600"), ("on", "600", "600")] + ([("off", "0", "600")] if shared else []) \
            + ([("off", "600", "0"), ("on", "600", "0")] if served else [])
        for linkage, idle, command_idle in variants:
            home = work / f"home{n}_{linkage}_{idle}_{command_idle}"
            run_env = {**env, "PATIENT_ETL_HOME": str(home), "PATIENT_ETL_LINKAGE": linkage,
                       "PATIENT_ETL_VALIDATOR_IDLE_SECONDS": idle, "PATIENT_ETL_COMMAND_IDLE_SECONDS": command_idle}
            timed([*command, "import", str(roster), "--json"], run_env)  # the home and its instance exist
            which = ", shared validator" if shared and idle != "0" else ", private validator" if shared else ""
            which += (", in its own process" if command_idle == "0" else ", served") if served else ""
            cases[f"4-row import, linkage {linkage}{which}{label}"] = ([*command, "import", str(roster), "--json"],
                                                                       run_env)
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(args.repeat):
            for name, (cmd, env) in cases.items():
                times[name].append(timed(cmd, env))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(times["python -c 'import dagster'"])
    print(f"load average at the end: {os.getloadavg()[0]:.1f}; {args.repeat} rounds\n")
    print("| what | median s | min s | ratio to `import dagster` |\n| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f} | {median / floor:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
