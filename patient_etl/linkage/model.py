"""The linkage model: what is compared and how pairs are found, its unsupervised training, and the
versioned JSON files it is kept in (`<model_dir>/model-v<N>.json`, N counting up; the highest wins).

Training needs no labels: u (how often non-matches agree by chance) from random pairs, m (how often
matches agree) by expectation maximisation on blocked pairs, and the prior that two random records
match from deterministic rules. A trained model is reused by later runs until it is retrained.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patient_etl.linkage.settings import LinkageSettings

log = logging.getLogger(__name__)

# Bump when the comparisons or record columns change: a model of another feature version is not reused.
FEATURES = 1
# Fewer records than this (target and batch together) and EM has too few pairs to learn from: the
# cold-start model (patient_etl/linkage/default.py) is used instead and nothing is saved.
MIN_TRAINING_RECORDS = 1000
_MODEL_FILE = re.compile(r"^model-v(\d+)\.json$")
# Names compared with term-frequency adjustment: agreeing on a rare name says more than on a common one.
TF_COLUMNS = ("first_name", "last_name")


@dataclass(frozen=True)
class ModelInfo:
    version: int
    path: Path
    trained_at: str
    trained_on: dict[str, int]
    splink: dict[str, Any]


def comparisons() -> list:
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    def exact_or_prefix(col: str, prefix_col: str, label: str):
        return cl.CustomComparison(
            comparison_levels=[cll.NullLevel(col), cll.ExactMatchLevel(col),
                               cll.ExactMatchLevel(prefix_col).configure(label_for_charts=label), cll.ElseLevel()],
            output_column_name=col)

    def name(col: str, other: str):
        swapped = f"({col}_l = {other}_r OR {col}_r = {other}_l)"
        return cl.CustomComparison(
            comparison_levels=[
                cll.NullLevel(col),
                cll.ExactMatchLevel(col).configure(tf_adjustment_column=col),
                cll.JaroWinklerLevel(col, 0.92),
                cll.JaroWinklerLevel(col, 0.88),
                cll.CustomLevel(swapped, label_for_charts="first and last name swapped"),
                cll.JaroWinklerLevel(col, 0.7),
                cll.ElseLevel(),
            ],
            output_column_name=col)

    return [
        name("first_name", "last_name"),
        name("last_name", "first_name"),
        # exact, one edit (typo or transposed digits), within a month, a year, ten years
        cl.DateOfBirthComparison("birth_date", input_is_string=True),
        cl.ExactMatch("sex"),
        cl.JaroWinklerAtThresholds("address_line1", [0.9]),
        exact_or_prefix("zip", "zip3", "same 3-digit zip area"),
        cl.DamerauLevenshteinAtThresholds("phone", [1]),
        exact_or_prefix("email", "email_user", "same e-mail user name"),
        cl.ExactMatch("ssn_hash"),  # a keyed hash: equal or not, nothing in between
    ]


# Candidate pairs: any rule that holds. Each is an equi-join on a few record columns (expressions), so a
# 100k batch against 1M members compares a few million pairs, not 10^11.
BLOCKING_KEYS: tuple[tuple[str, ...], ...] = (
    ("ssn_hash",),
    ("phone",),
    ("email",),
    ("first_name", "last_name"),
    ("birth_date", "substr(first_name, 1, 1)"),
    ("birth_date", "substr(last_name, 1, 1)"),
    ("last_name", "zip"),
    ("first_name", "zip", "birth_year"),
    ("birth_date", "zip"),
    ("address_line1",),
)
SWAPPED_NAMES = "l.first_name = r.last_name AND l.last_name = r.first_name"  # names swapped between columns


def rule_name(keys: tuple[str, ...] | None) -> str:
    """How metadata names a blocking rule (`first_name+last_name`; None: the swapped names)."""
    return "+".join(keys) if keys else "names swapped"


def blocking_rules(keys: tuple[tuple[str, ...] | None, ...] | None = None) -> list:
    """Splink's rules for `keys` (default: all of BLOCKING_KEYS and the swapped names; None in the
    tuple stands for the swapped names)."""
    from splink import block_on

    keys = (*BLOCKING_KEYS, None) if keys is None else keys
    return [block_on(*k) if k else SWAPPED_NAMES for k in keys]


def splink_settings():
    from splink import SettingsCreator

    return SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="unique_id",
        comparisons=comparisons(),
        blocking_rules_to_generate_predictions=blocking_rules(),
        probability_two_random_records_match=1e-5,
        retain_matching_columns=True,  # for the gamma (agreement level) columns; values stay in-process
        retain_intermediate_calculation_columns=False,
    )


def for_dialect(splink_model: dict[str, Any], dialect: str) -> dict[str, Any]:
    """The model's SQL in another backend's dialect (a model trained on DuckDB, run on Spark).

    Splink keeps each level's condition as SQL text in the dialect it was trained in, and identifier
    quoting differs (DuckDB's "x" is a string in Spark SQL). The comparisons are rebuilt for the
    dialect from the same code and the trained parameters copied over, level by level.
    """
    if splink_model.get("sql_dialect") == dialect:
        return splink_model
    fresh = splink_settings().get_settings(dialect).as_dict()
    fresh["probability_two_random_records_match"] = splink_model["probability_two_random_records_match"]
    for new, old in zip(fresh["comparisons"], splink_model["comparisons"], strict=True):
        for new_level, old_level in zip(new["comparison_levels"], old["comparison_levels"], strict=True):
            for key in ("m_probability", "u_probability"):
                if key in old_level:
                    new_level[key] = old_level[key]
    return fresh


def train(linker, settings: LinkageSettings, records: int) -> None:
    """Estimate the model on the linker's input records, without labels."""
    from splink import block_on
    from splink.internals.exceptions import SplinkException

    deterministic = [block_on("ssn_hash"), block_on("first_name", "last_name", "birth_date"),
                     block_on("phone", "birth_date")]
    try:
        linker.training.estimate_probability_two_random_records_match(deterministic, recall=0.6)
    except SplinkException as error:
        log.warning("linkage: prior not estimated (%s); keeping the default", type(error).__name__)
    prior = linker._settings_obj._probability_two_random_records_match
    if not prior or prior <= 0 or prior >= 0.5:
        # No deterministic matches at all: assume one duplicate pair per hundred records.
        linker._settings_obj._probability_two_random_records_match = min(0.01, 0.02 / max(records, 2))
    linker.training.estimate_u_using_random_sampling(max_pairs=settings.u_max_pairs, seed=settings.seed)
    for rule in (block_on("first_name", "last_name"), block_on("birth_date")):
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(
                rule, max_pairs=settings.em_max_pairs,
                record_sample_proportion=min(1.0, max(0.01, 50_000 / max(records, 1))))
        except SplinkException as error:
            # Too few pairs under this rule (a small or empty target): the other session and the
            # comparisons' default m values stand in.
            log.warning("linkage: an EM session was skipped (%s)", type(error).__name__)


# -- the files ----------------------------------------------------------------------------------

def _versions(model_dir: Path) -> list[tuple[int, Path]]:
    if not model_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in model_dir.iterdir() if (m := _MODEL_FILE.match(p.name))]
    return sorted(found)


def current_model(model_dir: Path | str) -> ModelInfo | None:
    """The newest saved model of the current feature version, or None."""
    for version, path in reversed(_versions(Path(model_dir))):
        doc = json.loads(path.read_text())
        if doc.get("features") == FEATURES:
            return ModelInfo(version, path, doc["trained_at"], doc["trained_on"], doc["splink"])
    return None


def save_model(model_dir: Path | str, splink_model: dict[str, Any], trained_on: dict[str, int]) -> ModelInfo:
    """Write the next version, atomically and readable by the owner only (it describes PHI fields)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    versions = _versions(model_dir)
    version = (versions[-1][0] if versions else 0) + 1
    import splink

    trained_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    doc = {"format": "patient_etl linkage model", "version": version, "features": FEATURES,
           "trained_at": trained_at, "trained_on": trained_on, "splink_version": splink.__version__,
           "splink": splink_model}
    path = model_dir / f"model-v{version}.json"
    tmp = path.with_suffix(".json.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle, indent=1)
    os.replace(tmp, path)
    return ModelInfo(version, path, trained_at, trained_on, splink_model)
