"""Bad input gets one clear line naming the value and what is allowed, exit status 2, no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.training.data import write_synthetic_cifar

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def run_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI's main() in this process (fast: torch is imported once), shaped like a subprocess."""
    from workbench.cli import main

    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("workbench: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("args, needles", [
    (["--stages", "turbo"], ["'turbo'", "baseline", "compile"]),
    (["--image-size", "0"], ["image_size=0", "at least 1"]),
    (["--batch-size", "-4"], ["batch_size=-4", "at least 1"]),
    (["--batch-size", "32", "--micro-batch-size", "5"], ["batch_size=32", "micro_batch_size=5", "1, 2, 4, 8, 16, 32"]),
    (["--precision", "fp16", "--device", "cpu"], ["precision='fp16'", "fp32, bf16"]),
    (["--precision", "fp8"], ["precision='fp8'", "fp32, bf16, fp16"]),
    (["--offload-optimizer", "--device", "cpu"], ["offload_optimizer=True", "on a CUDA device"]),
    (["--offload-optimizer", "--sharding", "zero1"], ["offload_optimizer=True", "sharding='zero1'", "allowed"]),
    (["--compile", "fast"], ["compile='fast'", "max-autotune"]),
    (["--batch-size", "abc"], ["--batch-size", "'abc'"]),
    (["--data", "imagefolder:/nonexistent/images"], ["/nonexistent/images", "one sub-folder per class"]),
    (["--resume", "no-such-run"], ["no-such-run"]),
])
def test_bad_run_arguments(tmp_path, monkeypatch, capsys, args, needles):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_in_process(capsys, "run", *args), *needles)


def test_bad_input_in_a_fresh_process_has_no_traceback(tmp_path):
    assert_one_line_error(run_cli("run", "--micro-batch-size", "5", cwd=tmp_path), "micro_batch_size=5")


def test_unknown_command_and_option(capsys):
    assert_one_line_error(run_in_process(capsys, "fly"), "fly")
    assert_one_line_error(run_in_process(capsys, "run", "--turbo"), "--turbo")


def test_corrupt_data_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = write_synthetic_cifar(tmp_path / "data", per_batch=20)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    proc = run_in_process(capsys, "run", "--data", "synthetic", "--data-dir", str(tmp_path / "data"))
    assert_one_line_error(proc, "cifar-10-batches-py", "corrupt")


def test_missing_real_cifar_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("workbench.training.data._try_download", lambda data_dir: False)  # offline, even with a network
    proc = run_in_process(capsys, "run", "--data", "cifar10", "--data-dir", str(tmp_path / "empty"))
    assert_one_line_error(proc, "data=cifar10", "--data synthetic")


def test_unwritable_output_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_synthetic_cifar(tmp_path / "data", per_batch=20)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    proc = run_in_process(capsys, "run", "--data", "synthetic", "--data-dir", str(tmp_path / "data"),
                          "--reports-dir", str(blocker / "reports"))
    assert_one_line_error(proc, "reports_dir=", "not writable")


def test_a_refused_reports_folder_writes_no_data(tmp_path, monkeypatch, capsys):
    """Everything is checked before anything is written: the synthetic data is not written first."""
    monkeypatch.chdir(tmp_path)
    proc = run_in_process(capsys, "run", "--reports-dir", "/proc/forbidden")
    assert_one_line_error(proc, "reports_dir=", "/proc/forbidden")
    assert not (tmp_path / "data").exists() and list(tmp_path.iterdir()) == []


def test_report_of_missing_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_in_process(capsys, "report", "ghost"), "'ghost'")


def test_stages_lists_every_stage(capsys):
    proc = run_in_process(capsys, "stages")
    assert proc.returncode == 0
    for name in ("baseline", "dataloader", "amp", "channels_last", "fused_optimizer", "accumulation", "checkpointing", "compile"):
        assert name in proc.stdout


def test_version_comes_from_the_package_metadata(capsys):
    from importlib import metadata

    from workbench.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    from workbench import DISTRIBUTION

    assert DISTRIBUTION == "torch-workbench"  # PyPI's "workbench" is another project
    assert capsys.readouterr().out.strip() == f"workbench {metadata.version(DISTRIBUTION)}"
