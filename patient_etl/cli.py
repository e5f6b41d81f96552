"""`patient-etl`: the same job the Dagster UI runs, launched from the command line, in this home's instance.

Exit codes: 0 the batch finished (row errors included); 2 it failed at file level, or the command was
used wrongly (a missing file, an unknown template or batch); 1 an internal error (the batch is then
Failed with its reason, and the same failure path as in Dagster wrote its results file).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fcntl
import getpass
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.storage.defs_state.base import set_defs_state_storage

from patient_etl.batches import AWAITING_APPROVAL, Home, SourceFile
from patient_etl.duck import SettingError, memory_limit
from patient_etl.entities import ENTITIES, entity_named
from patient_etl.failure import end_failed_run, run_failure_reason
from patient_etl.instance import write_home_config
from patient_etl.quality.validator import prewarm
from patient_etl.resources import PatientEtl, patient_etl_from_env
from patient_etl.sources import Sources
from patient_etl.sources.resources import sources_from_env
from patient_etl.staging.mappings import MappingError, load_mapping, resolve

REPO_DATA = Path(__file__).resolve().parents[1] / "data"
DEMO_HOME = "patient_etl_demo"
INPUT_SUFFIXES = (".csv", ".txt", ".tsv", ".tab", ".psv", ".zip", ".xlsx", ".gz")
DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}
COUNTED = ("Created", "Updated", "Unchanged", "Errored")
REPORTED = ("Finished", "Finished with Errors", AWAITING_APPROVAL, "Rejected", "Expired")  # else Failed
log = logging.getLogger("patient_etl")


class UsageError(Exception):
    """The command was used wrongly: exit 2 with the reason."""


@contextmanager
def home_instance(home: Home):
    """DAGSTER_HOME's instance when it is set, else this home's own (created on first use)."""
    if os.environ.get("DAGSTER_HOME"):
        with dg.DagsterInstance.get() as instance:
            yield instance
        return
    folder = home.dagster
    folder.mkdir(parents=True, exist_ok=True)
    # Two first imports at once would both create the instance's SQLite tables ("already exists"):
    # the first to hold the lock creates them, the other finds them.
    with open(folder / ".create.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_home_config(folder)
        instance = dg.DagsterInstance.from_config(str(folder))
        instance.get_dynamic_partitions("batches")  # storage created (or found) while the lock is held
        instance.get_runs(limit=1)
    with instance:
        yield instance


def expand(paths: list[str]) -> list[Path]:
    """The files to import: each regular file named, and a folder's regular files with an input suffix.
    A folder's symbolic link to a file outside the folder is skipped (it could point anywhere)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            folder = path.resolve()
            files += sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(INPUT_SUFFIXES)
                            and not p.name.startswith(".") and p.resolve().parent == folder)
        elif path.is_file():
            files.append(path)
        elif path.exists() or path.is_symlink():
            what = "a broken link" if not path.exists() else "not a regular file (a pipe, socket or device)"
            raise UsageError(f"{raw} is {what}; give a file or a folder")
        else:
            raise UsageError(f"no such file or folder: {raw}")
    if not files:
        raise UsageError("no files to import")
    return files


