"""Wide files stage in seconds: header mapping and staging are linear in the number of columns.

Run: .venv/bin/python benchmarks/wide_files.py [COLUMNS...]   (default 1000 3000 10000)
A file wider than PATIENT_ETL_MAX_COLUMNS (default 5,000) is refused at once; the benchmark raises
the limit to time staging itself.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from patient_etl.resources import PatientEtl
from patient_etl.staging.load import FileRejected, Limits, stage_files
from patient_etl.workspace import STAGED


def wide_file(path: Path, columns: int, rows: int = 20) -> Path:
    extra = [f"note {k}" for k in range(columns - 5)]
    lines = [",".join(["id", "First Name", "Last Name", "dob", "Sex", *extra])]
    lines += [",".join([f"M{r}", "Ann", "Lee", "1980-01-01", "F", *("x" for _ in extra)]) for r in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(widths: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        etl = PatientEtl(home=tmp)
        for width in widths:
            path = wide_file(Path(tmp) / f"roster_{width}.csv", width)
            for limits in (Limits(), Limits(max_columns=width)):
                workspace = etl.workspace(f"wide-{width}-{limits.max_columns}")
                start = time.perf_counter()
                try:
                    with workspace.open(STAGED) as db:
                        stage_files(db, [(path.name, path)], limits=limits)
                    outcome = "staged"
                except FileRejected as exc:
                    outcome = f"refused ({exc.code})"
                print(f"{width:>6} columns, limit {limits.max_columns:>6}: {outcome} in "
                      f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 3000, 10000])
