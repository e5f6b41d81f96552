"""The cold-start model: used while there are too few members to train on (a new target's first small
batches), and never saved under the home, so the first run with enough members trains a real one.

It is trained on deterministic synthetic members (`patient_etl.linkage.synthetic`), so its u values
know nothing of real name frequencies; term-frequency adjustments still come from the run's own data.
Regenerate it after changing the comparisons (and bump `model.FEATURES`):

    python -m patient_etl.linkage.default
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from patient_etl.linkage import model as m

PATH = Path(__file__).with_name("default_model.json")
TRAINING_SIZE = 20_000  # synthetic target members; the batch adds a tenth


def default_model() -> m.ModelInfo:
    doc = json.loads(PATH.read_text())
    if doc.get("features") != m.FEATURES:
        raise RuntimeError("the cold-start linkage model is out of date: run python -m patient_etl.linkage.default")
    return m.ModelInfo(0, PATH, doc["trained_at"], doc["trained_on"], doc["splink"])


def main() -> None:
    import duckdb

    from patient_etl.linkage import synthetic
    from patient_etl.linkage.link import train_model

    con = duckdb.connect()
    synthetic.make_target_and_batch(con, TRAINING_SIZE, TRAINING_SIZE // 10, seed=2024)
    with tempfile.TemporaryDirectory() as tmp:
        info = train_model(con, "synthetic_target", tmp, batch="synthetic_batch")
        doc = json.loads(info.path.read_text())
    doc |= {"version": 0, "trained_on": {"synthetic": doc["trained_on"]["target"] + doc["trained_on"]["batch"]}}
    PATH.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
