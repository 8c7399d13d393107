"""Do the verdicts hold? Run the default ladder several times in a row and print what each run said.

    make bench-verdicts                      # 3 default ladders
    make bench-verdicts ARGS="--runs 2 -- --image-size 16"   # options after -- go to `workbench run`

Prints each stage's status per run and whether the runs agree, the kept set of each run, and the
headline speedup (final configuration against the baseline, paired) with its interval per run, and
whether the headline intervals overlap; then `workbench compare` between every pair of the runs (one
revision: the gate should pass). Then the last run's final configuration against the best
loop a person would write by hand (benchmarks/best_loop.py: fused Adam in fp32, and with bf16 autocast
where the CPU has it natively; the better of the two), alternating in one process. Exit status 0 when the runs agree on the kept set, their
headline intervals overlap and the final configuration is not measured wholly below 0.95x the
hand-written loop; 1 otherwise (2 when a run fails). --no-best-loop skips the last part.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.results import VERDICTS_FILE, load_stage_results  # noqa: E402


def run_ladder(name: str, extra: list[str], reports: Path) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "workbench.cli", "run", "--run-name", name, "--reports-dir", str(reports), *extra]
    print(f"$ {' '.join(command[2:])}", flush=True)
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise SystemExit(2)
    return time.perf_counter() - started


def outcome(run_dir: Path) -> dict:
    """Per stage: first-pass status, then what the second look and leave-one-out changed; the headline."""
    verdicts = json.loads((run_dir / VERDICTS_FILE).read_text())
    statuses = {r["stage"]: r["status"] for r in load_stage_results(run_dir) if r["stage"] != "final"}
    for entry in verdicts.get("second_look", []):
        if entry.get("adopted"):
            statuses[entry["stage"]] = "kept (second look)"
    for entry in verdicts.get("leave_one_out", []):
        if entry.get("dropped"):
            statuses[entry["stage"]] = "dropped (leave-one-out)"
    headline = verdicts.get("headline") or {}
    return {"statuses": statuses, "kept": sorted(headline.get("applied", [])), "headline": headline,
            "noise_floor": (verdicts.get("noise_floor") or {}).get("noise_floor")}


def headline_text(headline: dict) -> str:
    if headline.get("ratio") is None:
        return headline.get("text", "none")
    return f"{headline['ratio']:.2f}x [{headline['ci95_low']:.2f}, {headline['ci95_high']:.2f}]"


def overlap(headlines: list[dict]) -> bool:
    measured = [h for h in headlines if h.get("ratio") is not None]
    if len(measured) != len(headlines):
        return len(measured) == 0  # all "nothing kept" agree; a mix does not
    return max(h["ci95_low"] for h in measured) <= min(h["ci95_high"] for h in measured)


def print_table(outcomes: list[dict], walls: list[float]) -> bool:
    stages = list(dict.fromkeys(s for o in outcomes for s in o["statuses"]))
    width = max(len(s) for s in stages)
    print(f"\n{'stage':<{width}}  " + "  ".join(f"run {i + 1:<22}" for i in range(len(outcomes))) + "agree")
    for stage in stages:
        cells = [o["statuses"].get(stage, "-") for o in outcomes]
        print(f"{stage:<{width}}  " + "  ".join(f"{c:<26}" for c in cells) + ("yes" if len(set(cells)) == 1 else "NO"))
    same_kept = len({tuple(o["kept"]) for o in outcomes}) == 1
    overlapping = overlap([o["headline"] for o in outcomes])
    for i, (o, wall) in enumerate(zip(outcomes, walls), start=1):
        floor = f"{o['noise_floor']:.1%}" if o["noise_floor"] is not None else "n/a"
        print(f"run {i}: kept {' + '.join(o['kept']) or 'nothing'}; headline {headline_text(o['headline'])}; "
              f"noise floor {floor}; {wall / 60:.1f} min")
    print(f"kept sets agree: {'yes' if same_kept else 'NO'}; headline intervals overlap: {'yes' if overlapping else 'NO'}")
    return same_kept and overlapping


def compare_pairs(run_dirs: list[Path]) -> bool:
    """`workbench compare` between every pair of runs of this one revision: the gate should pass."""
    from workbench.report.compare import compare_runs

    passes = True
    for i, a in enumerate(run_dirs):
        for b in run_dirs[i + 1:]:
            rows, regressed = compare_runs(a, b)
            flagged = [f"{r['stage']} {r['speedup']['ratio']:.2f}x" for r in rows if r["regression"] and r.get("speedup")]
            print(f"compare {a.name[-1]} -> {b.name[-1]}: {'REGRESSION ' + ', '.join(flagged) if regressed else 'passes (exit 0)'}")
            passes = passes and not regressed
    return passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reports-dir", default="reports")
    parser.add_argument("--no-best-loop", action="store_true", help="skip the hand-written loop comparison")
    parser.add_argument("extra", nargs="*", help="options for `workbench run` (after --)")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    reports = Path(args.reports_dir).resolve()
    names = [f"verdicts-{stamp}-{i + 1}" for i in range(args.runs)]
    walls = [run_ladder(name, args.extra, reports) for name in names]
    outcomes = [outcome(reports / name) for name in names]
    agreed = print_table(outcomes, walls)
    gate_passes = compare_pairs([reports / name for name in names])
    if args.no_best_loop:
        return 0 if agreed else 1
    import best_loop  # beside this file; imports torch, so only when asked

    print("\nthe last run's final configuration against the best hand-written loop:", flush=True)
    result = best_loop.compare(reports / names[-1])
    best_loop.say(result)
    return 0 if agreed and result["goal"] != "NOT met" else 1


if __name__ == "__main__":
    sys.exit(main())
