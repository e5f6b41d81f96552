"""The `patient-etl` command's entry point, kept light. A command that runs a batch is first offered to the
command's shared server (`command_server.py`), whose worker has Dagster and the package imported already.
Run here instead (no server, or it is turned off), the validator process (`quality/validator.py`) and the
linkage process (`linkage/process.py`) are started before anything imports Dagster (~1 s), so Great
Expectations and Splink are imported on the other core while this process starts. Then `cli.entry`."""

from __future__ import annotations

import sys

CHECKS_ROWS = ("import", "rerun", "demo")  # the commands whose runs check rows


def entry() -> None:
    if sys.argv[1:2] and sys.argv[1] in CHECKS_ROWS and not {"-h", "--help"} & set(sys.argv[2:]):
        from patient_etl import command_server

        try:
            code = command_server.run_served(sys.argv[1:])
        except command_server.SettingError as exc:
            print(f"patient-etl: {exc}", file=sys.stderr)
            code = 2
        if code is not None:
            sys.exit(code)
        from patient_etl.quality.validator import prewarm

        prewarm()
        from patient_etl.linkage import process

        process.prewarm()
    from patient_etl.cli import entry as run

    run()


if __name__ == "__main__":
    entry()
