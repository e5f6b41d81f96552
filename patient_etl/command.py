"""The `patient-etl` command's entry point, kept light: for the commands that run a batch, the validator
process (`quality/validator.py`) and the linkage process (`linkage/process.py`) are started before
anything imports Dagster (~1 s), so Great Expectations and Splink are imported on the other core while
this process starts. Then `cli.entry`."""

from __future__ import annotations

import sys

CHECKS_ROWS = ("import", "rerun", "demo")  # the commands whose runs check rows


def entry() -> None:
    if sys.argv[1:2] and sys.argv[1] in CHECKS_ROWS and not {"-h", "--help"} & set(sys.argv[2:]):
        from patient_etl.quality.validator import prewarm

        prewarm()
        from patient_etl.linkage import process

        process.prewarm()
    from patient_etl.cli import entry as run

    run()
