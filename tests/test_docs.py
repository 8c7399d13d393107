"""The README stays true: every default it quotes for a command-line option is RunConfig's."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from workbench.config import RunConfig

README = Path(__file__).resolve().parents[1] / "README.md"
# "`--timed-steps` (default 12)", "`--min-effect`** (default 3%)"
QUOTED_DEFAULT = re.compile(r"`--([a-z-]+)`\**\s*\(default ([0-9.]+)(%?)\)")


def test_readme_defaults_are_the_config_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    quoted = QUOTED_DEFAULT.findall(README.read_text())
    assert len(quoted) >= 4, "the README no longer quotes the measurement defaults"
    for option, value, percent in quoted:
        name = option.replace("-", "_")
        if name not in defaults:
            continue  # an option of another command (e.g. compare --threshold)
        expected = float(value) / 100 if percent else float(value)
        assert float(defaults[name]) == expected, f"README says --{option} defaults to {value}{percent}"
