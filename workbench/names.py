"""Run names and run folders: a run name is a plain name, and a run folder is never written through
a link or outside the chosen reports and profiles folders."""
from __future__ import annotations

import re
from pathlib import Path

from workbench.errors import UsageError
from workbench.results import LATEST_FILE, LATEST_LINK

# Names the tool manages itself: reports/latest (a link) and reports/LATEST (its fallback file).
RESERVED = (LATEST_LINK, LATEST_FILE)
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
ALLOWED = f"letters, digits and . _ + - (up to 100, starting with a letter or digit), not {LATEST_LINK!r}"


def check_run_name(name: str) -> str:
    """The name itself, or a one-line UsageError: no separators, no '.'/'..', no control characters."""
    if not PLAIN_NAME.fullmatch(name or "") or name in RESERVED:
        raise UsageError(f"run_name={name!r} is not a plain run name; allowed: {ALLOWED}")
    return name


def run_folder(root: str | Path, name: str, what: str = "reports_dir") -> Path:
    """root/name, checked to be a real folder (or nothing yet) directly inside root."""
    folder = Path(root) / check_run_name(name)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UsageError(f"{what}: {str(folder)!r} is a link or a file, not a run folder; "
                         "allowed: a run name whose folder the workbench created")
    return folder


def is_run_name(text: str) -> bool:
    return bool(PLAIN_NAME.fullmatch(text)) and text not in RESERVED
