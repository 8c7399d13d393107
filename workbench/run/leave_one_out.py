"""Phase 4, leave-one-out: each kept stage removed from the final configuration; one that no longer
pays there is dropped, and its own file says so."""
from __future__ import annotations

from workbench.config import RunConfig
from workbench.errors import StageSkipped
from workbench.run import comparing, judge
from workbench.run.comparing import LadderState, Verdicts
from workbench.run.record import StageRecord
from workbench.run.session import Session
from workbench.run.stages import BATCH


def _record_dropped(session: Session, finished: list[StageRecord], name: str, entry: dict) -> None:
    """A kept stage leave-one-out dropped: its file says "dropped", with why, and keeps what the pass
    decided (first_pass: a resumed run's pass builds on it as it did)."""
    record = next((r for r in finished if r.stage == name and r.status == "kept"), None)
    if record is None:
        return
    doc = {**record.doc, "status": "dropped", "leave_one_out": entry,
           "reason": f"{record.doc.get('reason', '')}; leave-one-out on the final configuration: {entry['text']}, "
                     "so it is not in the final configuration",
           "first_pass": record.doc.get("first_pass") or {key: record.doc.get(key) for key in comparing.FIRST_PASS_KEYS}}
    finished[finished.index(record)] = comparing.save(session, doc)


def _without(session: Session, applied: list[str], dropped: str, final: RunConfig) -> RunConfig:
    """The final configuration rebuilt without one stage. The batch stage's size was measured, not
    derived: it is taken from the final configuration (with its learning rate)."""
    cfg = session.base_cfg
    for name in applied:
        if name == dropped:
            continue
        stage = comparing.stage_named(name)
        cfg = (cfg.with_overrides(batch_size=final.batch_size, lr=final.lr, micro_batch_size=final.micro_batch_size)
               if stage.kind == BATCH else stage.apply(cfg, session.context))
    return cfg


def leave_one_out(session: Session, state: LadderState, verdicts: Verdicts, finished: list[StageRecord]) -> None:
    """Does each kept stage still pay in the final mix? One that does not is dropped, and its own file
    says so (status "dropped"), so no figure calls it kept while the final configuration lacks it."""
    for name in list(state.applied):
        try:
            without = _without(session, state.applied, name, state.cfg)
        except StageSkipped:
            continue
        if without == state.cfg:  # a later stage set the same field (cuda_graphs after compile): nothing to measure
            state.applied = [s for s in state.applied if s != name]
            entry = {"stage": name, "verdict": "replaced by a later stage", "dropped": True,
                     "text": "a later stage replaced what it set: the final configuration is the same without it"}
            verdicts.add("leave_one_out", entry)
            _record_dropped(session, finished, name, entry)
            session.log(f"-- leave-one-out {name}: a later kept stage replaced what it set; dropped from the list")
            continue
        comparison = comparing.compare(session, without, state.cfg, f"leave-one-out: {name}", f"final without {name}", "final",
                              measured=state.measured, floor=state.floor)
        entry = judge.check_entry(name, comparison, session.base_cfg.min_effect, state.floor)
        entry["still_pays"] = entry["verdict"] in ("faster", "inconclusive")
        if entry["verdict"] in ("no significant change", "slower"):
            state.cfg, state.applied = without, [s for s in state.applied if s != name]
            entry["dropped"] = True
        verdicts.add("leave_one_out", entry)
        if entry.get("dropped"):
            _record_dropped(session, finished, name, entry)
        session.log(f"-- leave-one-out {name}: final vs without it {entry['text']}"
                    f"{'; dropped from the final configuration' if entry.get('dropped') else ''}")
        if comparison.interrupted is not None:
            raise comparison.interrupted
