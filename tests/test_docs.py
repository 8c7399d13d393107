"""The README and docs/ stay true: defaults they quote are RunConfig's, every relative link resolves, and
every `workbench ...` command, `make` target and `--flag` they show exists (from the parser and the
Makefile), and docs/commands.md is what the parser generates today."""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from workbench.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# "`--timed-steps` (default 12)", "`--min-effect`** (default 3%)"
QUOTED_DEFAULT = re.compile(r"`--([a-z-]+)`\**\s*\(default ([0-9.]+)(%?)\)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)
SPAN = re.compile(r"`([^`\n]+)`")
# Flags of other programs the pages show: torchrun's, SLURM's, the examples' and the generated script's.
FOREIGN_FLAGS = {"local-addr", "nodes", "ntasks-per-node", "gpus-per-node", "exclusive", "tiny", "out", "port",
                 "max-steps", "epochs", "help", "json", "no-wait"}


def code_of(text: str) -> str:
    """Everything a page shows as code: fenced blocks and inline spans."""
    return "\n".join(FENCE.findall(text) + SPAN.findall(FENCE.sub("", text)))


def parser_facts() -> tuple[set[str], set[str]]:
    from workbench.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {option[2:] for sub in action.choices.values() for a in sub._actions for option in a.option_strings
             if option.startswith("--")}
    return set(action.choices), flags


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    quick = text.split("## Quick start", 1)[1]
    first_block = FENCE.search(quick).group(0)
    assert "make ladder" in first_block and "make test" in first_block


def test_docs_quote_the_config_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    quoted = [q for page in PAGES for q in QUOTED_DEFAULT.findall(page.read_text())]
    assert len(quoted) >= 4, "the docs no longer quote the measurement defaults"
    for option, value, percent in quoted:
        name = option.replace("-", "_")
        if name not in defaults:
            continue  # an option of another command (e.g. compare --threshold)
        expected = float(value) / 100 if percent else float(value)
        assert float(defaults[name]) == expected, f"the docs say --{option} defaults to {value}{percent}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            headings = {slug(h) for h in re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)}
            assert anchor in headings, f"{page.name} links to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_targets_and_flags_shown_exist(page):
    commands, flags = parser_facts()
    code = code_of(page.read_text())
    for command in re.findall(r"(?<![\w./-])workbench ([a-z][a-z-]*)", code):
        assert command in commands, f"{page.name} shows `workbench {command}`, which the parser lacks"
    for target in re.findall(r"(?<![\w-])make ([a-z][a-z-]*)", code):
        assert target in make_targets(), f"{page.name} shows `make {target}`, which the Makefile lacks"
    for flag in re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*[a-z0-9])", code):
        assert flag in flags or flag in FOREIGN_FLAGS, f"{page.name} names --{flag}, which no command has"


def test_the_checker_catches_a_command_the_parser_lacks():
    commands, flags = parser_facts()
    assert "run" in commands and "memory-budget" in flags
    shown = code_of("Try `workbench optimise --turbo` and `make rocket`.")
    assert "optimise" not in commands and "turbo" not in flags and "rocket" not in make_targets()
    assert re.findall(r"(?<![\w./-])workbench ([a-z][a-z-]*)", shown) == ["optimise"]


def test_command_reference_is_generated_from_the_parser():
    from workbench.reference import render

    assert (ROOT / "docs" / "commands.md").read_text() == render(), "docs/commands.md is stale: run `make docs`"
