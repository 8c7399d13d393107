"""workbench: a profiling-driven optimization workbench for PyTorch training loops."""
import os
import re
from importlib import metadata
from pathlib import Path

# Kineto logs a harmless "gpuGetDeviceCount failed" error on every capture on a machine without a
# GPU; keep the terminal for our own progress lines (a user's own setting wins).
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

# The distribution's name (pyproject.toml): PyPI's "workbench" is another project.
DISTRIBUTION = "torch-workbench"


def _version() -> str:
    """The installed distribution's version; from a plain checkout on PYTHONPATH (`make PY=...`), the
    version pyproject.toml declares, so the number is written in one place only."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "unknown"


__version__ = _version()
