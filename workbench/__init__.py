"""workbench: a profiling-driven optimization workbench for PyTorch training loops."""
import os
import re
from importlib import metadata
from pathlib import Path

# Kineto (the profiler's C++ side) logs to stderr on every capture: a harmless "gpuGetDeviceCount
# failed" error on a machine without a GPU, and with torch 2.14 two "USDT ... profiler_start/stop"
# lines per traced process, in the middle of the ladder's progress. Its levels put USDT (5) above
# ERROR, so only 6 hides both. Kineto reads the variable once, when it starts: set here, at the
# package's import, it is in every measuring process and in the fork server the workers come from.
# A user's own setting wins (KINETO_LOG_LEVEL=0 shows everything).
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

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
