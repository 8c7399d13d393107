"""A stand-in for workbench.measure.entry in the launcher tests: the same three functions, no torch."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from workbench.launch import RoundSpec, SideReport, channel


def run_request(path: str, objects: dict | None = None) -> int:
    request = RoundSpec.from_json(json.loads(Path(path).read_text()))
    key = request.order[0]
    if key == "crash":
        os._exit(3)
    if key == "sleep":
        time.sleep(600)
    if key == "raise":
        raise ValueError("raised in the child")
    if os.environ.get("RANK", "0") != "0":
        return 0
    for key in request.order:
        metrics = {"order": list(request.order), "stage": request.sides[key].stage}
        notes = {"world_size": os.environ["WORLD_SIZE"]} if "WORLD_SIZE" in os.environ else {}
        channel.send(request.channel, SideReport(key, "measured", "timed", metrics, notes=notes))
        channel.send(request.channel, SideReport(key, "measured", "final", metrics, notes=notes))
    return 0


def main(path: str) -> int:
    return run_request(path)


def preload(path: str) -> None:
    """Nothing to decode here."""
