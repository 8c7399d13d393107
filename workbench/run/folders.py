"""A run's folders: checked before anything is written, created last, removed again if setup fails.

A rejected command leaves no empty reports/<run>/ or profiles/<run>/ behind, an existing run is
never overwritten unless asked (--resume continues it, --overwrite replaces it), and nothing is
written through reports/latest or outside the chosen reports and profiles folders.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from workbench.errors import UsageError
from workbench.names import run_folder
from workbench.results import RUN_FILE


def check(reports_dir: str, profiles_dir: str, name: str, resume: bool, overwrite: bool) -> tuple[Path, Path]:
    """The run's two folders, checked (nothing is created): (reports/<name>, profiles/<name>)."""
    run_dir = run_folder(reports_dir, name, "reports_dir")
    trace_dir = run_folder(profiles_dir, name, "profiles_dir")
    recorded = (run_dir / RUN_FILE).exists()
    if resume and not recorded:
        raise UsageError(f"resume {name!r}: no run found at {run_dir}; allowed: a run folder under {reports_dir}/")
    taken = recorded or _has_files(run_dir) or _has_files(trace_dir)
    if taken and not (resume or overwrite):
        raise UsageError(f"run_name={name!r} already exists ({run_dir}); allowed: a new name, "
                         f"--resume {name} to continue it, or --overwrite to replace it")
    return run_dir, trace_dir


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def clear(*folders: Path) -> None:
    """--overwrite: the old run goes entirely, so its stages never mix with the new ones."""
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)


class Created:
    """Folders made during setup; removed again if setup fails or is interrupted (what existed stays)."""

    def __init__(self) -> None:
        self.made: list[Path] = []

    def folder(self, path: Path, name: str) -> Path:
        missing = next((p for p in [*reversed(path.parents), path] if not p.exists()), None)
        if missing is not None:
            self.made.append(missing)
        return writable_folder(path, name)

    def __enter__(self) -> "Created":
        return self

    def __exit__(self, kind, error, trace) -> None:
        for path in reversed(self.made if kind is not None else []):
            shutil.rmtree(path, ignore_errors=True)


def writable_folder(path: Path, name: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{name}={str(path)!r} is not writable ({error.strerror}); allowed: a folder you can write to") from None
    return path
