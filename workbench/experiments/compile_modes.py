"""Eager against torch.compile's modes: steady-state speed and, apart from it, the compile cost.

Each mode compiles in a fresh process with an empty inductor cache of its own, so its warm-up time is
the cold compile a first run pays (modes would otherwise reuse each other's cached kernels). A mode
that fails or runs past its time limit is recorded with the reason and the experiment goes on.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from workbench import stats
from workbench.config import RunConfig
from workbench.experiments import charts
from workbench.experiments.lab import Lab, budgeted, stderr_log
from workbench.experiments.rows import value

MODES = ("default", "reduce-overhead", "max-autotune")
BUDGET = {"warmup_steps": 3, "timed_steps": 10, "repeats": 1}  # rounds, not repeats, are the replicates
# A cold ResNet-18 compile took 40-70 s on the 2-core CPU; max-autotune also benchmarks kernels.
TIMEOUT_S = 420.0


def _variants(lab: Lab, modes: tuple[str, ...], cache_root: Path) -> list:
    variants = [lab.variant("eager", compile="none")]
    for mode in modes:
        env = {"TORCHINDUCTOR_CACHE_DIR": str(cache_root / mode)}
        variants.append(lab.variant(mode, compile=mode, timeout_s=TIMEOUT_S, env=env))
    return variants


def _extra(variant, good: list[dict]) -> dict:
    """Compile overhead: the first round's warm-up minus what its steps would take once compiled."""
    first = good[0]["metrics"]
    steady = stats.spread(first["step_times_s"])["median"]
    overhead = first["warmup_s"] - variant.cfg.warmup_steps * steady
    return {"warmup_s": first["warmup_s"], "compile_overhead_s": max(overhead, 0.0), "mode": variant.cfg.compile}


def _break_even(row: dict, eager: dict | None) -> float | None:
    """Steps after which a faster compiled loop has paid back its compile time (None: never)."""
    saved = (value(eager or {}, "step_time_s", "median") or 0) - (value(row, "step_time_s", "median") or 0)
    overhead = value(row, "extra", "compile_overhead_s")
    return overhead / saved if overhead is not None and saved > 0 else None


def _summary(rows: list[dict]) -> dict:
    eager = rows[0] if rows[0]["status"] == "ok" else None
    table = {r["label"]: {"speedup": value(r, "speedup", "ratio"), "verdict": value(r, "speedup", "verdict"),
                          "warmup_s": r["warmup_s"], "compile_overhead_s": value(r, "extra", "compile_overhead_s"),
                          "break_even_steps": _break_even(r, eager), "status": r["status"], "reason": r["reason"]}
             for r in rows[1:]}
    faster = [label for label, t in table.items() if t["verdict"] == "faster"]
    return {"per_mode": table, "faster_than_eager": faster,
            "conclusion": (f"measurably faster than eager: {', '.join(faster)}" if faster
                           else "no compile mode was measurably faster than eager here")}


def plot(doc: dict, out_dir: Path) -> Path:
    rows, reference = doc["rows"], doc["reference"]
    fig, (left, right) = charts.figure(1, 2, "torch.compile modes against eager")
    charts.throughput_panel(left, rows, reference, "Steady-state throughput (after warm-up)")
    charts.metric_panel(right, rows, reference, ("warmup_s",), "seconds (warm-up steps incl. compile)",
                        "Warm-up time, compile included (cold cache)", fmt="{:.1f}".format, speed=False)
    charts.footnote(fig, " ".join(doc["notes"]))
    return charts.save(fig, out_dir, "compile_comparison.png")


def run(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True, modes: tuple[str, ...] = MODES) -> dict:
    lab = Lab("compile", budgeted(cfg, **BUDGET), out_dir, log, isolate, title="torch.compile modes",
              question="Does torch.compile pay for its compile time, and which mode?")
    lab.note(f"Warm-up ({lab.cfg.warmup_steps} steps) absorbs compilation and is reported apart from the timed "
             f"steps; each mode compiles with an empty cache (limit {TIMEOUT_S:.0f} s).")
    if lab.device_type != "cuda":
        lab.note("reduce-overhead adds CUDA graphs, which do not exist off a GPU: here it compiles like default.")
    with tempfile.TemporaryDirectory(prefix="workbench-inductor-") as cache_root:
        rows = lab.measure(_variants(lab, modes, Path(cache_root)), "eager", rounds=1, extra=_extra)
    return lab.finish(_summary(rows), [plot(lab.doc, Path(out_dir))])
