"""Possible-duplicate patients: probabilistic record linkage of a batch's members with Splink.

A batch's normalized members are linked within the batch and against the target's members with a
Fellegi-Sunter model (Splink, on DuckDB or Spark). The model is trained without labels from the
target's members and kept as a versioned JSON file under the home; while there are too few members to
train on, a cold-start model shipped with the package stands in. Nothing here merges anything: the
output is a list of pairs for a person to review.

In the flow it is the `possible_duplicates` stage (`assets.py`: after publish, which it never delays,
and before the results are delivered), run in a process of its own (`run.py`) within a time limit; its
pairs are merged into the batch's results by `merge.py`. It never fails a batch.

Heavy libraries (splink, pyspark) are imported inside the functions that need them, so importing this
package costs nothing when the code location loads.
"""

from patient_etl.linkage.link import LinkResult, find_possible_duplicates, train_model
from patient_etl.linkage.model import ModelInfo, current_model
from patient_etl.linkage.records import RECORD_COLUMNS, member_records_sql, ssn_hash
from patient_etl.linkage.settings import LinkageSettings

__all__ = [
    "RECORD_COLUMNS",
    "LinkResult",
    "LinkageSettings",
    "ModelInfo",
    "current_model",
    "find_possible_duplicates",
    "member_records_sql",
    "ssn_hash",
    "train_model",
]
