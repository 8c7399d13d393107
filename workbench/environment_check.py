"""Is this Python environment enough for the workbench? `python -m workbench.environment_check [MODULE...]`

With no names: the core (torch >= 2.11, torchvision, numpy, matplotlib, psutil). With names:
those modules (the profiler extras for the targets that need them). One line per missing piece and
exit status 2, so `make ... PY=python3` stops before a traceback.
"""
from __future__ import annotations

import importlib
import sys

CORE = ("torch", "torchvision", "numpy", "matplotlib", "psutil")
MIN_TORCH = (2, 11)
# Which extra brings a module. The distribution is torch-workbench (PyPI's "workbench" is another
# project), installed from the checkout: install_hint says how.
EXTRA_OF = {"line_profiler": "profilers", "memory_profiler": "profilers", "torch_tb_profiler": "profilers",
            "tensorboard": "profilers"}


def install_hint(extra: str) -> str:
    """The install line for an extra: from the checkout (the distribution, torch-workbench, is not on PyPI)."""
    return f"pip install -c constraints.txt -e '.[{extra}]' (from the workbench checkout)"


def torch_version_ok(version: str) -> bool:
    parts = version.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= MIN_TORCH
    except (IndexError, ValueError):
        return False


def missing(modules: tuple[str, ...]) -> list[str]:
    """One sentence per module that cannot be imported (or torch that is too old)."""
    problems = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            extra = EXTRA_OF.get(name)
            hint = install_hint(extra) if extra else f"pip install {name}"
            problems.append(f"{name} is missing ({error}); install it: {hint}")
            continue
        if name == "torch" and not torch_version_ok(module.__version__):
            problems.append(f"torch {module.__version__} is too old; allowed: torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    names = tuple(sys.argv[1:] if argv is None else argv) or CORE
    problems = missing(names)
    for problem in problems:
        print(f"workbench: error: {problem}", file=sys.stderr)
    if not problems and not (argv or sys.argv[1:]):
        print(f"environment ok: {sys.executable}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
