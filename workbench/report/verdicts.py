"""The report's "How the verdicts were reached" section, from verdicts.json (no torch).

It shows what a reader needs to trust (or distrust) the numbers: the machine's noise floor from the
A/A comparison, the order the stages were taken in and why, the second look at rejected stages on
the final configuration, the leave-one-out check of each kept stage, and the paired headline.
"""
from __future__ import annotations

import math
from pathlib import Path

from workbench.errors import ResultFileError
from workbench.report.markdown import bullet, table
from workbench.report.table import RunView
from workbench.results import VERDICTS_FILE, read_json
from workbench.stats import INCONCLUSIVE_TEXT, floor_at

# A noise floor above this (+-50%) says the machine, not the stages, decided the numbers.
TOO_NOISY = 0.5
# Delivering under this share of the compute-only ceiling means the input pipeline sets the pace.
INPUT_BOUND_SHARE = 0.9


def load_verdicts(run_dir: Path) -> dict | None:
    path = Path(run_dir) / VERDICTS_FILE
    try:
        return read_json(path) if path.is_file() else None
    except ResultFileError:  # a truncated file: the stage results still make a report
        return None


def interval(entry: dict) -> str:
    high = entry.get("ci95_high")
    if entry.get("ratio") is None:
        return "-"
    if high is None or not math.isfinite(high):
        return f"{entry['ratio']:.2f}x (one round: no interval)"
    return f"{entry['ratio']:.2f}x [{entry['ci95_low']:.2f}, {high:.2f}]"


def verdict_words(entry: dict) -> str:
    """The verdict as the stage's own file words it: an inconclusive check is "undecided", with what
    deciding it would take when the check recorded it."""
    verdict = entry.get("verdict", "")
    if verdict != "inconclusive":
        return verdict
    take = (entry.get("would_take") or {}).get("text")
    return f"undecided: {take}" if take else INCONCLUSIVE_TEXT


def _noise_lines(doc: dict) -> list[str]:
    aa = doc.get("noise_floor")
    if not aa:
        return [bullet("Noise floor", "not measured (the baseline did not finish)")]
    floor = aa.get("noise_floor")
    measured = f"the baseline against itself measured {interval(aa)} over {aa.get('rounds', '?')} paired rounds"
    if floor is None or not math.isfinite(floor) or floor > TOO_NOISY:
        return [bullet("Noise floor", f"{measured}: the machine was too noisy to judge small effects; "
                       "rerun on a quiet machine")]
    rounds = aa.get("rounds") or 1
    return [bullet("Noise floor", f"{measured}: one round's spread is {floor:.1%}, so over {rounds} rounds effects under "
                   f"{floor_at(floor, rounds):.1%} are called 'no significant change' (the floor over the square root "
                   "of a comparison's rounds). A comparison whose own rounds spread less than the A/A's is held to "
                   "the floor scaled by its spread over the A/A's (the 'floor' column below): the A/A measures the "
                   "baseline's noise, and a compute-bound pair after an input-bound baseline is quieter")]


def _order_rows(view: RunView, doc: dict) -> list[list[str]]:
    rows = []
    for position, entry in enumerate(doc.get("order", []), start=1):
        result = view.result(entry["stage"]) or {}
        speed = (result.get("metrics") or {}).get("speedup_vs_previous") or {}
        rows.append([str(position), entry["stage"], entry.get("why", ""), " + ".join(entry.get("builds_on", [])),
                     result.get("status", "not finished"), interval(speed) if speed else "-", _floor_text(speed)])
    return rows


def _floor_text(speed: dict) -> str:
    """The floor this comparison was held to, at its rounds, and how much of the A/A's it is."""
    if speed.get("noise_floor") is None:
        return "-"
    held = floor_at(speed["noise_floor"], speed.get("rounds") or 1)
    scale = speed.get("floor_scale")
    return f"{held:.1%}" + (f" ({scale:.0%} of the A/A's)" if scale is not None and scale < 1 else "")


def _check_rows(entries: list[dict], outcome) -> list[list[str]]:
    return [[e["stage"], interval(e), verdict_words(e), outcome(e)] for e in entries]


