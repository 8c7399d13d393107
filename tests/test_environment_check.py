"""Running with an environment you already have: `make ... PY=python3`, no venv, no index."""
import subprocess
import sys
from pathlib import Path

from workbench import environment_check

ROOT = Path(__file__).resolve().parents[1]


def test_missing_modules_and_old_torch_are_named_with_the_fix():
    problems = environment_check.missing(("no_such_module_xyz", "line_profiler"))
    assert len(problems) == 1 and "no_such_module_xyz is missing" in problems[0]
    assert not environment_check.torch_version_ok("2.10.1+cu128")
    assert environment_check.torch_version_ok("2.11.0+cu130") and environment_check.torch_version_ok("3.0.0")


def test_check_env_passes_with_this_interpreter_and_creates_no_venv(tmp_path):
    done = subprocess.run(["make", "-s", "check-env", f"PY={sys.executable}", f"VENV={tmp_path / 'venv'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "environment ok" in done.stderr and not (tmp_path / "venv").exists()


def test_existing_environment_runs_the_cli_from_the_checkout(tmp_path):
    done = subprocess.run(["make", "-s", "-n", "report", f"PY={sys.executable}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert f"{sys.executable} -m workbench.cli report" in done.stdout and "pip install" not in done.stdout


def test_an_interpreter_without_torch_stops_with_one_line(tmp_path):
    fake = tmp_path / "python-without-torch"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site-packages, so no torch
    fake.chmod(0o755)
    done = subprocess.run(["make", "-s", "check-env", f"PY={fake}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "workbench: error: torch is missing" in done.stderr and "Traceback" not in done.stderr
