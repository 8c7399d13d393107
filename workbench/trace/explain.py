"""`workbench analyze PATH...`: any torch.profiler trace (or a folder of them, one per rank) ->
breakdown, findings with their evidence, and the markers the shares rest on.

The JSON document is the run's trace_summary.json plus "findings"; with several traces, the first
rank's document carries the others under "ranks", and, when they are one trace per rank, the per-rank
reading (trace/ranks.py: the table, its skew, the straggler) under "per_rank", whose findings lead the
document's. No torch import: it reads files only.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

from workbench.trace import analyze, comm, diagnose, ranks
from workbench.errors import UsageError
from workbench.results import MEASURED_CONTEXT_FILE, TRACE_GLOBS

ALLOWED = "a .json or .json.gz Chrome trace written by torch.profiler, or a folder holding them"
# Tensor cores arrived with Volta (compute capability 7.0).
TENSOR_CORE_MAJOR = 7


def trace_files(paths: list[str]) -> list[Path]:
    """Every trace the arguments name: files as given, folders searched (one trace per rank)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(_in_folder(path))
        else:
            raise UsageError(f"{given!r} does not exist; allowed: {ALLOWED}")
    return found


def _in_folder(folder: Path) -> list[Path]:
    named = sorted(p for pattern in TRACE_GLOBS for p in folder.rglob(pattern))
    plain = named or sorted(p for pattern in ("*.json", "*.json.gz") for p in folder.glob(pattern))
    if not plain:
        raise UsageError(f"{str(folder)!r} holds no trace; allowed: {ALLOWED}")
    return plain


def context_of(trace: dict, summary: dict) -> dict:
    """What diagnose needs to know about the machine, read from the trace itself."""
    props = trace.get("deviceProperties") or []
    majors = [p.get("computeMajor", 0) for p in props if isinstance(p, dict)]
    return {"device_type": "cuda" if summary.get("device") else "cpu",
            "tensor_cores": bool(majors) and max(majors) >= TENSOR_CORE_MAJOR}


def _read(path: Path, with_communication: bool, measured: dict | None = None) -> tuple[dict, dict | None]:
    """(summary + findings, communication or None) for one trace; a bad file is a UsageError naming it."""
    try:
        trace = analyze.load_trace(path)
        if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
            raise analyze.TraceFormatError("no traceEvents list")
        summary = analyze.analyze_loaded(trace, path)[0]
        communication = comm.communication(trace) if with_communication else None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError, ValueError, KeyError,
            TypeError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UsageError(f"{str(path)!r} is not a readable torch.profiler trace ({reason}); allowed: {ALLOWED}") from None
    context = {**context_of(trace, summary), **(measured if measured is not None else measured_beside(path))}
    findings = diagnose.diagnose(summary, context)
    if not with_communication:
        findings = _with_exposed_communication(trace, summary, findings)
    return {**summary, "findings": findings}, communication


def _with_exposed_communication(trace: dict, summary: dict, findings: list[dict]) -> list[dict]:
    """One rank's trace alone: NCCL kernels on its GPU timeline with nothing else of the rank's running are
    exposed communication too (read across ranks when there are several traces: trace/ranks.py)."""
    if not summary.get("device"):
        return findings
    found = comm.communication(trace)
    if found["timeline"] != comm.GPU_TIMELINE or not found["ops"]:
        return findings
    exposed = ranks.rule_communication_exposed([ranks.rank_row(summary, found)])
    if exposed is None:
        return findings
    exposed["evidence"] = (exposed["evidence"].replace("Every rank spends at least", "This rank spends")
                           + " Read from this rank's GPU timeline alone: the other ranks' traces say whether it "
                             "waits for a slower rank or for the wire (workbench analyze on the folder of all ranks).")
    return sorted(findings + [exposed], key=lambda f: diagnose.SEVERITY_ORDER.index(f["severity"]))


