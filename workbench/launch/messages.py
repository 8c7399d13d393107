"""The messages across the process boundary, typed, each with its own JSON codec and a format version.

- `SideSpec`: one configuration to measure (what, under which name, where its trace goes, which
  extras, and for an experiment its own measuring function);
- `RoundSpec`: the request a measuring process gets: one side (alone) or two (a paired round, timed
  in `order`), and the channel its reports go to;
- `SideReport`: what the child says of one side: first when its timed windows are in (phase
  "timed"), again after the untimed extras (phase "final"), or why it did not measure.

Like pyperf's `Run`: immutable, checked in the constructor, `to_json`/`from_json` with the format
version in every document, so a parent never reads a message it does not understand.
Torch-free: the parent, the launchers and the child all import this module.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

FORMAT = 1
EXTRAS = ("none", "full", "brief")      # brief: a brief probe's extras are its trace only
PHASES = ("timed", "final")
# measured: figures; skipped: the stage does not apply; failed: why not; cancelled: the other side
# of the round failed, so this one was not measured.
STATUSES = ("measured", "skipped", "failed", "cancelled")


class MessageError(ValueError):
    """A message that does not follow this format (another version, a missing or wrong field)."""


def _checked_format(doc: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping) or doc.get("kind") != kind:
        raise MessageError(f"not a {kind} message: {str(doc)[:80]}")
    if doc.get("format") != FORMAT:
        raise MessageError(f"{kind} message format {doc.get('format')!r}; this workbench reads format {FORMAT}")
    return doc


def _one_of(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise MessageError(f"{name}={value!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class SideSpec:
    """One configuration to measure in the child."""

    stage: str                          # its name in progress lines and results
    config: Mapping[str, Any]           # RunConfig.to_dict()
    peaks: Mapping[str, Any] = field(default_factory=dict)   # peak FLOP/s by compute dtype (the MFU's denominator)
    trace_dir: str | None = None        # where the trace pass writes (None: no trace)
    extras: str = "none"                # the untimed extras after the windows: none, full or brief
    measure: str | None = None          # an experiment's own measuring function, "module:function"
    options: Mapping[str, Any] = field(default_factory=dict)  # that function's own settings

    def __post_init__(self) -> None:
        _one_of(self.extras, EXTRAS, "extras")
        if not isinstance(self.config, Mapping) or "device" not in self.config:
            raise MessageError(f"side {self.stage!r}: config must be a RunConfig dict")

    def to_json(self) -> dict:
        return {"kind": "side_spec", "format": FORMAT, **asdict(self), "config": dict(self.config)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "SideSpec":
        doc = _checked_format(doc, "side_spec")
        return cls(**{key: doc[key] for key in ("stage", "config", "peaks", "trace_dir", "extras", "measure", "options")})


@dataclass(frozen=True)
class RoundSpec:
    """The request one measuring process gets: its sides, the order they are timed in, the channel."""

    sides: Mapping[str, SideSpec]
    order: tuple[str, ...]
    channel: str = ""                   # the report file; set by the launcher

    def __post_init__(self) -> None:
        if sorted(self.order) != sorted(self.sides) or not 1 <= len(self.order) <= 2:
            raise MessageError(f"order {list(self.order)} must name each of the sides {sorted(self.sides)} once")

    @property
    def paired(self) -> bool:
        return len(self.sides) == 2

    def configs(self) -> list[Mapping[str, Any]]:
        return [side.config for side in self.sides.values()]

    def to_json(self) -> dict:
        return {"kind": "round_spec", "format": FORMAT, "order": list(self.order), "channel": self.channel,
                "sides": {key: side.to_json() for key, side in self.sides.items()}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "RoundSpec":
        doc = _checked_format(doc, "round_spec")
        sides = {key: SideSpec.from_json(side) for key, side in doc["sides"].items()}
        return cls(sides, tuple(doc["order"]), doc["channel"])


@dataclass(frozen=True)
class SideReport:
    """What the child reports of one side: its figures (timed, then final with the extras) or why not."""

    side: str
    status: str
    phase: str = "final"
    metrics: Mapping[str, Any] | None = None
    error: str | None = None
    data: str | None = None             # the data it measured on, in words
    notes: Mapping[str, Any] = field(default_factory=dict)
    trace_file: str | None = None
    trace_size_mb: float | None = None
    extras: bool = False                # the untimed extras ran in this report

    def __post_init__(self) -> None:
        _one_of(self.status, STATUSES, "status")
        _one_of(self.phase, PHASES, "phase")
        if self.status == "measured" and not self.metrics:
            raise MessageError(f"side {self.side!r}: a measured report needs its metrics")

    @property
    def measured(self) -> bool:
        return self.status == "measured"

    def to_json(self) -> dict:
        return {"kind": "side_report", "format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "SideReport":
        doc = _checked_format(doc, "side_report")
        return cls(**{key: doc[key] for key in ("side", "status", "phase", "metrics", "error", "data", "notes",
                                                "trace_file", "trace_size_mb", "extras")})

    @classmethod
    def failed(cls, side: str, error: str, status: str = "failed") -> "SideReport":
        return cls(side, status, error=error)
