"""Linkage settings: thresholds and the engine. Plain values; the caller reads them from its config."""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("duckdb", "spark")


@dataclass(frozen=True)
class LinkageSettings:
    """Thresholds are on Splink's match probability of a pair.

    `possible` flags a pair for review; `likely` marks the flagged pairs that are very probably the
    same person. The defaults come from the FEBRL and synthetic benchmarks (BENCHMARKS.md, "Possible
    duplicates"): at 0.9 precision and recall are both at or above 0.98 on every set we measured.
    """

    possible: float = 0.9
    likely: float = 0.99
    engine: str = "duckdb"
    spark_master: str = "local[2]"  # a cluster's master URL in production (e.g. spark://host:7077, yarn)
    u_max_pairs: float = 2e6  # random pairs sampled to estimate u
    em_max_pairs: float = 2e6  # blocked pairs per EM session
    # Candidate pairs compared at most: the blocking rules are taken cheapest first while their pairs
    # fit; a rule past it (a value shared by very many records) is skipped and named in the metadata.
    max_pairs: float = 20e6
    seed: int = 42

    def __post_init__(self):
        if not 0 < self.possible <= self.likely <= 1:
            raise ValueError("linkage thresholds need 0 < possible <= likely <= 1")
        if not self.max_pairs > 0:
            raise ValueError("the linkage pair limit must be a positive number")
        if self.engine not in ENGINES:
            raise ValueError(f"linkage engine must be one of {', '.join(ENGINES)}")
