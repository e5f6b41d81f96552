"""Beyond one machine: the same model on Splink's Spark backend finds the same pairs as on DuckDB.

A target too large for one machine links on a Spark cluster (`engine="spark"`, `spark_master`). Here
Spark runs in local mode in this process (pyspark and a Java runtime, installed by scripts/setup).
"""

from __future__ import annotations

import shutil

import duckdb
import pytest

from patient_etl.linkage import LinkageSettings, find_possible_duplicates, synthetic, train_model


@pytest.fixture(scope="module")
def spark():
    from patient_etl.linkage.link import spark_session

    session = spark_session("local[2]")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_finds_the_same_pairs_as_duckdb(spark, tmp_path):
    con = duckdb.connect()
    synthetic.make_target_and_batch(con, 2000, 300, seed=11)
    train_model(con, "synthetic_target", tmp_path / "duckdb", LinkageSettings(u_max_pairs=3e5, em_max_pairs=3e5))
    shutil.copytree(tmp_path / "duckdb", tmp_path / "spark")

    find_possible_duplicates(con, "synthetic_batch", "synthetic_target", tmp_path / "duckdb", into="on_duckdb")
    result = find_possible_duplicates(con, "synthetic_batch", "synthetic_target", tmp_path / "spark",
                                      LinkageSettings(engine="spark"), into="on_spark")

    assert result.pairs > 10 and result.within_batch > 0 and result.against_target > 0
    key = "rid, duplicate_in, duplicate_of, strength, agreed_fields, similar_fields"
    assert con.sql(f"SELECT {key} FROM on_spark ORDER BY ALL").fetchall() == \
        con.sql(f"SELECT {key} FROM on_duckdb ORDER BY ALL").fetchall()
    worst = con.sql("SELECT max(abs(s.match_probability - d.match_probability)) FROM on_spark s "
                    "JOIN on_duckdb d USING (rid, duplicate_of)").fetchall()[0][0]
    assert worst < 1e-6
