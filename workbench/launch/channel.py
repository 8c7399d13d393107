"""The child's reports reach the parent through one channel: an append-only file of JSON lines.

A file, not a pipe, because the same channel must work from a fresh interpreter, a child forked by
the fork server (which inherits the server's descriptors, not the parent's), torchrun's ranks and
this process alike. Each report is one line, written with a single write and flushed, so a child
stopped mid-write leaves at most a partial last line, which the reader skips: a stopped round keeps
every report that was complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from workbench.launch.messages import MessageError, SideReport


def send(channel: str | Path, report: SideReport) -> None:
    """Append one report (one line, one write, flushed to the file)."""
    line = (json.dumps(report.to_json(), allow_nan=True) + "\n").encode()
    fd = os.open(channel, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def received(channel: str | Path) -> dict[str, SideReport]:
    """The latest complete report per side ({} when nothing arrived)."""
    path = Path(channel)
    if not path.is_file():
        return {}
    latest: dict[str, SideReport] = {}
    for line in path.read_bytes().split(b"\n"):
        try:
            report = SideReport.from_json(json.loads(line))
        except (ValueError, MessageError, TypeError, KeyError):  # a partial last line, or nothing
            continue
        latest[report.side] = report
    return latest
