"""The shape of the package: imports run one way between its blocks, and the report and the trace
analysis never import torch (a report builds, and `workbench analyze` reads a trace, without it)."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import workbench

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"
# The modules of workbench.trace that capture a trace and so need torch; nothing else there may.
CAPTURE_MODULES = {"workbench.trace.capture", "workbench.trace.instrument", "workbench.trace.lightning"}
# Each block and the blocks it may import: leaf modules (core) at the bottom, entry points on top.
ALLOWED = {
    "core": set(),
    "trace": {"core"},
    "training": {"core", "trace"},
    "run": {"core", "trace", "training"},
    "report": {"core", "trace"},
    "experiments": {"core", "trace", "training", "run", "report"},
    "entry": {"core", "trace", "training", "run", "report", "experiments"},
}
SUBPACKAGES = ("run", "trace", "training", "report", "experiments")
ENTRY_MODULES = ("cli", "api", "__main__")


def block(module: str) -> str:
    """workbench.run.ladder -> run; workbench.cli -> entry; workbench.results -> core."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    return "entry" if len(parts) > 1 and parts[1] in ENTRY_MODULES else "core"


def imported_modules(path: Path) -> set[str]:
    """Every workbench module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("workbench"):
            is_package = node.module == "workbench" or node.module.count(".") == 1 and block(node.module) != "core"
            found |= {f"{node.module}.{a.name}" for a in node.names} if is_package else {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("workbench")}
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_imports_run_one_way_between_blocks():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imported_modules(path):
            if block(target) != block(source) and block(target) not in ALLOWED[block(source)]:
                wrong.append(f"{source} imports {target} ({block(source)} -> {block(target)})")
    assert not wrong, "\n".join(wrong)


def torch_free_modules() -> list[str]:
    names = []
    for package in ("report", "trace"):
        found = pkgutil.walk_packages([str(PACKAGE / package)], f"workbench.{package}.")
        names += [f"workbench.{package}"] + [m.name for m in found if m.name not in CAPTURE_MODULES]
    return names


def test_report_and_trace_packages_never_import_torch():
    modules = torch_free_modules()
    assert "workbench.report.build" in modules and "workbench.trace.analyze" in modules
    code = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "sys.exit(f'torch was imported: {loaded[:3]}' if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_module_imports():
    """A module moved without its imports fixed fails here, not in the middle of a run."""
    skip = {"workbench.__main__", "workbench.trace.lightning"}  # runs the CLI; needs the optional extra
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if info.name not in skip:
            __import__(info.name)
