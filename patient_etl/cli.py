"""`patient-etl`: the same assets, run in-process on local files.

Exit codes: 0 the batch finished (row errors included), 2 it failed at file level, 1 internal error.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster._core.storage.defs_state.base import set_defs_state_storage

from patient_etl.batches import FINAL_STATUSES, Home, SourceFile
from patient_etl.entities import ENTITIES, entity_named
from patient_etl.resources import PatientEtl
from patient_etl.sources.resources import Sources, sources_from_env
from patient_etl.staging.mappings import MappingError, load_mapping, resolve

REPO_DATA = Path(__file__).resolve().parents[1] / "data"
DEMO_HOME = "patient_etl_demo"


def expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".txt", ".zip"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    if not files:
        raise FileNotFoundError("no files to import")
    return files


def import_batch(paths: list[str], etl: PatientEtl, dry_run: bool = False, mapping: str | None = None,
                 instance: dg.DagsterInstance | None = None) -> dict:
    """Register the files as one batch, run the whole flow on it in-process, return the outcome."""
    if mapping:  # a bad template is refused before anything is registered; a path is kept absolute
        template = load_mapping(mapping)
        mapping = str(resolve(mapping).absolute()) if Path(mapping).suffix in (".yaml", ".yml") else template.name
    files = expand(paths)
    sources = [SourceFile(p.name, str(p.absolute()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    now = dt.datetime.now(dt.UTC)
    fingerprint = hashlib.sha256(json.dumps([[s.location, s.size, s.mtime_ns] for s in sources]).encode()
                                 + now.isoformat().encode() + os.urandom(8)).hexdigest()
    batch = etl.registry().register("cli", sources, fingerprint, mapping=mapping, now=now)
    return run_batch(batch.batch_id, etl, dry_run=dry_run, instance=instance)


def run_batch(batch_id: str, etl: PatientEtl, dry_run: bool = False,
              instance: dg.DagsterInstance | None = None, sources: Sources | None = None) -> dict:
    """Run the whole flow on a registered batch in-process (a first run, or a reprocess)."""
    from patient_etl.definitions import build_defs

    if instance is None:
        with (dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()) as own:
            return run_batch(batch_id, etl, dry_run, own, sources)
    instance.add_dynamic_partitions("batches", [batch_id])
    defs = build_defs()
    # Definitions resolve their state against the current instance's storage; in a process that has
    # opened other instances before (tests, notebooks) that may be a closed one: name ours.
    with set_defs_state_storage(instance.defs_state_storage):
        result = _materialize(defs, batch_id, etl, dry_run, instance, sources)
    batch = etl.registry().require(batch_id)
    status = batch.status if batch.status in FINAL_STATUSES else "Error"
    if not result.success and status != "Failed":
        status = "Error"
    return {
        "batch_id": batch.batch_id,
        "status": status,
        "counts": {k: batch.counts.get(k, 0) for k in ("Created", "Updated", "Unchanged", "Errored")},
        "results_file": batch.results_file,
        "reason": batch.reason,
        "dry_run": dry_run,
        "run_id": result.run_id,
    }


def _materialize(defs: dg.Definitions, batch_id: str, etl: PatientEtl, dry_run: bool,
                 instance: dg.DagsterInstance, sources: Sources | None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        partition_key=batch_id,
        instance=instance,
        resources={"etl": etl, "sources": sources or sources_from_env()},
        run_config={"ops": {"published_batch": {"config": {"dry_run": dry_run}}}},
        raise_on_error=False,
        tags={"source": "cli"},
    )


def _print_outcome(outcome: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps({k: outcome[k] for k in ("batch_id", "status", "counts", "results_file")}))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in outcome["counts"].items())
        label = " (dry run: nothing written)" if outcome.get("dry_run") else ""
        print(f"Batch {outcome['batch_id']}: {outcome['status']}{label}")
        if outcome["status"] == "Failed":
            print(f"  reason: {outcome['reason']}")
        else:
            print(f"  {counts}")
        if outcome["results_file"]:
            print(f"  results: {outcome['results_file']}")
    return {"Failed": 2, "Error": 1}.get(outcome["status"], 0)


def write_template(entity_name: str, out: Path) -> tuple[Path, Path]:
    entity = entity_named(entity_name)
    out.mkdir(parents=True, exist_ok=True)
    label = "roster" if entity_name.lower() in ("roster", "patient", "patients") else entity.name
    columns = [c for c in entity.columns() if c.index == 0]
    template, notes = out / f"{label}_template.csv", out / f"{label}_template_notes.csv"
    with template.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow([c.label for c in columns])
    with notes.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["column", "required", "format", "also accepted as", "notes"])
        for c in columns:
            notes_text = c.field.describe
            if c.group is not None:
                notes_text = (f"{c.group.name} group: add -1 .. -10 for more ({c.label}-2); "
                              + (f"a group with any value needs {', '.join(c.group.complete)}"
                                 if c.group.complete else ""))
            elif c.name == entity.key:
                notes_text = notes_text or "unique key: decides create vs update"
            writer.writerow([c.label, "yes" if c.field.required else "no", c.field.kind.describe,
                             "; ".join(c.field.aliases), notes_text])
    return template, notes


def run_demo() -> int:
    home = Path(DEMO_HOME).absolute()
    shutil.rmtree(home, ignore_errors=True)
    etl = PatientEtl(home=str(home))
    print(f"Demo home: {home} (embedded target {Home(home).embedded_target_url})")
    first = import_batch([str(REPO_DATA / "demo" / "roster_monday.csv")], etl)
    print("Monday's roster (first import):")
    _print_outcome(first, False)
    second = import_batch([str(REPO_DATA / "demo" / "roster_tuesday.csv")], etl)
    print("Tuesday's roster (sample with deliberate mistakes):")
    return _print_outcome(second, False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="patient-etl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="import the sample rosters in data/demo into a fresh demo home")
    imp = sub.add_parser("import", help="import files, a folder or a zip as one batch")
    imp.add_argument("paths", nargs="+")
    imp.add_argument("--mapping", help="a saved mapping template: name in data/mappings or a YAML path")
    imp.add_argument("--dry-run", action="store_true", help="validate and report would-be outcomes; write nothing")
    imp.add_argument("--json", action="store_true", help="print one JSON object")
    tpl = sub.add_parser("template", help="write the CSV template and its column notes")
    tpl.add_argument("entity", help=f"roster or one of: {', '.join(ENTITIES)}")
    tpl.add_argument("--out", default=".", help="folder to write into")
    args = parser.parse_args(argv)

    try:
        if args.command == "demo":
            return run_demo()
        if args.command == "template":
            template, notes = write_template(args.entity, Path(args.out))
            print(f"{template}\n{notes}")
            return 0
        etl = PatientEtl(home=os.environ.get("PATIENT_ETL_HOME"), target_url=os.environ.get("PATIENT_ETL_TARGET_URL"))
        outcome = import_batch(args.paths, etl, dry_run=args.dry_run, mapping=args.mapping)
        return _print_outcome(outcome, args.json)
    except (FileNotFoundError, KeyError, MappingError) as exc:
        print(f"patient-etl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
