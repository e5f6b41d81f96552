"""The names of the saved mapping templates, shared by the sources (an upload sub-folder named after a
template applies it) and staging (which reads the templates themselves)."""

from __future__ import annotations

from pathlib import Path

MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "data" / "mappings"


def saved_mapping_names() -> list[str]:
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))
