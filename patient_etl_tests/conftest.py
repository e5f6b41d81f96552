"""Shared fixtures: a fresh home per test, a fresh PostgreSQL database per test, real Dagster."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

# Retries are exercised with their delays scaled down (read when the code location loads, so before
# patient_etl is imported): a failed landing's ladder is 5+10+20 s in production, 0.25 s here.
os.environ.setdefault("PATIENT_ETL_RETRY_DELAY_SCALE", "0.01")
# The shared row-check validator (quality/validator.py) serves every test's runs, and is gone a minute
# after the suite, not ten.
os.environ.setdefault("PATIENT_ETL_VALIDATOR_IDLE_SECONDS", "60")

import dagster as dg  # noqa: E402
import psycopg  # noqa: E402
import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from patient_etl.cli import import_batch  # noqa: E402
from patient_etl.resources import PatientEtl  # noqa: E402

DATA = Path(__file__).parent / "data"
PG_ADMIN_URL = os.environ.get("PATIENT_ETL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Each test's database is <prefix><random>: a shared server can tell runs (and their leftovers) apart.
PG_DB_PREFIX = os.environ.get("PATIENT_ETL_TEST_DB_PREFIX", "pe_test_")


def _admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


@pytest.fixture(autouse=True)
def _no_stale_dagster_state_storage():
    """Dagster keeps the current instance's defs-state storage in a context variable; instances
    closed out of order can leave a dead one behind for the next test. Start each test without one."""
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)
    yield
    _current_storage.set(None)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    name = f"{PG_DB_PREFIX}{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with _admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def etl(home: Path) -> PatientEtl:
    """The embedded target (SQLite under the home)."""
    return PatientEtl(home=str(home))


@pytest.fixture
def pg_etl(home: Path, pg_url: str) -> PatientEtl:
    return PatientEtl(home=str(home), target_url=pg_url)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def run_import(instance: dg.DagsterInstance):
    """Import files as one batch through the real assets, in-process, like `patient-etl import`."""

    def run(paths: list[Path] | Path, etl: PatientEtl, dry_run: bool = False, mapping: str | None = None) -> dict:
        paths = [paths] if isinstance(paths, Path) else paths
        return import_batch([str(p) for p in paths], etl, dry_run=dry_run, mapping=mapping, instance=instance)

    return run


def write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def query(url: str, sql: str, **params) -> list[tuple]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def read_results(outcome: dict) -> list[dict]:
    import csv

    with open(outcome["results_file"], newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
