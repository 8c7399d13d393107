"""optimization_report.md, the Experiments section: one entry per lab experiment that was run.

Written only when `workbench experiment ...` left results in the run folder; each entry quotes the
experiment's own conclusion (computed from its measurements) and links its plots and JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

from workbench.report.table import RunView
from workbench.results import EXPERIMENTS_INDEX, experiment_path, experiments_dir


def _documents(run_dir: Path) -> list[dict]:
    folder = experiments_dir(run_dir)
    docs = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path == experiment_path(run_dir, EXPERIMENTS_INDEX):
            continue
        try:
            docs.append({**json.loads(path.read_text()), "_file": path.relative_to(run_dir).as_posix()})
        except (OSError, ValueError):
            continue  # a half-written or foreign file: leave it out rather than fail the report
    return docs


def _entry(doc: dict, run_dir: Path) -> list[str]:
    title = doc.get("title") or doc.get("experiment", "experiment")
    status = doc.get("status", "unknown")
    conclusion = (doc.get("summary") or {}).get("conclusion") or "no conclusion was recorded"
    plots = [p for p in doc.get("plots", []) if (run_dir / p).exists()]
    lines = [f"### {title} ({status})", "", f"- **Question:** {doc.get('question', 'not recorded')}",
             f"- **Finding:** {conclusion}", f"- **Data:** [{doc['_file']}]({doc['_file']})"]
    lines += [f"- **Plot:** [{p}]({p})" for p in plots]
    lines += [f"- **Note:** {note}" for note in doc.get("notes", [])]
    return lines + [""] + [f"![{p}]({p})" for p in plots] + ([""] if plots else [])


def experiments_section(view: RunView) -> list[str]:
    docs = _documents(view.run_dir)
    if not docs:
        return []
    lines = ["## Experiments", "", "Each experiment measured its configurations in fresh processes with warm-up "
             "excluded and interleaved rounds; the findings below are computed from those measurements.", ""]
    for doc in docs:
        lines += _entry(doc, view.run_dir)
    return lines
