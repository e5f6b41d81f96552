"""`patient-etl import` takes the files a user means, and only those.

A folder import takes every input kind (CSV, TSV, pipe, workbook, gzip, zip) but never a link that
leads outside the folder (it would archive a file the user did not give); a pipe or device is named for
what it is; a file whose name starts with `-` is a file, not an option.
"""

from __future__ import annotations

import os

from patient_etl.cli import expand, main


def test_folder_import_takes_every_input_kind_and_no_link_outside(tmp_path):
    folder, outside = tmp_path / "drop", tmp_path / "secret.csv"
    folder.mkdir()
    outside.write_text("id\n1\n")
    for name in ("a.csv", "b.tsv", "c.xlsx", "d.csv.gz", "e.zip", "f.psv", "g.txt", "notes.md", ".hidden.csv"):
        (folder / name).write_text("x")
    (folder / "link.csv").symlink_to(outside)
    (folder / "inside_link.csv").symlink_to(folder / "a.csv")
    names = [p.name for p in expand([str(folder)])]
    assert names == ["a.csv", "b.tsv", "c.xlsx", "d.csv.gz", "e.zip", "f.psv", "g.txt", "inside_link.csv"]


def test_a_fifo_is_not_a_regular_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATIENT_ETL_HOME", str(tmp_path / "home"))
    fifo = tmp_path / "roster.csv"
    os.mkfifo(fifo)
    assert main(["import", str(fifo)]) == 2
    assert "is not a regular file (a pipe, socket or device)" in capsys.readouterr().err


def test_a_name_starting_with_a_dash_is_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATIENT_ETL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["import", "--", "-x.csv"]) == 2  # parsed as a path: it does not exist yet
    assert "no such file or folder: -x.csv" in capsys.readouterr().err
    (tmp_path / "-x.csv").write_text("x")
    assert [p.name for p in expand(["./-x.csv"])] == ["-x.csv"]


def test_a_bad_delimiter_option_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATIENT_ETL_HOME", str(tmp_path / "home"))
    (tmp_path / "r.csv").write_text("x")
    assert main(["import", str(tmp_path / "r.csv"), "--delimiter", "two"]) == 2
    assert "--delimiter is one character" in capsys.readouterr().err
