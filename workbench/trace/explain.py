"""`workbench analyze PATH...`: any torch.profiler trace (or a folder of them, one per rank) ->
breakdown, findings with their evidence, and the markers the shares rest on.

The JSON document is the run's trace_summary.json plus "findings"; with several traces, the first
rank's document carries the others under "ranks". No torch import: it reads files only.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

from workbench.trace import analyze, diagnose
from workbench.errors import UsageError
from workbench.results import TRACE_GLOBS

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


def analyze_file(path: Path) -> dict:
    """summary + findings for one trace; a bad file is a UsageError naming it."""
    try:
        trace = analyze.load_trace(path)
        if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
            raise analyze.TraceFormatError("no traceEvents list")
        summary = analyze.analyze_loaded(trace, path)[0]
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError, ValueError, KeyError,
            TypeError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UsageError(f"{str(path)!r} is not a readable torch.profiler trace ({reason}); allowed: {ALLOWED}") from None
    return {**summary, "findings": diagnose.diagnose(summary, context_of(trace, summary))}


def document(paths: list[str]) -> dict:
    """One JSON-ready document: the lowest rank's analysis, and every rank's under "ranks" when several."""
    docs = sorted((analyze_file(path) for path in trace_files(paths)), key=lambda d: (d["rank"], d["trace_file"]))
    if len(docs) == 1:
        return docs[0]
    return {**docs[0], "ranks": docs}


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


def format_text(doc: dict) -> str:
    """The readable form: one block per rank."""
    blocks = []
    for one in doc.get("ranks", [doc]):
        head = [f"trace: {one['trace_file']} (rank {one['rank']})",
                f"steps: {one['steps']} ({one['markers']['steps']}), {one['step_time_ms']:.2f} ms per step"]
        blocks.append("\n".join(head + _breakdown_lines(one) + _device_lines(one["device"])
                                + _finding_lines(one["findings"])))
    return "\n\n".join(blocks)


def print_analysis(paths: list[str], as_json: bool) -> None:
    doc = document(paths)
    print(json.dumps(doc, indent=2) if as_json else format_text(doc))
