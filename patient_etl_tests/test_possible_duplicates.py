"""Possible duplicates through the pipeline: the same patient sent twice, or known under another ID, is
flagged to the partner and kept for review; a person's decision holds; linkage never stops a batch.

The deterministic match cannot see `John Smith` (A-1), `Jon Smith` (B-7) and `Jonathan Smyth` (B-8) with
the same birth date and phone as one person; a duplicate patient record is a patient-safety problem.
These run the real assets (Splink on DuckDB, in the linkage stage's own process) against SQLite and
PostgreSQL targets.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from patient_etl.cli import main
from patient_etl.linkage import process, synthetic
from patient_etl.linkage.run import SLOW
from patient_etl.resources import PatientEtl
from patient_etl_tests.conftest import query, read_results, write_csv

HEADER = "Patient ID,First Name,Last Name,DOB,Sex,Phone"
SMITHS = ("A-1,John,Smith,1980-03-14,M,978-555-0123", "B-7,Jon,Smith,1980-03-14,M,978-555-0123",
          "C-3,Mary,Jones,1975-06-01,F,617-555-0199")
SMYTH = "B-8,Jonathan,Smyth,1980-03-14,M,978-555-0123"
# What must never leave the partner's own rows: the other member's names and birth date.
PHI = ("John", "Jon,", "Smith", "Smyth", "Jonathan", "Mary", "Jones", "1980-03-14", "03/14/1980", "978-555")


def _messages(outcome: dict) -> dict[str, str]:
    return {r["external_id"]: r["messages"] for r in read_results(outcome)}


def _pairs_file(outcome: dict) -> list[dict]:
    path = outcome["results_file"].replace("_results.csv", "_possible_duplicates.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _run_text(instance: dg.DagsterInstance, run_id: str) -> tuple[str, dict]:
    """Everything Dagster keeps of a run (messages and metadata), and the linkage stage's metadata."""
    records = instance.get_records_for_run(run_id, limit=10_000).records
    texts, linkage = [], {}
    for record in records:
        entry = record.event_log_entry
        texts.append(entry.user_message or "")
        event = entry.dagster_event
        if event and event.is_step_materialization:
            materialization = event.step_materialization_data.materialization
            texts.append(repr(materialization.metadata))
            if materialization.asset_key == dg.AssetKey("possible_duplicates"):
                linkage = {k: v.value for k, v in materialization.metadata.items()}
    return "\n".join(texts), linkage


def test_the_stage_sits_after_publish_before_delivery_and_loads_no_splink():
    from patient_etl.definitions import defs

    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
               for k in graph.get_all_asset_keys()}
    # Publishing never waits for linkage; the partner's results file does (it carries the warnings).
    assert parents["possible_duplicates"] == {"published_batch"}
    assert "possible_duplicates" not in parents["published_batch"]
    assert "possible_duplicates" in parents["delivered_results"]
    for job in ("approve_batch_job", "reject_batch_job"):
        assert "possible_duplicates" in {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer
                                         .executable_asset_keys}
    assert "possible_duplicates" in {k.to_user_string() for k in defs.resolve_job_def("import_job").asset_layer
                                     .executable_asset_keys}
    probe = "import sys, patient_etl.definitions; print(sorted(m for m in ('splink', 'pyspark') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stderr[-2000:]


