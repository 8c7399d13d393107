"""What every experiment shares: the device facts, the budget, measuring rounds, and the JSON file.

An experiment is a list of Variants (a label and the RunConfig to measure). `Lab.measure` runs them
in interleaved rounds (A B C, A B C: drift on a shared machine then hits every configuration alike)
through the ladder's round loop (run/rounds.loop) and launchers (workbench/launch: a fresh process
by default, each configuration alone, so its peak memory is its own), and rewrites
experiments/<name>.json atomically after every measurement, so an interrupted experiment keeps what
it finished.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from workbench import device as devices
from workbench import environment, peaks
from workbench.launch import Launcher, RoundSpec, SideSpec, choose
from workbench.launch.launchers import InProcess
from workbench.run import rounds as round_loop
from workbench.run.reading import tensor_peak
from workbench.config import RunConfig
from workbench.progress import stderr_log  # noqa: F401 - the experiments import it from here
from workbench.training.data import load_configured
from workbench.experiments import rows
from workbench.results import SCHEMA_VERSION, experiment_path, write_json_atomic

DEFAULT_TIMEOUT_S = 600.0
# The fields an experiment may set for its own time budget, when the user left them at their defaults.
BUDGET_FIELDS = ("warmup_steps", "timed_steps", "repeats")


def target_of(function: Callable) -> str:
    """The "module:function" name a measuring process finds a function by."""
    return f"{function.__module__}:{function.__qualname__}"


def with_tensor_peak(raw: dict, scratch: Path) -> dict:
    """On a CPU, the ladder's peak: weights + optimizer state + the peak allocations of a profiled
    step (run/reading.tensor_peak), not resident growth, which the allocator's reuse of freed pages
    scrambles (it once put a lower-memory configuration above two larger ones)."""
    if raw.get("status") != "measured" or not raw.get("trace_file"):
        return raw
    from workbench.trace import analyze

    try:
        summary = analyze.write_analysis(raw["trace_file"], scratch / "breakdown.csv", scratch / "summary.json")
    except Exception as error:  # the resident figure stays, and says why
        why = f"{type(error).__name__}: {error}"[:300]
        return {**raw, "metrics": {**raw["metrics"], "tensor_peak_error": why}, "trace_file": None}
    # the trace was scratch: the experiments keep no traces
    return {**raw, "metrics": {**raw["metrics"], **tensor_peak(raw["metrics"], summary, "cpu")}, "trace_file": None}


@dataclass
class Variant:
    """One configuration of an experiment."""

    label: str
    cfg: RunConfig
    overrides: dict = field(default_factory=dict)
    skip: str = ""                  # a reason not to measure it (recorded as status "skipped")
    measure: Callable[[SideSpec], dict] | None = None  # its own measuring function; None: a ladder stage's
    extra: dict = field(default_factory=dict)   # passed to that function as the side's options
    rounds: int | None = None       # cap on rounds (slow or expensive configurations)
    timeout_s: float = DEFAULT_TIMEOUT_S
    env: dict = field(default_factory=dict)     # environment of the fresh process


def _defaults() -> dict:
    return {f.name: f.default for f in fields(RunConfig)}


def budgeted(cfg: RunConfig, **budget: int) -> RunConfig:
    """Apply an experiment's step budget to the fields the user left at RunConfig's defaults.

    Experiments only time (a trace would be a second, untimed pass nobody reads here), so trace is off.
    """
    defaults = _defaults()
    chosen = {k: v for k, v in budget.items() if getattr(cfg, k) == defaults[k]}
    return cfg.with_overrides(trace=False, **chosen)


@functools.lru_cache(maxsize=4)
def _device(device: str) -> tuple[devices.DeviceFacts, devices.Capabilities, dict]:
    """Facts, capability decisions and peak FLOP/s, settled once per process (`all` reuses them)."""
    facts = devices.probe(devices.resolve_device_type(device))
    caps = devices.decide(facts)
    return facts, caps, peaks.measure(facts, caps)


class Lab:
    """One experiment's context: device decisions, data, its variants' measurements and its JSON file."""

    def __init__(self, name: str, cfg: RunConfig, out_dir: Path, log: Callable[[str], None] = stderr_log,
                 isolate: bool = True, title: str = "", question: str = "") -> None:
        self.name, self.cfg, self.out_dir, self.isolate = name, cfg, Path(out_dir), isolate
        self.log = lambda message: log(f"[experiment {name}] {message}")
        self.started = time.perf_counter()
        self.facts, self.caps, self.peaks = _device(cfg.device)
        data = load_configured(cfg, log=self.log)
        self.data, self.dataset_size = data, len(data.dataset)
        self.variants: list[Variant] = []
        self.raws: dict[str, list[dict]] = {}
        self.reference = ""
        self.tensor_memory = False  # peak memory from the tensors on a CPU: see measure_memory_from_tensors
        self.extra: Callable | None = None
        self.doc = {"schema": SCHEMA_VERSION, "experiment": name, "title": title, "question": question,
                    "status": "running", "created": dt.datetime.now().isoformat(timespec="seconds"),
                    "device": self.device_type, "data": data.description, "base_config": cfg.to_dict(),
                    "environment": environment.describe(self.facts, devices.threads_for(cfg.threads, self.facts.cpu_cores)),
                    "decisions": {"amp": f"{self.caps.amp_dtype or 'none'}: {self.caps.amp_reason}"},
                    "settings": {"isolated": isolate, **{k: getattr(cfg, k) for k in BUDGET_FIELDS}},
                    "reference": "", "notes": [], "rows": [], "summary": {}, "plots": [], "elapsed_s": 0.0}
        if not isolate:
            self.note("Measured in one process (isolate=False): peak memory is not per configuration.")

    @property
    def device_type(self) -> str:
        return self.facts.type

    @property
    def path(self) -> Path:
        return experiment_path(self.out_dir, self.name)

    def note(self, text: str) -> None:
        self.doc["notes"].append(text)

    def measure_memory_from_tensors(self) -> None:
        """For the memory experiments: on a CPU, each round adds a trace pass and the peak is the
        ladder's tensor-based one (with_tensor_peak); on a GPU the allocator's own peak serves."""
        self.tensor_memory = True
        if self.device_type == "cpu":
            self.note("Peak memory on this CPU is the ladder's tensor-based figure: weights + optimizer state "
                      "(from the tensors) + the peak allocations of a profiled training step. Resident memory "
                      "growth would not do: the allocator keeps freed pages, so it scrambles the ranking.")

    def variant(self, label: str, skip: str = "", **kwargs) -> Variant:
        """A configuration: the base cfg with RunConfig overrides (other kwargs go to Variant)."""
        names = {f.name for f in fields(Variant)}
        overrides = {k: v for k, v in kwargs.items() if k not in names}
        options = {k: v for k, v in kwargs.items() if k in names}
        return Variant(label, self.cfg.with_overrides(**overrides), overrides, skip, **options)

    def measure(self, variants: list[Variant], reference: str, rounds: int = 1,
                extra: Callable[[Variant, list[dict]], dict] | None = None) -> list[dict]:
        """Measure every variant in interleaved rounds, saving after each; return the rows.

        extra(variant, measured_rounds) adds experiment-specific figures to a row.
        """
        self.variants, self.reference, self.extra = variants, reference, extra
        self.raws = {v.label: [] for v in variants}
        self.doc["reference"], self.doc["settings"]["rounds"] = reference, rounds
        self.save()
        def one_round(index: int, last: bool) -> bool:
            for position, variant in enumerate(variants):
                if self._wanted(variant, index):
                    self._measure_one(variant, index, rounds, position)
            return True
        try:
            round_loop.loop(rounds, one_round)
        except KeyboardInterrupt:
            self.save("interrupted")
            raise
        return self.doc["rows"]

    def _wanted(self, variant: Variant, round_index: int) -> bool:
        failed = any(raw.get("status") != "measured" for raw in self.raws[variant.label])
        return not variant.skip and not failed and round_index < (variant.rounds or round_index + 1)

    def _measure_one(self, variant: Variant, round_index: int, rounds: int, position: int) -> None:
        self.log(f"round {round_index + 1}/{rounds} configuration {position + 1}/{len(self.variants)} "
                 f"'{variant.label}'  elapsed {time.perf_counter() - self.started:6.1f}s")
        with tempfile.TemporaryDirectory() as tmp:
            # On a CPU the memory experiments' peak comes from a trace pass (with_tensor_peak).
            traced = self.tensor_memory and self.device_type == "cpu"
            side = SideSpec(f"{self.name}/{variant.label}", variant.cfg.to_dict(), self.peaks, tmp if traced else None,
                            "full", target_of(variant.measure) if variant.measure else None, variant.extra)
            outcome = self.launcher().run(RoundSpec({"only": side}, ("only",)), variant.timeout_s, variant.env)
            if outcome.stopped is not None and "only" not in outcome.reports:
                raise outcome.stopped  # stopped before it measured: nothing to record
            raw = with_tensor_peak(dataclasses.asdict(outcome.report("only")), Path(tmp))
        self.raws[variant.label].append(raw)
        if raw.get("status") != "measured":
            self.log(f"'{variant.label}' {raw.get('status')}: {raw.get('error')}")
        self.save()
        if outcome.stopped is not None:  # what it measured is saved; then the experiment stops
            raise outcome.stopped

    def launcher(self) -> Launcher:
        """Each configuration alone in a fresh process (its peak memory its own), or here (isolate=False)."""
        return choose(self.device_type == "cpu") if self.isolate else InProcess()

    def rows(self) -> list[dict]:
        reference = self.raws.get(self.reference)
        built = []
        for v in self.variants:
            good = [r for r in self.raws[v.label] if r.get("status") == "measured" and r.get("metrics")]
            extra = self.extra(v, good) if good and self.extra else {}
            built.append(rows.build_row(v.label, v.overrides, v.skip, self.raws[v.label], reference,
                                        v.label == self.reference, extra))
        return built

    def save(self, status: str | None = None) -> None:
        self.doc["rows"] = self.rows()
        self.doc["elapsed_s"] = time.perf_counter() - self.started
        if status:
            self.doc["status"] = status
        write_json_atomic(self.path, self.doc)

    def row(self, label: str) -> dict | None:
        return next((r for r in self.doc["rows"] if r["label"] == label), None)

    def finish(self, summary: dict, plots: list[Path]) -> dict:
        """Record the summary and plots, mark the experiment complete, and return the document."""
        self.doc["summary"] = summary
        self.doc["plots"] = [p.name for p in plots]
        self.save("complete")
        self.log(f"done in {self.doc['elapsed_s']:.1f}s: {self.path}" + "".join(f", {p}" for p in plots))
        return self.doc
