"""Phase 6, the headline: the final configuration against the baseline, paired, in one time window,
narrowed with what is left of the time budget."""
from __future__ import annotations

import time

from workbench import stats
from workbench.config import RunConfig
from workbench.run import comparing, console, rounds as paired_rounds, stage_results
from workbench.run.comparing import LadderState, Verdicts
from workbench.run.record import StageRecord
from workbench.run.rounds import Side
from workbench.run.session import Session


FINAL_STAGE = stage_results.FINAL_STAGE  # the headline's stage name, spelled once


def headline(session: Session, state: LadderState, verdicts: Verdicts) -> StageRecord | None:
    """The final configuration against the baseline, paired: the figure the report leads with."""
    if not state.applied:
        verdicts.set("headline", {"text": "no stage was kept: the baseline is the final configuration"})
        return None
    started = time.perf_counter()
    comparison = comparing.compare(session, session.base_cfg, state.cfg, "headline", "baseline", "final",
                          comparing.trace_dir_for(session, state.cfg, FINAL_STAGE), measured=state.measured, floor=state.floor)
    comparison = _narrowed(session, comparison, state.cfg)
    result = stage_results.final(session, state, comparison, started)
    verdicts.set("headline", {"applied": state.applied, **(result["metrics"] or {}).get("speedup_vs_baseline", {}),
                              "text": result["reason"]})
    return comparing.saved_then_stop(session, result, comparison)


# The headline is the figure a user quotes: what is left of the time budget goes to narrowing it, to
# about +-5%, with at most HEADLINE_MOST_FACTOR times the planned rounds. How many rounds is settled
# once, from the planned rounds' spread (as if it held), not re-judged round by round: stopping when
# the interval happens to look narrow would leave it covering less than 95% (about 92% simulated).
HEADLINE_HALF_WIDTH = 0.05


HEADLINE_MOST_FACTOR = 3


def _narrowed(session: Session, comparison: paired_rounds.Comparison, final: RunConfig) -> paired_rounds.Comparison:
    """The headline comparison with the extra rounds its spread says a +-HEADLINE_HALF_WIDTH interval
    needs, each only when it fits in what is left of the time budget."""
    ratio = comparison.ratio() if comparison.failure is None and comparison.interrupted is None else None
    done = len(comparison.a_rounds)
    if ratio is None or done < 2 or stats.half_width(ratio) <= HEADLINE_HALF_WIDTH:
        return comparison
    most = max(done, final.rounds * HEADLINE_MOST_FACTOR)
    needed = stats.rounds_for_half_width(ratio, HEADLINE_HALF_WIDTH, most)

    def more(now: paired_rounds.Comparison) -> bool:
        per_round = max(now.seconds[-3:] or [0.0])  # the slowest recent round: an overrun costs the user
        left = session.time_budget_s - (time.monotonic() - session.started)
        return len(now.a_rounds) < needed and per_round <= left
    if not more(comparison):
        return comparison
    session.log(f"   headline {console.fmt(ratio)} after {done} rounds: narrowing it with extra rounds, "
                f"{needed} in all (what this spread needs for about +-{HEADLINE_HALF_WIDTH:.0%}, at most "
                f"{most}), while the time budget lasts")
    base, target = Side(session.base_cfg, "baseline"), Side(final, "final")
    return paired_rounds.extend(session, comparison, base, target, "headline", more, needed, "narrowing the headline")