def _second_look_outcome(entry: dict) -> str:
    if entry.get("not_retried"):
        return f"not retried: {entry['not_retried']} (first pass figure shown)"
    return "adopted" if entry.get("adopted") else "still not kept"


def verdicts_section(view: RunView) -> list[str]:
    doc = load_verdicts(view.run_dir)
    if doc is None:
        return []
    lines = ["## How the verdicts were reached", "",
             "Every verdict comes from paired rounds: in each round one fresh process per configuration, "
             "timed one after the other in alternating order, and the 95% interval is taken over the rounds. "
             "A speed stage is kept only when its whole interval lies above 1 + the minimum effect and its "
             "effect above the noise floor.", ""]
    lines += _noise_lines(doc) + [""]
    if doc.get("order"):
        lines += [f"Order taken ({doc.get('order_mode', 'trace')}):", ""]
        lines += table(["#", "stage", "why now", "builds on", "status", "vs previous", "floor"], _order_rows(view, doc)) + [""]
    if doc.get("second_look"):
        lines += ["Second look: each rejected speed stage tried again on the final configuration:", ""]
        lines += table(["stage", "with it vs without", "verdict", "outcome"], _check_rows(
            doc["second_look"], _second_look_outcome)) + [""]
    if doc.get("leave_one_out"):
        lines += ["Leave-one-out: does each kept stage still pay in the final mix?", ""]
        lines += table(["stage", "final vs final without it", "verdict", "outcome"], _check_rows(
            doc["leave_one_out"], lambda e: "dropped" if e.get("dropped") else "stays")) + [""]
    headline = doc.get("headline")
    if headline:
        lines += [bullet("Headline", f"{' + '.join(headline.get('applied', [])) or 'baseline'}: "
                         f"{interval(headline)} against the baseline, paired in the same time window"
                         if headline.get("ratio") else headline.get("text", "")), ""]
    return lines


def _ceiling(result: dict | None) -> tuple[dict | None, dict | None]:
    metrics = (result or {}).get("metrics") or {}
    return metrics.get("throughput"), (metrics.get("compute_only") or {}).get("throughput")


def bound_verdict(delivered: dict, ceiling: dict) -> tuple[str, str]:
    """(share, verdict): input-bound only when even the delivered interval's top stays under
    INPUT_BOUND_SHARE of the ceiling interval's bottom; compute-bound only when the delivered bottom
    reaches that share of the ceiling's top; otherwise not decided. A share over 100% (the two
    figures come from different windows) is shown as within noise, never as a finding."""
    low = delivered.get("ci95_low", delivered["median"]) / max(ceiling.get("ci95_high", ceiling["median"]), 1e-12)
    high = delivered.get("ci95_high", delivered["median"]) / max(ceiling.get("ci95_low", ceiling["median"]), 1e-12)
    point = delivered["median"] / ceiling["median"]
    share = f"{point:.0%}" if point <= 1 else "100% (within noise)"
    if high < INPUT_BOUND_SHARE:
        return share, "input-bound"
    if low >= INPUT_BOUND_SHARE:
        return share, "compute-bound"
    return share, f"not decided (share {max(low, 0):.0%}-{min(high, 9.99):.0%})"


def ceiling_lines(view: RunView) -> list[str]:
    """Input-bound or compute-bound, said only where the intervals decide it: each stage's compute-only
    ceiling beside what the real input pipeline delivered."""
    rows = []
    for result in view.results:
        delivered, ceiling = _ceiling(result)
        if delivered and ceiling and delivered.get("median") and ceiling.get("median"):
            share, bound = bound_verdict(delivered, ceiling)
            rows.append([result["stage"], f"{ceiling['median']:.1f}", f"{delivered['median']:.1f}", share, bound])
    if not rows:
        return []
    lines = ["## Input pipeline against compute", "",
             "The model could do the first figure (a few steps on one batch kept on the device: no loading, "
             "no copy, no augmentation); the input pipeline delivered the second.", ""]
    return lines + table(["stage", "compute-only samples/s", "delivered samples/s", "share", "verdict"], rows) + [""]
