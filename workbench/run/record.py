"""A stage result as the ladder reads it: typed fields over the document that was written.

The document (results.py's stage result, schema/stage_result.v2.json) stays what is written and what
the report reads; the ladder decides on these fields instead of reaching into nested dicts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from workbench.config import RunConfig


@dataclass(frozen=True)
class Speedup:
    """A paired speedup with its 95% interval and verdict."""

    ratio: float
    ci95_low: float
    ci95_high: float
    verdict: str

    @classmethod
    def of(cls, doc: Mapping[str, Any] | None) -> "Speedup | None":
        if not doc or "ratio" not in doc:
            return None
        return cls(doc["ratio"], doc.get("ci95_low", 0.0), doc.get("ci95_high", math.inf), doc.get("verdict", ""))


@dataclass(frozen=True)
class StageRecord:
    """One stage's result: what the ladder decides on, and the document as written (doc)."""

    doc: Mapping[str, Any]
    stage: str
    status: str
    kind: str | None
    applied: tuple[str, ...]
    probe: bool
    training_broke: bool
    findings: tuple[Mapping[str, Any], ...]
    vs_previous: Speedup | None
    vs_baseline: Speedup | None

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> "StageRecord":
        metrics = doc.get("metrics") or {}
        return cls(doc, doc["stage"], doc["status"], doc.get("kind"), tuple(doc.get("applied") or ()),
                   bool(doc.get("probe")), bool(doc.get("training_broke")), tuple(doc.get("findings") or ()),
                   Speedup.of(metrics.get("speedup_vs_previous")), Speedup.of(metrics.get("speedup_vs_baseline")))

    @property
    def config(self) -> RunConfig:
        return RunConfig(**self.doc["config"])