def measured_beside(path: Path) -> dict:
    """The figures the run measured beside this trace (results.MEASURED_CONTEXT_FILE in its folder), if any."""
    try:
        measured = json.loads((Path(path).parent / MEASURED_CONTEXT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return measured if isinstance(measured, dict) else {}


def analyze_file(path: Path, measured: dict | None = None) -> dict:
    """summary + findings for one trace; a bad file is a UsageError naming it. `measured`: diagnosis
    context measured beside the trace (an instrumented loop's host_cpu), which the file cannot hold."""
    return _read(path, with_communication=False, measured=measured)[0]


def document(paths: list[str]) -> dict:
    """One JSON-ready document: the lowest rank's analysis, and with several ranks every rank's under
    "ranks" and the per-rank reading under "per_rank", whose findings (the straggler, exposed
    communication) lead the document's."""
    files = trace_files(paths)
    read = sorted((_read(path, len(files) > 1) for path in files),
                  key=lambda pair: (pair[0]["rank"], pair[0]["trace_file"]))
    docs = [doc for doc, _ in read]
    if len(docs) == 1:
        return docs[0]
    if not ranks.one_per_rank(docs):  # several traces of one process: each read alone, as before
        return {**docs[0], "ranks": docs}
    per_rank = ranks.reading([ranks.rank_row(doc, found) for doc, found in read])
    findings = sorted(per_rank["findings"] + docs[0]["findings"],
                      key=lambda f: diagnose.SEVERITY_ORDER.index(f["severity"]))
    return {**docs[0], "findings": findings, "ranks": docs, "per_rank": per_rank}


def _breakdown_lines(doc: dict) -> list[str]:
    lines = [f"{'part':<16}{'ms/step':>10}{'share':>9}  markers"]
    for part, share in doc["breakdown_share"].items():
        source = doc.get("markers", {}).get(part, "time outside every region")
        lines.append(f"{part:<16}{doc['breakdown_ms'][part]:>10.2f}{share:>9.1%}  {source}")
    return lines


def _device_lines(device: dict | None) -> list[str]:
    if not device:
        return ["device: CPU-only trace (no GPU timeline)"]
    per_step = device["steps"] or 1
    return [f"GPU: busy {device['busy_share']:.1%}, idle {device['idle_share']:.1%} of {device['window_ms']:.1f} ms; "
            f"{device['kernels_per_step']:.0f} kernels and {device['launches_per_step']:.0f} launches per step; "
            f"copies {device['kernel_ms_by_kind']['copy'] / per_step:.2f} ms/step; fp32 conv/matmul "
            f"{device['fp32_tensorcore_eligible_ms'] / per_step:.2f} ms/step; layout conversions "
            f"{device['layout_transpose_ms'] / per_step:.2f} ms/step"]


def _finding_lines(findings: list[dict]) -> list[str]:
    if not findings:
        return ["findings: none of the rules fired"]
    lines = ["findings:"]
    for finding in findings:
        lines += [f"  [{finding['severity']}] {finding['rule']}: {finding['evidence']}",
                  f"      -> {finding['action']}"]
    return lines


# The per-rank table's columns: (heading, key in ranks.TABLE_COLUMNS); ms per step.
RANK_COLUMNS = (("step", "step_ms"), ("data", "data_loading_ms"), ("h2d", "host_to_device_ms"),
                ("fwd", "forward_ms"), ("bwd", "backward_ms"), ("opt", "optimizer_step_ms"), ("other", "other_ms"),
                ("coll", "collective_ms"), ("wait", "waiting_ms"), ("work", "work_ms"))
SHARE_COLUMNS = (("coll%", "collective_share"), ("overlap", "overlap_share"), ("gpu%", "gpu_collective_share"))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _skew_line(label: str, skew: dict, key: str, shown) -> str:
    return f"{label:<8}" + "".join(f"{shown(skew[column][key]):>8}" for _, column in RANK_COLUMNS)


def _per_rank_lines(per_rank: dict) -> list[str]:
    """The per-rank table, its skew, and the findings across ranks."""
    lines = [f"per rank ({len(per_rank['ranks'])} traces; ms per step; coll: in collectives, wait: the part "
             "of it with nothing else running, work: step - wait):",
             f"{'rank':<8}" + "".join(f"{head:>8}" for head, _ in RANK_COLUMNS + SHARE_COLUMNS)]
    for row in per_rank["ranks"]:
        lines.append(f"{row['rank']:<8}" + "".join(f"{row[key]:>8.1f}" for _, key in RANK_COLUMNS)
                     + "".join(f"{_percent(row[key]):>8}" for _, key in SHARE_COLUMNS))
    lines.append(_skew_line("max/med", per_rank["skew"], "max_over_median",
                            lambda v: "-" if v is None else f"{v:.2f}x"))
    lines.append(_skew_line("max-min", per_rank["skew"], "max_minus_min_ms", lambda v: f"{v:.1f}"))
    if not per_rank["findings"]:
        return lines + ["findings across ranks: none (no straggler; communication small or hidden)"]
    return lines + ["findings across ranks:"] + _finding_lines(per_rank["findings"])[1:]


def format_text(doc: dict) -> str:
    """The readable form: with several ranks the per-rank table first, then one block per rank."""
    blocks = ["\n".join(_per_rank_lines(doc["per_rank"]))] if "per_rank" in doc else []
    for one in doc.get("ranks", [doc]):
        head = [f"trace: {one['trace_file']} (rank {one['rank']})",
                f"steps: {one['steps']} ({one['markers']['steps']}), {one['step_time_ms']:.2f} ms per step"]
        blocks.append("\n".join(head + _breakdown_lines(one) + _device_lines(one["device"])
                                + _finding_lines(one["findings"])))
    return "\n\n".join(blocks)


def print_analysis(paths: list[str], as_json: bool) -> None:
    doc = document(paths)
    print(json.dumps(doc, indent=2) if as_json else format_text(doc))
