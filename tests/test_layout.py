"""The shape of the package: imports run one way between its blocks, no module is in an import circle,
no private name crosses a module, and the report, the trace analysis and the launchers never import
torch (a report builds, `workbench analyze` reads a trace, and a parent starts a measuring process,
without it)."""
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
# The process boundary: the parent's loop (run) starts measurements through the launchers (launch) and
# never imports the child (measure); the child imports the launchers' messages, never the parent.
ALLOWED = {
    "core": set(),
    "trace": {"core"},
    "training": {"core", "trace"},
    "launch": {"core"},
    "measure": {"core", "trace", "training", "launch"},
    "run": {"core", "trace", "training", "launch"},
    "report": {"core", "trace"},
    "experiments": {"core", "trace", "training", "launch", "measure", "run", "report"},
    "entry": {"core", "trace", "training", "launch", "measure", "run", "report", "experiments"},
}
SUBPACKAGES = ("run", "launch", "measure", "trace", "training", "report", "experiments")
ENTRY_MODULES = ("cli", "api", "__main__", "reference")  # reference: docs/commands.md from the parser


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


def test_no_module_is_in_an_import_circle():
    graph = {module_name(path): {known(m) for m in imported_modules(path)} - {None} for path in PACKAGE.rglob("*.py")}
    circles = [sorted(group) for group in strongly_connected(graph) if len(group) > 1]
    assert not circles, circles


def test_no_private_name_is_imported_from_another_module():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench"):
                found += [f"{module_name(path)} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)


MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}


def known(target: str) -> str | None:
    """The module an import reaches: `from workbench.launch import RoundSpec` reaches workbench.launch."""
    return target if target in MODULES else (target.rsplit(".", 1)[0] if target.rsplit(".", 1)[0] in MODULES else None)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components: a group of more than one module is an import circle."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)
    for node in graph:
        if node not in index:
            visit(node)
    return groups


def torch_free_modules() -> list[str]:
    names = []
    for package in ("report", "trace", "launch"):
        found = pkgutil.walk_packages([str(PACKAGE / package)], f"workbench.{package}.")
        names += [f"workbench.{package}"] + [m.name for m in found if m.name not in CAPTURE_MODULES]
    return names


def test_report_trace_and_launch_packages_never_import_torch():
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
