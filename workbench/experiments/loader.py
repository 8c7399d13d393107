"""The input-pipeline experiments: DataLoader workers, then the lab's pipeline steps on top of them."""
from __future__ import annotations

from pathlib import Path

from workbench.training import loader_sweep as worker_sweep
from workbench.config import RunConfig
from workbench.experiments import charts
from workbench.experiments.lab import Lab, budgeted, stderr_log
from workbench.results import experiment_path, read_json

LAB_WORKERS = (0, 2, 4, 8)
# Each configuration runs 3 + 10 x 2 steps per round, two interleaved rounds: about 15 s per round
# at 32 px on a 2-core CPU.
BUDGET = {"warmup_steps": 3, "timed_steps": 10, "repeats": 1}  # rounds, not repeats, are the replicates
ROUNDS = 2
PLAIN = {"pin_memory": False, "persistent_workers": False}
# Settings that make a workers.json measurement valid for the pipeline experiment too.
SAME_LOADER_FIELDS = ("data", "data_dir", "image_size", "batch_size", "model", "device", "synthetic_per_batch")


def _workers_variants(lab: Lab) -> tuple[list, list[int]]:
    cores = lab.facts.cpu_cores
    usable = set(worker_sweep.candidates(cores))
    dropped = [w for w in LAB_WORKERS if w not in usable]
    variants = [lab.variant(f"workers={w}", num_workers=w, **PLAIN,
                            skip="" if w in usable else f"more workers than the {cores} usable cores: "
                            "they would only oversubscribe them (not measured)") for w in LAB_WORKERS]
    return variants, dropped


def _best(rows: list[dict]) -> dict | None:
    measured = [r for r in rows if r["status"] == "ok"]
    return max(measured, key=lambda r: r["throughput"]["median"], default=None)


def _recommended(rows: list[dict], best: dict) -> dict:
    """The fewest workers whose 95% interval reaches the best median: more only cost cores and memory."""
    level = best["throughput"]["median"]
    close = [r for r in rows if r["status"] == "ok" and r["throughput"]["ci95_high"] >= level]
    return min(close, key=lambda r: r["overrides"]["num_workers"])


def _workers_summary(rows: list[dict], cores: int, dropped: list[int]) -> dict:
    best = _best(rows)
    if best is None:
        return {"best": None, "conclusion": "no setting could be measured"}
    rates = [r["throughput"]["median"] for r in rows if r["status"] == "ok"]
    chosen = _recommended(rows, best)
    skipped = f"; {', '.join(map(str, dropped))} workers not measured ({cores} usable cores)" if dropped else ""
    return {"best": best["label"], "best_num_workers": best["overrides"]["num_workers"],
            "best_throughput": best["throughput"]["median"], "best_epoch_time_s": best["epoch_time_s"],
            "recommended": chosen["label"], "recommended_num_workers": chosen["overrides"]["num_workers"],
            "speedup_max_over_min": max(rates) / min(rates), "usable_cores": cores, "dropped": dropped,
            "conclusion": f"fastest median: {best['label']} ({best['throughput']['median']:.1f} samples/s, "
                          f"{max(rates) / min(rates):.2f}x the slowest); recommended: {chosen['label']} (fewest "
                          f"workers whose 95% interval reaches the fastest){skipped}"}


def plot_workers(doc: dict, out_dir: Path) -> Path:
    rows, reference = doc["rows"], doc["reference"]
    fig, (left, right) = charts.figure(1, 2, "DataLoader workers: throughput and epoch time")
    charts.throughput_panel(left, rows, reference, "Throughput vs num_workers")
    charts.metric_panel(right, rows, reference, ("epoch_time_s",), "seconds per epoch (estimate)",
                        "Epoch time vs num_workers", fmt="{:.0f}".format)
    charts.footnote(fig, " ".join(doc["notes"]))
    return charts.save(fig, out_dir, "num_workers_comparison.png")


def run_workers(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True) -> dict:
    lab = Lab("workers", budgeted(cfg, **BUDGET), out_dir, log, isolate, title="DataLoader workers",
              question="How many DataLoader workers feed this training loop fastest?")
    variants, dropped = _workers_variants(lab)
    if dropped:
        lab.note(f"num_workers {', '.join(map(str, dropped))} dropped: only {lab.facts.cpu_cores} usable cores.")
    lab.note("Epoch time = dataset size / measured throughput; worker start-up at each epoch is not included.")
    rows = lab.measure(variants, reference="workers=0", rounds=ROUNDS)
    return lab.finish(_workers_summary(rows, lab.facts.cpu_cores, dropped), [plot_workers(lab.doc, Path(out_dir))])


