"""Python-level views of a stage: line_profiler over the step and the input pipeline, cProfile over
every function (workbench.trace.callprofile), and memory_profiler over the process's host memory in time.
All are written beside the stage's trace.

These views answer what the torch.profiler trace cannot: which Python line of the loop or of the
dataset's item loading costs the time, and how host memory grows while the loop runs.
"""
from __future__ import annotations

import csv
import linecache
import time
from pathlib import Path

from line_profiler import LineProfiler
from memory_profiler import memory_usage
from torchvision import datasets, transforms

from workbench.trace.callprofile import function_profile
from workbench.measure.executor import Built, run_steps
from workbench.progress import Progress
from workbench.results import write_atomic, write_text_atomic
from workbench.training.step import BatchStream, TrainStep

TOP_LINES = 15
MEMORY_SAMPLE_INTERVAL_S = 0.05


def _profiled_functions() -> list:
    """The loop's own lines and the per-item data path (CIFAR item loading and each transform)."""
    return [TrainStep.__call__, TrainStep._forward_backward, TrainStep._optimizer_step, TrainStep.to_device,
            BatchStream.next, datasets.CIFAR10.__getitem__, datasets.DatasetFolder.__getitem__,
            transforms.Compose.__call__, transforms.RandomResizedCrop.forward,
            transforms.RandomHorizontalFlip.forward, transforms.ToTensor.__call__, transforms.Normalize.forward]


def _line_rows(profiler: LineProfiler) -> list[dict]:
    stats = profiler.get_stats()
    rows = []
    for (filename, _, function), timings in stats.timings.items():
        for lineno, hits, total in timings:
            rows.append({"file": filename, "line": lineno, "function": function, "hits": hits,
                         "time_ms": total * stats.unit * 1000,
                         "code": linecache.getline(filename, lineno).strip()})
    return rows


def top_lines(rows: list[dict], step_total_ms: float, count: int = TOP_LINES) -> list[dict]:
    """The costliest lines, each with its share of the profiled steps' wall time."""
    ranked = sorted(rows, key=lambda r: r["time_ms"], reverse=True)[:count]
    return [{**row, "share": row["time_ms"] / step_total_ms if step_total_ms else 0.0} for row in ranked]


def profile_lines(built: Built, out_dir: Path, steps: int) -> Path:
    """Line-profile `steps` training steps (data loading in the main process included)."""
    profiler = LineProfiler(*_profiled_functions())
    progress = Progress("lines")

    start = time.perf_counter()
    profiler.enable_by_count()
    try:
        run_steps(built, steps, progress, "line_profiler")
    finally:
        profiler.disable_by_count()
    wall_ms = (time.perf_counter() - start) * 1000
    # TrainStep.__call__ and BatchStream.next hold every other profiled line: their totals are the
    # step, so shares are taken against the wall time of the profiled steps.
    return _write_lines(top_lines(_line_rows(profiler), wall_ms), out_dir / "line_profile.txt", wall_ms, steps)


def _write_lines(rows: list[dict], path: Path, wall_ms: float, steps: int) -> Path:
    lines = [f"line_profiler: {steps} training steps, {wall_ms:.0f} ms wall; lines by total time "
             "(nested: a call line includes the lines it runs)", "",
             f"{'share':>7} {'time_ms':>10} {'hits':>7}  location  code"]
    for row in rows:
        location = f"{Path(row['file']).name}:{row['line']} ({row['function']})"
        lines.append(f"{row['share']:7.1%} {row['time_ms']:10.1f} {row['hits']:7d}  {location}  {row['code']}")
    return write_text_atomic(path, "\n".join(lines) + "\n")


def profile_functions(built: Built, out_dir: Path, steps: int) -> Path:
    """cProfile over `steps` training steps: cumulative and self time per function, with callers."""
    path = out_dir / "function_profile.txt"
    with function_profile(path, f"{steps} training steps"):
        run_steps(built, steps, Progress("functions"), "cProfile")
    return path


def profile_memory(built: Built, out_dir: Path, steps: int) -> tuple[Path, Path]:
    """Host memory (MiB) over time while `steps` training steps run: a CSV and a plot."""
    progress = Progress("memory")
    samples = memory_usage((run_steps, (built, steps, progress, "memory_profiler"), {}),
                           interval=MEMORY_SAMPLE_INTERVAL_S, timestamps=True, include_children=True)
    start = samples[0][1]
    points = [(t - start, mib) for mib, t in samples]
    csv_path = out_dir / "memory_profile.csv"
    write_atomic(csv_path, lambda handle: csv.writer(handle).writerows([("elapsed_s", "rss_mib"), *points]))
    return csv_path, _plot_memory(points, out_dir / "memory_profile.png", steps)


def _plot_memory(points: list[tuple[float, float]], path: Path, steps: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:blue")
    ax.set(xlabel="elapsed (s)", ylabel="host memory, RSS incl. workers (MiB)",
           title=f"Host memory over {steps} training steps (memory_profiler)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