def import_batch(paths: list[str], etl: PatientEtl, dry_run: bool = False, mapping: str | None = None,
                 instance: dg.DagsterInstance | None = None, verbose: bool = False,
                 delimiter: str | None = None, review: bool = False) -> dict:
    """Register the files as one batch, run the whole flow on it in-process, return the outcome."""
    memory_limit()  # a setting that cannot be used is refused before a batch is registered
    prewarm()
    if mapping:  # a bad template is refused before anything is registered; a path is kept absolute
        template = load_mapping(mapping)
        mapping = str(resolve(mapping).absolute()) if Path(mapping).suffix in (".yaml", ".yml") else template.name
    files = expand(paths)
    sources = [SourceFile(p.name, str(p.absolute()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    now = dt.datetime.now(dt.UTC)
    fingerprint = hashlib.sha256(json.dumps([[s.location, s.size, s.mtime_ns] for s in sources]).encode()
                                 + now.isoformat().encode() + os.urandom(8)).hexdigest()
    registry = etl.registry()
    batch = registry.register("cli", sources, fingerprint, mapping=mapping, now=now, dry_run=dry_run)
    if delimiter:
        batch.delimiter = DELIMITERS.get(delimiter, delimiter)
        registry.save(batch)
    if review:
        batch.review["requested"] = "it was imported with --review"
        registry.save(batch)
    return run_batch(batch.batch_id, etl, dry_run=dry_run, instance=instance, verbose=verbose)


def run_batch(batch_id: str, etl: PatientEtl, dry_run: bool = False, instance: dg.DagsterInstance | None = None,
              sources: Sources | None = None, verbose: bool = False, job_name: str = "import_job",
              publish: dict | None = None) -> dict:
    """Run `import_job` (or `job_name`, with `publish` config for `published_batch`) on a registered
    batch in-process (a first run, or a reprocess), in `instance` (by default this home's); a failed run
    ends its batch through the one failure path."""
    from patient_etl.definitions import build_defs

    if job_name == "import_job":
        prewarm()
    if instance is None:
        with home_instance(etl.home_dir()) as own:
            return run_batch(batch_id, etl, dry_run, own, sources, verbose, job_name, publish)
    registry = etl.registry()
    batch = registry.require(batch_id)
    if batch.dry_run != dry_run:  # a dry run's stages write nothing to the target, not even their status
        batch.dry_run = dry_run
        registry.save(batch)
    if not instance.has_dynamic_partition("batches", batch_id):
        instance.add_dynamic_partitions("batches", [batch_id])
    # The CLI is its own launcher: settings and sources are read from the environment now, as the code
    # location's EnvVars would be at run time.
    sources = sources or sources_from_env(resolve=True)
    run_config: dict = {"ops": {"published_batch": {"config": {"dry_run": dry_run, **(publish or {})}}}}
    if not verbose:  # the summary is the output; Dagster's own log stays in the instance
        run_config["loggers"] = {"console": {"config": {"log_level": "CRITICAL"}}}
    # Definitions resolve their state against the current instance's storage; in a process that has
    # opened other instances before (tests, notebooks) that may be a closed one: name ours, before the
    # job is resolved too (resolving it reads that state: a collected instance failed a test run).
    with set_defs_state_storage(instance.defs_state_storage):
        job = build_defs({"etl": etl, "sources": sources}).resolve_job_def(job_name)
        result = job.execute_in_process(instance=instance, partition_key=batch_id, run_config=run_config,
                                        tags={"launched_by": "cli"}, raise_on_error=False)
    if not result.success:
        end_failed_run(log, etl, instance, result.dagster_run, sources)
    batch = registry.require(batch_id)
    return {
        "batch_id": batch.batch_id,
        "status": batch.status if batch.status in REPORTED else "Failed",
        "counts": {k: batch.counts.get(k, 0) for k in COUNTED},
        "results_file": batch.results_file,
        "reason": batch.reason,
        "failure": batch.failure,
        "dry_run": dry_run,
        "run_id": result.run_id,
        "run_failure": None if result.success else run_failure_reason(instance, result.run_id),
        "review": batch.review,
    }


def _print_outcome(outcome: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps({k: outcome[k] for k in ("batch_id", "status", "counts", "results_file")}))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in outcome["counts"].items())
        label = " (dry run: nothing written)" if outcome.get("dry_run") else ""
        label = " (preview: nothing written)" if outcome["status"] == AWAITING_APPROVAL else label
        print(f"Batch {outcome['batch_id']}: {outcome['status']}{label}")
        if outcome["status"] in ("Failed", "Rejected", "Expired"):
            print(f"  reason: {outcome['reason']}")
        elif outcome["status"] == AWAITING_APPROVAL:
            print(f"  held because {outcome['review'].get('held')}; preview counts: {counts}")
        else:
            print(f"  {counts}")
        if outcome["results_file"]:
            print(f"  results: {outcome['results_file']}")
    if outcome["status"] != "Failed":
        return 0
    return 2 if outcome.get("failure") == "file" else 1


def _batch_summary(batch) -> dict:
    return {
        "batch_id": batch.batch_id, "source": batch.source, "files": [f.name for f in batch.files],
        "status": batch.status, "counts": {k: batch.counts.get(k, 0) for k in COUNTED},
        "received": batch.registered_at,
        "finished": batch.history[-1]["at"] if batch.history and not batch.is_pending
        and batch.status != AWAITING_APPROVAL else None,
        **{key: batch.review.get(key) for key in ("held", "decision", "decided_by", "decided_at")},
    }


def list_batches(etl: PatientEtl, status: str | None, as_json: bool) -> int:
    batches = [b for b in etl.registry().all() if status is None or b.status.lower() == status.lower()]
    rows = [_batch_summary(b) for b in sorted(batches, key=lambda b: b.registered_at)]
    if as_json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no batches" + (f" with status {status!r}" if status else ""))
        return 0
    print(f"{'batch':44} {'source':7} {'status':21} {'created':>8} {'updated':>8} {'unchanged':>9} "
          f"{'errored':>8}  received")
    for r in rows:
        c = r["counts"]
        decided = f"  {r['decision']} by {r['decided_by']} at {r['decided_at']}" if r["decided_by"] else ""
        print(f"{r['batch_id']:44} {r['source']:7} {r['status']:21} {c['Created']:>8} {c['Updated']:>8} "
              f"{c['Unchanged']:>9} {c['Errored']:>8}  {r['received']}{decided}")
    return 0


def show_batch(etl: PatientEtl, batch_id: str, as_json: bool) -> int:
    batch = etl.registry().get(batch_id)
    if batch is None:
        raise UsageError(f"no batch {batch_id!r} in {etl.home_dir().registry}")
    detail = {**_batch_summary(batch), "reason": batch.reason, "mapping": batch.mapping,
              "results_file": batch.results_file, "dry_run": batch.dry_run,
              "landed": [{"name": i["name"], "size": i["size"], "sha256": i["sha256"]} for i in batch.landed],
              "purged_at": batch.purged_at,
              "history": batch.history, "review": batch.review}
    if as_json:
        print(json.dumps(detail))
        return 0
    print(f"Batch {batch.batch_id}: {batch.status}")
    for key in ("source", "files", "received", "finished", "mapping", "reason", "results_file", "purged_at", "held",
                "decision", "decided_by", "decided_at"):
        if detail[key]:
            print(f"  {key}: {', '.join(detail[key]) if isinstance(detail[key], list) else detail[key]}")
    print("  counts: " + ", ".join(f"{k} {v}" for k, v in detail["counts"].items()))
    for item in detail["landed"]:
        print(f"  landed: {item['name']} ({item['size']:,} bytes, sha256 {item['sha256'][:16]}...)")
    print("  history: " + " -> ".join(f"{h['status']} ({h['at']})" for h in batch.history))
    return 0


def purge_batches(etl: PatientEtl, older_than_days: float, as_json: bool) -> int:
    """Retention: the landed copies and staging of batches that ended more than DAYS ago."""
    purged = etl.registry().purge(older_than_days)
    if as_json:
        print(json.dumps({"purged": [{"batch_id": b.batch_id, "status": b.status, "purged_at": b.purged_at}
                                     for b in purged]}))
    else:
        print(f"purged {len(purged)} batch(es) that ended more than {older_than_days:g} days ago "
              "(landed copies and staging; results and batch records kept)")
        for batch in purged:
            print(f"  {batch.batch_id} ({batch.status})")
    return 0


def decide_batch(etl: PatientEtl, batch_id: str, decision: str, reason: str, as_name: str | None,
                 as_json: bool, verbose: bool = False) -> int:
    """`approve` / `reject`: checked here (the batch waits, the user may decide), then run as the same job
    a data engineer launches from the UI on the batch's partition."""
    from patient_etl.publish.review import ReviewRefused, check_approver, check_decidable

    batch = etl.registry().get(batch_id)
    if batch is None:
        raise UsageError(f"no batch {batch_id!r} in {etl.home_dir().registry}")
    user = getpass.getuser()
    try:
        check_approver(etl, *dict.fromkeys([user, as_name or user]))
        check_decidable(etl, batch, decision, reason)
    except ReviewRefused as exc:
        raise UsageError(str(exc)) from None
    job = "approve_batch_job" if decision == "approve" else "reject_batch_job"
    outcome = run_batch(batch_id, etl, job_name=job, verbose=verbose,
                        publish={"decision": decision, "reason": reason, "decided_by": as_name or user})
    review = outcome["review"]
    ok = outcome["run_failure"] is None
    if as_json:
        print(json.dumps({**{k: outcome[k] for k in ("batch_id", "status", "counts", "results_file")},
                          **{k: review.get(k) for k in ("decided_by", "decided_at", "changed_since_preview")},
                          **({} if ok else {"error": outcome["run_failure"]})}))
    elif ok:
        _print_outcome(outcome, False)
        print(f"  {review.get('decision')} by {review.get('decided_by')} at {review.get('decided_at')}")
        changed = review.get("changed_since_preview")
        if changed:
            print("  changed since the preview: " + ", ".join(f"{k} {v}" for k, v in changed.items())
                  + " (see since_preview in the results file)")
    else:
        print(f"patient-etl: {decision} of batch {batch_id} did not complete: {outcome['run_failure']}",
              file=sys.stderr)
    return 0 if ok else 1


def list_duplicates(etl: PatientEtl, only_open: bool, as_json: bool) -> int:
    """`duplicates`: the target's possible-duplicate pairs, by member ID (no names or birth dates)."""
    from patient_etl.linkage.merge import list_pairs
    from patient_etl.target import open_target

    target = open_target(etl.target())
    try:
        pairs = list_pairs(target, only_open)
    finally:
        target.dispose()
    if as_json:
        print(json.dumps(pairs))
        return 0
    if not pairs:
        print("no possible duplicates" + (" open for review" if only_open else ""))
        return 0
    print(f"{'id':>6}  {'member':20} {'member':20} {'probability':>11}  {'status':16} agreed (similar)")
    for p in pairs:
        decided = f"  by {p['decided_by']} at {p['decided_at']}" if p["decided_by"] else ""
        similar = f" ({p['similar_fields']})" if p["similar_fields"] else ""
        print(f"{p['id']:>6}  {p['member_id_a']:20} {p['member_id_b']:20} {p['match_probability']:>11.4f}  "
              f"{p['status']:16} {p['agreed_fields'] or '-'}{similar}{decided}")
    return 0


def resolve_duplicate(etl: PatientEtl, pair_id: str, decision: str, by: str | None, as_json: bool) -> int:
    """`duplicates resolve ID --same|--different`: a person's decision on a pair; nothing is merged."""
    from patient_etl.linkage.merge import decide_pair
    from patient_etl.results import utc_now
    from patient_etl.target import open_target

    if not pair_id.isdigit():
        raise UsageError(f"a possible-duplicate ID is a number (see patient-etl duplicates), not {pair_id!r}")
    target = open_target(etl.target())
    try:
        pair = decide_pair(target, int(pair_id), decision, by or getpass.getuser(), utc_now())
    finally:
        target.dispose()
    if pair is None:
        raise UsageError(f"no possible duplicate {pair_id} in the target (see patient-etl duplicates)")
    if as_json:
        print(json.dumps(pair))
    else:
        print(f"possible duplicate {pair['id']} ({pair['member_id_a']}, {pair['member_id_b']}): {pair['status']}, "
              f"decided by {pair['decided_by']} at {pair['decided_at']}")
    return 0


def train_linkage(etl: PatientEtl, as_json: bool) -> int:
    """`linkage train`: a new version of the possible-duplicates model from the target's members."""
    from patient_etl.linkage.assets import train_from_target

    try:
        info = train_from_target(etl)
    except ValueError as exc:  # too few members, or a wrong setting: says which, no values
        raise UsageError(str(exc)) from None
    out = {"version": info.version, "path": str(info.path), "trained_at": info.trained_at,
           "trained_on": info.trained_on}
    if as_json:
        print(json.dumps(out))
    else:
        print(f"linkage model v{info.version} trained on {info.trained_on.get('target', 0)} members: {info.path}")
    return 0


def run_ui(home: Home, port: int) -> int:
    """The Dagster UI and daemon for this code location, on 127.0.0.1, with this home's instance."""
    env = {**os.environ, "PATIENT_ETL_HOME": str(home.root)}
    if not env.get("DAGSTER_HOME"):
        with home_instance(home):  # creates the folder and its dagster.yaml on first use
            pass
        env["DAGSTER_HOME"] = str(home.dagster)
    dagster = shutil.which("dagster") or str(Path(sys.executable).parent / "dagster")
    command = [dagster, "dev", "-m", "patient_etl.definitions", "-h", "127.0.0.1", "-p", str(port)]
    print(f"Dagster UI on http://127.0.0.1:{port} (instance {env['DAGSTER_HOME']}); Ctrl-C stops it")
    return subprocess.call(command, env=env)


GROUP_INDEX_RULE = ("a group index is a -N or _N suffix (Email-2, Address Line 1-2); a number after a space "
                    "counts as the index only after the field's own name (Email 2, Phone 2): after Address, "
                    "Address Line or Street it is the address line (Address 1, Address 2 = lines 1 and 2 of "
                    "the first address). Several unnumbered columns of a one-value list (Mobile, Home Phone, "
                    "Cell: all phones) fill it in column order: phone 1, 2, 3, after any numbered one")


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
                notes_text = (f"{c.group.name} group: add -1 .. -10 for more ({c.label}-2 or {c.label}_2 is the "
                              "second); " + GROUP_INDEX_RULE
                              + (f"; a group with any value needs {', '.join(c.group.complete)}"
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
    code = _print_outcome(second, False)
    print(f"See every batch: PATIENT_ETL_HOME={home} patient-etl batches; the UI: ... patient-etl ui")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="patient-etl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="import the sample rosters in data/demo into a fresh demo home")
    imp = sub.add_parser("import", help="import files, a folder or a zip as one batch")
    imp.add_argument("paths", nargs="+")
    imp.add_argument("--mapping", help="a saved mapping template: name in data/mappings or a YAML path")
    imp.add_argument("--dry-run", action="store_true", help="validate and report would-be outcomes; write nothing")
    imp.add_argument("--delimiter", help="the files' delimiter: one character, or comma, semicolon, tab, pipe "
                                         "(default: detected from the header)")
    imp.add_argument("--json", action="store_true", help="print one JSON object")
    imp.add_argument("--verbose", action="store_true", help="show Dagster's log of the run")
    imp.add_argument("--review", action="store_true", help="hold the batch for review: preview, publish nothing")
    lst = sub.add_parser("batches", help="list the batches of this home")
    lst.add_argument("--status", help="only batches with this status (e.g. Failed, \"Finished with Errors\")")
    lst.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one batch: status, counts, reason, files, history")
    show.add_argument("batch")
    show.add_argument("--json", action="store_true")
    rerun = sub.add_parser("rerun", help="reprocess a batch from its landed copy (a Failed one too)")
    rerun.add_argument("batch")
    rerun.add_argument("--json", action="store_true")
    rerun.add_argument("--verbose", action="store_true")
    purge = sub.add_parser("purge", help="remove landed copies and staging of batches that ended DAYS ago")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    purge.add_argument("--json", action="store_true")
    for name, help_text in (("approve", "publish a batch held for review (outcomes decided again)"),
                            ("reject", "end a batch held for review as Rejected; nothing is published")):
        decide = sub.add_parser(name, help=help_text)
        decide.add_argument("batch")
        if name == "reject":
            decide.add_argument("--reason", required=True, help="why (sent to the partner in the results file)")
        decide.add_argument("--as", dest="as_name", help="record this name as the decider (default: your user)")
        decide.add_argument("--json", action="store_true")
        decide.add_argument("--verbose", action="store_true")
    dups = sub.add_parser("duplicates", help="possible-duplicate patients flagged for review (IDs only)")
    dups.add_argument("--open", action="store_true", help="only the pairs no one has decided yet")
    dups.add_argument("--json", action="store_true")
    dups_sub = dups.add_subparsers(dest="duplicates_command")
    resolve_cmd = dups_sub.add_parser("resolve", help="record whether a pair is the same person (nothing is merged)")
    resolve_cmd.add_argument("pair_id", metavar="ID")
    decision = resolve_cmd.add_mutually_exclusive_group(required=True)
    decision.add_argument("--same", dest="decision", action="store_const", const="same",
                          help="the same person")
    decision.add_argument("--different", dest="decision", action="store_const", const="different",
                          help="different people: the pair is not flagged again")
    resolve_cmd.add_argument("--by", help="record this name as the decider (default: your user)")
    resolve_cmd.add_argument("--json", action="store_true")
    linkage = sub.add_parser("linkage", help="the possible-duplicates model")
    linkage_sub = linkage.add_subparsers(dest="linkage_command", required=True)
    train = linkage_sub.add_parser("train", help="retrain the model from the target's members (a new version)")
    train.add_argument("--json", action="store_true")
    ui = sub.add_parser("ui", help="the Dagster UI and daemon on this home's instance, on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    tpl = sub.add_parser("template", help="write the CSV template and its column notes")
    tpl.add_argument("entity", help=f"roster or one of: {', '.join(ENTITIES)}")
    tpl.add_argument("--out", default=".", help="folder to write into")
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        warnings.filterwarnings("ignore")  # Dagster's beta/preview notices are not the user's concern

    try:
        if args.command == "demo":
            return run_demo()
        if args.command == "template":
            template, notes = write_template(args.entity, Path(args.out))
            print(f"{template}\n{notes}")
            return 0
        etl = patient_etl_from_env(resolve=True)
        if args.command == "batches":
            return list_batches(etl, args.status, args.json)
        if args.command == "show":
            return show_batch(etl, args.batch, args.json)
        if args.command == "purge":
            if args.older_than < 0:
                raise UsageError("--older-than needs a number of days, 0 or more")
            return purge_batches(etl, args.older_than, args.json)
        if args.command == "ui":
            return run_ui(etl.home_dir(), args.port)
        if args.command == "duplicates":
            if args.duplicates_command == "resolve":
                return resolve_duplicate(etl, args.pair_id, args.decision, args.by, args.json)
            return list_duplicates(etl, args.open, args.json)
        if args.command == "linkage":
            return train_linkage(etl, args.json)
        if args.command == "rerun":
            batch = etl.registry().get(args.batch)
            if batch is None:
                raise UsageError(f"no batch {args.batch!r} in {etl.home_dir().registry}")
            if batch.purged_at:
                raise UsageError(f"batch {args.batch}: {batch.purged_reason}")
            if batch.status in ("Rejected", "Expired"):
                raise UsageError(f"batch {args.batch} was {batch.status.lower()} in review and is never published; "
                                 "a new upload of the file makes a new batch")
            return _print_outcome(run_batch(args.batch, etl, verbose=args.verbose), args.json)
        if args.command in ("approve", "reject"):
            return decide_batch(etl, args.batch, args.command, getattr(args, "reason", ""), args.as_name, args.json,
                                args.verbose)
        if args.delimiter is not None and len(DELIMITERS.get(args.delimiter, args.delimiter)) != 1:
            raise UsageError(f"--delimiter is one character or one of {', '.join(DELIMITERS)}")
        outcome = import_batch(args.paths, etl, dry_run=args.dry_run, mapping=args.mapping, verbose=args.verbose,
                               delimiter=args.delimiter, review=args.review)
        return _print_outcome(outcome, args.json)
    except (UsageError, KeyError, MappingError, SettingError) as exc:
        print(f"patient-etl: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2


def entry() -> None:
    """The `patient-etl` command: `main`, then out without tearing down the interpreter.

    Every file, database and connection is closed by then (each is opened in a `with`); what remains
    is Python finalizing the modules Dagster and GX loaded, 0.5-1.3 s of a small import's wall time.
    The `ui` command's children are its own processes and are already done.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # `python -m patient_etl.cli` (under cProfile, say) finalizes as usual
    sys.exit(main())