def _best_from_workers_json(lab: Lab) -> int | None:
    """The fastest positive worker count of an earlier workers experiment on the same loader, if any."""
    path = experiment_path(lab.out_dir, "workers")
    if not path.exists():
        return None
    doc = read_json(path)
    same = all(doc["base_config"].get(k) == getattr(lab.cfg, k) for k in SAME_LOADER_FIELDS)
    best = _best([r for r in doc.get("rows", []) if r["overrides"].get("num_workers", 0) > 0])
    return best["overrides"]["num_workers"] if same and doc.get("status") == "complete" and best else None


def _best_from_sweep(lab: Lab) -> int:
    """Loader-only sweep (as `workbench run` does): the fastest positive worker count."""
    cores = lab.facts.cpu_cores
    timings, _ = worker_sweep.sweep(lab.data.dataset, lab.cfg.batch_size, cores, lab.cfg.seed, lab.log)
    positive = {w: t for w, t in timings.items() if w > 0}
    return worker_sweep.best(positive) if positive else 0


def best_workers(lab: Lab) -> tuple[int, str]:
    found = _best_from_workers_json(lab)
    if found is not None:
        return found, "the fastest num_workers > 0 of experiments/workers.json"
    return _best_from_sweep(lab), "a loader-only sweep (fewest workers within 5% of the fastest, > 0)"


def _pipeline_variants(lab: Lab, workers: int) -> list:
    base = {"num_workers": 0, **PLAIN}
    tuned = {**base, "num_workers": workers}
    no_workers = "" if workers else "no worker count above 0 to build on (1 usable core?)"
    pin_skip = "" if lab.device_type == "cuda" else (
        f"pin_memory only speeds host-to-GPU copies; on {lab.device_type} the executor ignores it (a no-op)")
    pinned = {**tuned, "pin_memory": lab.device_type == "cuda"}
    return [lab.variant("baseline", **base),
            lab.variant(f"workers={workers}", skip=no_workers, **tuned),
            lab.variant("+ pin_memory", skip=no_workers or pin_skip, **pinned),
            lab.variant("+ persistent_workers", skip=no_workers, **{**pinned, "persistent_workers": workers > 0})]


def _pipeline_summary(rows: list[dict]) -> dict:
    measured = [r for r in rows if r["status"] == "ok" and r["label"] != "baseline"]
    best = max(measured, key=lambda r: r["speedup"]["ratio"], default=None)
    if best is None:
        return {"best": None, "conclusion": "no pipeline step could be measured"}
    speed = best["speedup"]
    return {"best": best["label"], "best_speedup": speed["ratio"], "best_verdict": speed["verdict"],
            "conclusion": f"best step {best['label']}: {speed['ratio']:.2f}x the baseline "
                          f"(95% CI {speed['ci95_low']:.2f}-{speed['ci95_high']:.2f}, {speed['verdict']})"}


def plot_pipeline(doc: dict, out_dir: Path) -> Path:
    rows, reference = doc["rows"], doc["reference"]
    fig, (left, right) = charts.figure(1, 2, "Input pipeline: cumulative DataLoader settings")
    charts.throughput_panel(left, rows, reference)
    charts.speedup_panel(right, rows, reference, "Speedup vs baseline (num_workers=0)")
    charts.footnote(fig, " ".join(doc["notes"]))
    return charts.save(fig, out_dir, "dataloader_optimization.png")


def run_pipeline(cfg: RunConfig, out_dir: Path, log=stderr_log, isolate: bool = True) -> dict:
    lab = Lab("pipeline", budgeted(cfg, **BUDGET), out_dir, log, isolate, title="Input pipeline",
              question="Baseline -> best workers -> + pin_memory -> + persistent workers: what does each add?")
    workers, source = best_workers(lab)
    lab.doc["decisions"]["workers"] = f"num_workers={workers} from {source}"
    lab.note("persistent_workers only saves the worker restart at an epoch boundary; the timed window "
             "rarely crosses one, so expect no change in steady-state throughput.")
    if lab.device_type != "cuda":
        lab.note("pin_memory is skipped: it only matters for copies to a CUDA device.")
    rows = lab.measure(_pipeline_variants(lab, workers), reference="baseline", rounds=ROUNDS)
    return lab.finish(_pipeline_summary(rows), [plot_pipeline(lab.doc, Path(out_dir))])
