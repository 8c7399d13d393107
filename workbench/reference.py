"""The command reference (docs/commands.md), written from the parser itself so it cannot drift.

`python -m workbench.reference > docs/commands.md` (or `make docs`) regenerates it; the suite checks the
committed page against this output.
"""
from __future__ import annotations

import argparse

from workbench.cli import build_parser

HEADER = """# Command reference

Generated from the command line's own parser by `make docs` (`python -m workbench.reference`): every
command and every option, with its help. Every `RunConfig` field is an option of `run` and `experiment`.
"""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the parser's order."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.dest}`"
        metavar = "" if action.nargs == 0 else f" {_metavar(action)}"
        text = (action.help or "").replace("%%", "%").replace("|", "\\|").replace("\n", " ")
        if action.default not in (None, argparse.SUPPRESS, False) and action.nargs != 0 and "default" not in text:
            text += f" (default {action.default})"
        rows.append(f"| {names}{metavar if action.option_strings else ''} | {text} |")
    return rows


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices:
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    return "VALUE"


def render() -> str:
    parser = build_parser()
    parts = [HEADER]
    for name, text, sub in _subcommands(parser):
        parts += [f"## workbench {name}", "", text[:1].upper() + text[1:] + ".", "",
                  "| option | what it does |", "| --- | --- |", *_option_rows(sub), ""]
    return "\n".join(line for line in parts if line is not None).replace("\n\n\n", "\n\n")


if __name__ == "__main__":
    print(render(), end="")