@pytest.mark.parametrize("target", ["etl", "pg_etl"])
def test_within_batch_and_against_target_pairs_are_flagged_by_id(tmp_path, run_import, instance, target, request):
    etl = request.getfixturevalue(target)
    first = run_import(write_csv(tmp_path / "roster.csv", HEADER, *SMITHS), etl)
    assert first["status"] == "Finished" and first["counts"]["Created"] == 3
    messages = _messages(first)
    # Within the batch: the later row is flagged, naming the earlier one by its ID and row.
    assert messages["B-7"] == ("warning: member: possible duplicate of member A-1 (row 1 of this batch) "
                               "(match probability 1.00)")
    assert messages["A-1"] == "" and messages["C-3"] == ""
    (pair,) = _pairs_file(first)
    assert (pair["row_number"], pair["external_id"], pair["duplicate_of"]) == ("2", "B-7", "A-1")
    assert float(pair["match_probability"]) >= 0.99 and pair["strength"] == "likely"
    assert {"birth_date", "phone", "last_name"} <= set(pair["agreed_fields"].split(","))

    # Against the target: a new ID for the same person, typed differently, is flagged against both.
    second = run_import(write_csv(tmp_path / "update.csv", HEADER, SMYTH, "D-4,Peter,Brown,1960-01-01,M,"), etl)
    assert second["counts"]["Created"] == 2
    warning = _messages(second)["B-8"]
    assert "possible duplicate of member A-1 (match probability 0.9" in warning
    assert "possible duplicate of member B-7 (match probability 0.9" in warning
    assert _messages(second)["D-4"] == ""
    assert {(p["external_id"], p["duplicate_of"]) for p in _pairs_file(second)} == {("B-8", "A-1"), ("B-8", "B-7")}

    stored = query(etl.target(), "SELECT id, member_id_a, member_id_b, status, first_batch_id FROM possible_duplicate "
                                 "ORDER BY id")
    assert [row[1:4] for row in stored] == [("A-1", "B-7", "open"), ("A-1", "B-8", "open"), ("B-7", "B-8", "open")]
    assert [row[4] for row in stored] == [first["batch_id"], second["batch_id"], second["batch_id"]]

    # No PHI of the other member anywhere but the partner's own row: not in the pairs file, not in Dagster.
    for outcome in (first, second):
        text, linkage = _run_text(instance, outcome["run_id"])
        assert linkage["outcome"] == "linked" and linkage["model_version"] == 0  # the cold-start model
        path = outcome["results_file"].replace("_results.csv", "_possible_duplicates.csv")
        for where in (text, Path(path).read_text(encoding="utf-8")):
            assert not [p for p in PHI if p in where], where[:2000]


def test_a_pair_decided_different_is_not_flagged_again_and_the_cli_lists_ids_only(tmp_path, home, run_import, capsys,
                                                                                monkeypatch):
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    for name in ("PATIENT_ETL_TARGET_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    etl = PatientEtl(home=str(home))
    # Two rows without an external ID take part by the IDs publish gives them (auto-...).
    keyless = (",Ann,Lee,1970-01-01,F,617-555-0100", ",Anne,Lee,1970-01-01,F,617-555-0100")
    roster = write_csv(tmp_path / "roster.csv", HEADER, *SMITHS, *keyless)
    first = _messages(run_import(roster, etl))
    assert first["B-7"].startswith("warning: member: possible duplicate of member A-1")
    autos = {key: message for key, message in first.items() if key.startswith("auto-")}
    (ann,) = [key for key, message in autos.items() if not message]
    assert autos.keys() - {ann} and [m for m in autos.values() if m] == [
        f"warning: member: possible duplicate of member {ann} (row 4 of this batch) (match probability 1.00)"]
    capsys.readouterr()

    assert main(["duplicates", "--open", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(p["member_id_a"], p["member_id_b"], p["status"]) for p in listed} == {
        ("A-1", "B-7", "open"), (*sorted(autos), "open")}
    assert not [p for p in PHI if p in json.dumps(listed)]
    for pair in listed:
        assert main(["duplicates", "resolve", str(pair["id"]), "--different", "--by", "alice"]) == 0
        assert "different people, decided by alice" in capsys.readouterr().out
    assert main(["duplicates", "--open"]) == 0
    assert "no possible duplicates open for review" in capsys.readouterr().out
    # Usage errors exit 2, like the other commands.
    assert main(["duplicates", "resolve", "999", "--same"]) == 2
    assert main(["duplicates", "resolve", "x1", "--same"]) == 2
    with pytest.raises(SystemExit) as usage:
        main(["duplicates", "resolve", str(listed[0]["id"])])
    assert usage.value.code == 2

    again = run_import(write_csv(tmp_path / "again.csv", HEADER, *SMITHS, *keyless), etl)
    assert again["counts"]["Unchanged"] == 5
    assert set(_messages(again).values()) == {""}  # decided: different people
    assert query(etl.target(), "SELECT DISTINCT status, decided_by FROM possible_duplicate") == [
        ("different people", "alice")]


def _synthetic_roster(path, count: int) -> None:
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT 'S-' || person_id AS "Patient ID", first_name AS "First Name",
                                 last_name AS "Last Name", birth_date AS DOB, sex AS Sex, phone AS Phone
                          FROM ({synthetic.people_sql(0, count, seed=7)})) TO '{path}' (HEADER)""")
    con.close()


def test_the_model_is_trained_saved_under_the_home_and_reused(tmp_path, home, run_import, instance, capsys,
                                                              monkeypatch):
    monkeypatch.setenv("PATIENT_ETL_HOME", str(home))
    for name in ("PATIENT_ETL_TARGET_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    etl = PatientEtl(home=str(home))
    _synthetic_roster(tmp_path / "big.csv", 1200)
    first = run_import(tmp_path / "big.csv", etl)
    assert first["counts"]["Created"] == 1200
    _, linkage = _run_text(instance, first["run_id"])
    # An empty target: the batch is all there is to train on; the model is saved, owner-only.
    assert linkage["model_trained"] is True and linkage["model_version"] == 1
    saved = home / "linkage" / "model-v1.json"
    assert saved.exists() and saved.stat().st_mode & 0o077 == 0

    assert main(["linkage", "train", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["version"] == 2 and trained["trained_on"]["target"] == 1200

    later = run_import(write_csv(tmp_path / "roster.csv", HEADER, *SMITHS), etl)
    _, linkage = _run_text(instance, later["run_id"])
    assert linkage["model_trained"] is False and linkage["model_version"] == 2
    assert linkage["target_members"] == 1200
    assert _messages(later)["B-7"].startswith("warning: member: possible duplicate of member A-1")


@pytest.mark.parametrize("trouble", ["corrupt model", "too slow", "switched off"])
def test_linkage_failing_or_slow_leaves_the_batch_published_with_its_results(tmp_path, home, run_import, instance,
                                                                              trouble, monkeypatch):
    if trouble == "corrupt model":
        etl = PatientEtl(home=str(home))
        (home / "linkage").mkdir()
        (home / "linkage" / "model-v1.json").write_text('{"splink": "Smith 1980-03-14"')
    elif trouble == "too slow":  # a linkage that would take a minute, with a limit of two seconds
        monkeypatch.setenv(SLOW, "60")
        etl = PatientEtl(home=str(home), linkage_timeout_seconds=2)
    else:
        etl = PatientEtl(home=str(home), linkage="off")
    outcome = run_import(write_csv(tmp_path / "roster.csv", HEADER, *SMITHS), etl)
    assert outcome["status"] == "Finished" and outcome["counts"]["Created"] == 3
    assert set(_messages(outcome).values()) == {""}
    assert not os.path.exists(outcome["results_file"].replace("_results.csv", "_possible_duplicates.csv"))
    assert query(etl.target(), "SELECT count(*) FROM member") == [(3,)]
    assert query(etl.target(), "SELECT count(*) FROM possible_duplicate") == [(0,)]
    text, linkage = _run_text(instance, outcome["run_id"])
    assert linkage["outcome"] == {"corrupt model": "failed", "too slow": "timed out", "switched off": "off"}[trouble]
    assert ("published without them" in text) == (trouble != "switched off")
    assert not [p for p in PHI if p in text]
    # The batch was committed before linkage began: publish never waits for it.
    steps = [(r.event_log_entry.step_key, r.event_log_entry.dagster_event.event_type_value)
             for r in instance.get_records_for_run(outcome["run_id"], limit=10_000).records
             if r.event_log_entry.dagster_event and r.event_log_entry.step_key]
    published = steps.index(("published_batch", "STEP_SUCCESS"))
    assert published < steps.index(("possible_duplicates", "STEP_START"))
    # The linkage process started as the run started is used, stopped at its limit, or closed unused.
    assert _linkage_children() == []


def test_the_linkage_process_answers_one_line_and_exits_or_exits_unused(home):
    """The process a run hands its batch to (started ahead, `linkage.process`): it ends without finalizing
    Python, so its answer must be out whole first, and its exit code must be its own."""
    etl = PatientEtl(home=str(home))
    request = {"batch_id": "20261203-cli-nothing-0000", "settings": {n: getattr(etl, n) for n in type(etl).model_fields}}
    child = process.spawn()
    out, err = child.communicate(json.dumps(request) + "\n", timeout=120)
    assert child.returncode == 0, err
    reply = json.loads(out.strip().splitlines()[-1])
    assert reply["outcome"] == "failed" and "logs" in reply["reason"]  # no such batch: the trace kept in the home
    unused = process.spawn()  # a run that needed no linkage closes its stdin
    unused.stdin.close()
    assert unused.wait(timeout=120) == 0 and unused.stdout.read() == ""


def _linkage_children() -> list[int]:
    """This process's children running the linkage (alive or not yet reaped)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"patient_etl.linkage.run" in command:
            found.append(int(stat.parent.name))
    return found


def test_a_keyless_row_matching_several_members_is_errored_and_linkage_names_its_candidates(tmp_path, run_import,
                                                                                             etl):
    twins = ("T1,Ann,Lee,1980-01-02,F,617-555-0100", "T2,Ann,Lee,1980-01-02,F,617-555-0100")
    assert run_import(write_csv(tmp_path / "roster.csv", HEADER, *twins), etl)["counts"]["Created"] == 2
    update = run_import(write_csv(tmp_path / "update.csv", HEADER, ",Ann,Lee,1980-01-02,F,617-555-0100"), etl)
    (row,) = read_results(update)
    assert row["status"] == "Errored" and "match 2 stored records (member_id T1, T2)" in row["messages"]
    assert "warning: member: possible duplicate of member T1 (match probability" in row["messages"]
    assert "warning: member: possible duplicate of member T2 (match probability" in row["messages"]
    assert {(p["row_number"], p["external_id"], p["duplicate_of"]) for p in _pairs_file(update)} == {
        ("1", "", "T1"), ("1", "", "T2")}
    # Nothing was published for the row: no pair of IDs to review, only T1 and T2 from the first batch.
    assert query(etl.target(), "SELECT member_id_a, member_id_b FROM possible_duplicate") == [("T1", "T2")]
    assert query(etl.target(), "SELECT count(*) FROM member") == [(2,)]


def test_linkage_settings_come_from_the_one_settings_mapping(monkeypatch):
    from patient_etl.linkage.assets import linkage_settings
    from patient_etl.resources import patient_etl_from_env

    monkeypatch.setenv("PATIENT_ETL_LINKAGE_POSSIBLE", "0.8")
    monkeypatch.setenv("PATIENT_ETL_LINKAGE_ENGINE", "spark")
    monkeypatch.setenv("PATIENT_ETL_LINKAGE", "off")
    monkeypatch.setenv("PATIENT_ETL_LINKAGE_TIMEOUT_SECONDS", "60")
    etl = patient_etl_from_env(resolve=True)
    settings = linkage_settings(etl)
    assert (settings.possible, settings.likely, settings.engine) == (0.8, 0.99, "spark")
    assert etl.linkage_on() is False and etl.linkage_timeout_seconds == 60
    with pytest.raises(ValueError, match="PATIENT_ETL_LINKAGE_POSSIBLE"):
        linkage_settings(PatientEtl(linkage_possible="high"))
    with pytest.raises(ValueError, match="engine"):
        linkage_settings(PatientEtl(linkage_engine="pandas"))


def test_linkage_compares_the_ssn_by_the_same_keyed_hash_staging_stores():
    from patient_etl.entities.kinds import SSN_TOKEN_MACRO, ssn_token_macro
    from patient_etl.linkage import ssn_hash

    key = b"a-production-key"
    con = duckdb.connect()
    con.execute(ssn_token_macro(key))
    (token,) = con.execute(f"SELECT {SSN_TOKEN_MACRO}('123-45-6789')").fetchone()
    assert token.startswith("***-**-6789 ") and token[-64:] == ssn_hash("123 45 6789", key)
    assert ssn_hash("12345", key) is None
