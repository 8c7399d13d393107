"""Hostile and careless input: one line and the documented exit status, nothing lost, nothing written
where it does not belong, no payload run. Each case is a row; the CLI runs in this process (fast)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from workbench import results
from workbench.launch import channel, launchers, procs
from workbench.run import comparing, ladder, stage_results
from workbench.training import safe_pickle
from workbench.config import RunConfig
from workbench.training.data import SYNTHETIC_MARKER, write_synthetic_cifar
from workbench.errors import Interrupted, ResultFileError, SaveError, UsageError

TINY = ["--image-size", "8", "--batch-size", "4", "--timed-steps", "1", "--repeats", "1", "--warmup-steps", "1", "--rounds", "2",
        "--no-trace", "--device", "cpu", "--synthetic-per-batch", "8"]


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    from workbench.cli import main

    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def one_line(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("workbench: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder with tiny synthetic CIFAR-format data, as the CLI sees it."""
    monkeypatch.chdir(tmp_path)
    write_synthetic_cifar(tmp_path / "data", per_batch=8)
    return tmp_path


def fake_run(root: Path, name: str, stages=("baseline",), mode: str = "ladder", config: dict | None = None) -> Path:
    """A finished run written by hand in the documented layout (no measuring needed)."""
    run_dir = root / "reports" / name
    (run_dir / "stages").mkdir(parents=True)
    cfg = config if config is not None else {"image_size": 8, "batch_size": 4, "device": "cpu", "run_name": name}
    results.write_json_atomic(run_dir / "run.json", {"run": name, "mode": mode, "config": cfg,
                                                     "stages": list(stages), "nproc": 1})
    results.write_json_atomic(run_dir / "stages" / "00-baseline.json", {
        "schema": 1, "run": name, "stage": "baseline", "index": 0, "mode": mode, "status": "baseline",
        "reason": "", "config": cfg, "metrics": None, "applied": []})
    return run_dir


# --- 1. run names are names ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["latest", "LATEST", "../../escape", "/tmp/absolute-run", ".", "..", "a/b",
                                  "bad\x01name", "tab\tname", "-dash", ".hidden", "x" * 101])
def test_run_names_are_plain_names(work, capsys, name):
    one_line(cli(capsys, "run", f"--run-name={name}", *TINY), "run_name=", "plain run name")
    assert not (work / "reports").exists() and not (work / "profiles").exists()
    assert not Path("/tmp/absolute-run").exists()


def test_latest_is_never_written_through(work, capsys):
    run_dir = fake_run(work, "r1")
    (work / "reports" / "latest").symlink_to("r1")
    before = (run_dir / "run.json").read_bytes()
    one_line(cli(capsys, "run", "--run-name", "latest", *TINY), "'latest'")
    one_line(cli(capsys, "run", "--resume", "latest"), "'latest'")
    assert (run_dir / "run.json").read_bytes() == before


def test_an_existing_run_is_never_overwritten(work, capsys):
    run_dir = fake_run(work, "r1")
    before = files_under(work / "reports")
    one_line(cli(capsys, "run", "--run-name", "r1", *TINY), "'r1'", "already exists", "--resume", "--overwrite")
    assert files_under(work / "reports") == before
    assert json.loads((run_dir / "run.json").read_text())["run"] == "r1"


def test_overwrite_and_resume_are_the_only_ways_in(work):
    from workbench.run import folders as run_folders

    fake_run(work, "r1")
    assert run_folders.check("reports", "profiles", "r1", resume=True, overwrite=False)[0].name == "r1"
    assert run_folders.check("reports", "profiles", "r1", resume=False, overwrite=True)[0].name == "r1"
    with pytest.raises(UsageError, match="no run found"):
        run_folders.check("reports", "profiles", "r2", resume=True, overwrite=False)


def test_report_name_means_the_run_not_a_folder_here(work, capsys):
    fake_run(work, "r1")
    (work / "r1").mkdir()
    (work / "r1" / "run.json").write_text("{}")
    from workbench.cli import _run_dir

    assert _run_dir("r1", "reports") == Path("reports") / "r1"
    (work / "reports" / "latest").symlink_to("r1")
    assert _run_dir("latest", "reports") == Path("reports") / "latest"


# --- 2. resume resumes the recorded run --------------------------------------------------------

@pytest.mark.parametrize("extra, needle", [
    (["--stages", "amp"], "--stages 'amp' contradicts"),
    (["--ablation"], "--ablation contradicts"),
    (["--nproc", "2"], "--nproc 2 contradicts"),
    (["--image-size", "16"], "drop --image-size"),
    (["--overwrite"], "contradict"),
])
def test_resume_refuses_contradictions(work, capsys, extra, needle):
    fake_run(work, "r1", stages=("baseline",))
    one_line(cli(capsys, "run", "--resume", "r1", *extra), needle)


def test_resume_takes_stages_and_mode_from_the_run(work, capsys, monkeypatch):
    fake_run(work, "r1", stages=("baseline", "amp"), mode="ablation")
    seen = {}

    def fake_start(cfg, mode, **kwargs):
        seen.update(mode=mode, stages=kwargs["stages"], resume=kwargs["resume"], image_size=cfg.image_size)
        raise UsageError("stop here")

    monkeypatch.setattr("workbench.run.session.start", fake_start)
    one_line(cli(capsys, "run", "--resume", "r1"), "stop here")
    assert seen == {"mode": "ablation", "stages": ["baseline", "amp"], "resume": True, "image_size": 8}


@pytest.mark.parametrize("content, needle", [
    ('{"run": "r1", "config": {"image_si', "not valid JSON"),
    ("null", "holds NoneType"),
    ('{"config": {"image_size": 8, "turbo": true}}', "unknown config key 'turbo'"),
    ('{"config": {"image_size": "big"}}', "image_size='big' is not of type int"),
    ('{"config": {"image_size": -3}}', "config is invalid"),
    ('{"config": null}', "'config'"),
])
def test_damaged_run_file_is_one_line(work, capsys, content, needle):
    run_dir = fake_run(work, "r1")
    (run_dir / "run.json").write_text(content)
    one_line(cli(capsys, "run", "--resume", "r1"), "run.json", needle)
    one_line(cli(capsys, "report", "r1"), "run.json", needle)


@pytest.mark.parametrize("content", ['{"stage": "baseline", "sta', "null", "[]", "{}", '{"stage": 3, "status": "x", "index": 0}'])
def test_damaged_stage_file_is_one_line_in_report_and_compare(work, capsys, content):
    fake_run(work, "good")
    run_dir = fake_run(work, "bad")
    (run_dir / "stages" / "00-baseline.json").write_text(content)
    one_line(cli(capsys, "report", "bad"), "00-baseline.json")
    assert cli(capsys, "compare", "good", "bad").returncode == 3  # a corrupt result: not a regression, not bad input


def test_resume_sets_a_damaged_stage_file_aside(tmp_path):
    path = results.stage_result_path(tmp_path, "baseline")
    path.parent.mkdir(parents=True)
    path.write_text('{"stage": "base')
    logged = []
    session = SimpleNamespace(run_dir=tmp_path, resume=True, log=logged.append, environment={})
    assert comparing.previous(session, "baseline", RunConfig(), []) is None
    assert not path.exists() and path.with_name(path.name + ".corrupt").exists()
    assert "measuring baseline again" in logged[0]


# --- 3. faults keep what was measured -------------------------------------------------------

def test_failed_save_keeps_the_result_and_says_where(tmp_path, monkeypatch):
    def disk_full(path, payload):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(comparing, "write_json_atomic", disk_full)
    session = SimpleNamespace(run_dir=tmp_path, log=lambda message: None)
    result = {"index": 0, "stage": "baseline", "status": "baseline", "reason": "", "metrics": None}
    with pytest.raises(SaveError) as caught:
        comparing.save(session, result)
    assert caught.value.result is result and caught.value.exit_code == 74
    assert "stages/baseline.json" in str(caught.value) and "No space left" in str(caught.value)


def test_failed_save_exits_74_with_the_result_on_stdout(work, capsys, monkeypatch):
    from workbench import cli as cli_module

    result = {"stage": "baseline", "status": "baseline", "metrics": {"final_loss": 1.5}}
    error = SaveError(work / "reports/r/stages/00-baseline.json", OSError(errno.EROFS, "Read-only file system"), result)

    def failing_ladder(session, names):
        raise error

    monkeypatch.setattr("workbench.run.ladder.run_ladder", failing_ladder)
    from workbench.launch.nodes import Nodes

    monkeypatch.setattr("workbench.run.session.start",
                        lambda cfg, mode, **kw: SimpleNamespace(run_dir=work / "r", nodes=Nodes()))
    proc = cli(capsys, "run", *TINY)
    one_line(proc, "Read-only file system", "00-baseline.json", code=74)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result


def test_write_json_is_atomic_and_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        results.write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    with pytest.raises(TypeError):  # a failed write keeps the old file and leaves no temp file
        results.write_json_atomic(tmp_path / "a.json", {1j: 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_ctrl_c_while_writing_leaves_no_temp_files(tmp_path, monkeypatch):
    from workbench.report import plots
    from workbench.report.table import write_csv

    fig, _ = plots.new_figure()
    def half_then_ctrl_c(self, target, **kw):  # a path or an open file, as matplotlib allows
        target.write(b"half") if hasattr(target, "write") else Path(target).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(fig), "savefig", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        plots.save(fig, tmp_path / "chart.png")
    (tmp_path / "r.csv").write_text("old\n")
    monkeypatch.setattr("csv.DictWriter.writeheader", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_csv([], tmp_path / "r.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
    assert (tmp_path / "r.csv").read_text() == "old\n"


def test_sigterm_anywhere_is_one_line_and_143(work, capsys, monkeypatch):
    def slow_report(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    monkeypatch.setattr("workbench.cli.cmd_report", slow_report)
    proc = cli(capsys, "report")
    assert proc.returncode == 143 and "Traceback" not in proc.stderr and "interrupted (SIGTERM)" in proc.stderr
    assert signal.getsignal(signal.SIGTERM) is not procs._raise_interrupted  # handlers restored


def test_a_stopped_run_stops_the_workers_whole_group(tmp_path, monkeypatch):
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "open('grandchild.pid', 'w').write(str(p.pid))\n"
              "time.sleep(60)\n")
    monkeypatch.chdir(tmp_path)
    previous = procs.install_signal_handlers()
    try:
        timer = __import__("threading").Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        with pytest.raises(Interrupted) as caught:
            procs.run_worker([sys.executable, "-c", script], dict(os.environ), 60)
    finally:
        procs.restore_signal_handlers(previous)
    assert caught.value.exit_code == 143
    pid = int((tmp_path / "grandchild.pid").read_text())
    time.sleep(0.3)
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "zombie" in status.read_text()


def test_a_worker_stopped_after_its_timed_steps_keeps_them():
    from workbench.measure.stopping import StoppableProgress, TraceInterrupted, install_stop_handler

    progress = StoppableProgress("x", open(os.devnull, "w"))
    previous = procs.install_signal_handlers()
    try:
        install_stop_handler(progress)
        progress.update("repeat 1/2", 1, 1)
        with pytest.raises(KeyboardInterrupt):  # mid-timing: stop at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        progress.update("repeat 2/2", 1, 1)
        with pytest.raises(TraceInterrupted):  # an Exception: executor keeps the timed figures
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        with pytest.raises(TraceInterrupted):
            progress.update("trace", 1, None)
    finally:
        procs.restore_signal_handlers(previous)


# --- 4. untrusted files are not code ----------------------------------------------------------

class Payload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _pickle(path: Path, payload) -> None:
    path.write_bytes(pickle.dumps(payload, protocol=2))


@pytest.mark.parametrize("file, payload, needle", [
    ("batches.meta", lambda s: {"label_names": Payload(s)}, "posix.system"),
    ("data_batch_1", lambda s: {"data": Payload(s), "labels": [0]}, "posix.system"),
    ("data_batch_1", lambda s: [1, 2, 3], "not a CIFAR-format batch"),
    ("data_batch_1", lambda s: {"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "one integer per image"),
    ("batches.meta", lambda s: {"label_names": ["a", "b"]}, "batches.meta names 2 classes"),
    ("batches.meta", lambda s: {"label_names": []}, "no list of class names"),
    ("data_batch_2", lambda s: None, "corrupt"),
])
def test_untrusted_cifar_files_are_data_not_code(work, capsys, file, payload, needle):
    sentinel = work / "pwned"
    target = work / "data" / "cifar-10-batches-py" / file
    content = payload(sentinel)
    if content is None:
        target.write_bytes(b"\x80\x02")  # truncated
    else:
        _pickle(target, content)
    one_line(cli(capsys, "run", "--run-name", "r", *TINY), "cifar-10-batches-py", needle)
    assert not sentinel.exists()
    assert not (work / "reports").exists() and not (work / "profiles").exists()


def test_restricted_unpickler_reads_the_real_format(tmp_path):
    folder = write_synthetic_cifar(tmp_path, per_batch=4)
    batch = safe_pickle.load(folder / "data_batch_1")
    assert batch["data"].shape == (4, 3072) and len(batch["labels"]) == 4
    assert safe_pickle.load(folder / "batches.meta")["label_names"][0] == "airplane"
    _pickle(tmp_path / "codec", {"x": b"\x00\xff"})
    assert safe_pickle.load(tmp_path / "codec") == {"x": b"\x00\xff"}


def test_a_stray_module_in_the_working_folder_is_not_imported(tmp_path):
    (tmp_path / "typing_extensions.py").write_text("open('imported', 'w').write('yes')\n")
    command = [sys.executable, "-c", "import typing_extensions"]
    subprocess.run(command, cwd=tmp_path, env=dict(os.environ), capture_output=True)
    assert (tmp_path / "imported").exists()  # the hazard is real without the safe path
    (tmp_path / "imported").unlink()
    subprocess.run(command, cwd=tmp_path, env=procs.safe_environment({**os.environ, "PYTHONPATH": ".:"}),
                   capture_output=True)
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("model", ['x"""\nimport os; os.system("touch pwned")\n"""', "a\\\nb", "é\u2028'\""])
def test_generated_script_escapes_what_it_embeds(tmp_path, model):
    import ast

    from workbench.report.build import render_script
    from workbench.report.table import RunView

    view = RunView(tmp_path, {"run": "r", "config": {"model": model}}, [], [], [])
    tree = ast.parse(render_script(view))
    values = {node.targets[0].id: node.value for node in tree.body if isinstance(node, ast.Assign)
              and isinstance(node.targets[0], ast.Name)}
    assert ast.literal_eval(values["MODEL_NAME"]) == model
    assert '"""' not in ast.get_docstring(tree)


# --- 5. one line for bad files, environment values and resources -------------------------------

@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf", "1e999"])
def test_bad_stage_timeout_is_one_line(work, capsys, monkeypatch, value):
    monkeypatch.setenv("WORKBENCH_STAGE_TIMEOUT_S", value)
    one_line(cli(capsys, "run", *TINY), "WORKBENCH_STAGE_TIMEOUT_S", repr(value), "positive number")
    assert not (work / "reports").exists()


@pytest.mark.parametrize("value", ["yes", "2", "off", "-1"])
def test_bad_fork_server_switch_is_one_line(work, capsys, monkeypatch, value):
    monkeypatch.setenv("WORKBENCH_FORK_SERVER", value)
    one_line(cli(capsys, "run", *TINY), "WORKBENCH_FORK_SERVER", repr(value), "allowed: 1")
    assert not (work / "reports").exists()


def test_fork_server_switch_accepts_0_1_and_unset():
    assert launchers.fork_server_wanted({}) and launchers.fork_server_wanted({"WORKBENCH_FORK_SERVER": " 1 "})
    assert not launchers.fork_server_wanted({"WORKBENCH_FORK_SERVER": "0"})
    assert launchers.fork_server_mode({"WORKBENCH_FORK_SERVER": "CUDA"}) == "cuda"


def test_stage_timeout_accepts_seconds():
    assert procs.stage_timeout_s({"WORKBENCH_STAGE_TIMEOUT_S": " 90.5 "}) == 90.5
    assert procs.stage_timeout_s({}) == procs.DEFAULT_TIMEOUT_S


@pytest.mark.parametrize("args, needle", [
    (["--stages", ""], "names no stage"),
    (["--stages", " , "], "names no stage"),
    (["--nproc", "64"], "nproc=64"),
    (["--nproc", "0"], "nproc=0"),
    (["--data-dir", "afile"], "data_dir='afile'"),
    (["--data-dir", "afile/sub", "--data", "synthetic"], "cannot hold the synthetic data"),
])
def test_bad_values_leave_no_folders(work, capsys, args, needle):
    (work / "afile").write_text("not a folder")
    one_line(cli(capsys, "run", *TINY, *args), needle)
    assert not (work / "reports").exists() and not (work / "profiles").exists()


def test_nproc_is_checked_against_memory_too():
    from workbench.run.session import check_host_room

    with pytest.raises(UsageError, match="nproc=8 needs about 8 GiB"):
        check_host_room(8, cores=16, memory_mb=4096)
    with pytest.raises(UsageError, match="allowed: 1..2"):
        check_host_room(4, cores=2, memory_mb=None)
    check_host_room(2, cores=2, memory_mb=4096)


@pytest.mark.parametrize("body, needle", [
    ("def build(num_classes):\n    return {'not': 'a model'}\n", "returned dict"),
    ("def build(num_classes):\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
])
def test_a_bad_model_factory_is_one_line(work, capsys, body, needle):
    name = f"factory_{abs(hash(body))}"
    (work / f"{name}.py").write_text(body)
    one_line(cli(capsys, "run", "--model", f"{name}:build", *TINY), f"model='{name}:build'", needle)
    assert not (work / "reports").exists()


def test_report_into_a_read_only_folder_is_one_line(work, capsys, monkeypatch):
    fake_run(work, "r1")

    def read_only(run_dir):
        raise PermissionError(errno.EACCES, "Permission denied", str(run_dir / "optimization_results.csv"))

    monkeypatch.setattr("workbench.report.build.build_report", read_only)
    one_line(cli(capsys, "report", "r1"), "Permission denied", "optimization_results.csv")


def test_a_nan_baseline_is_not_a_reference():
    from tests.run.test_judge import comparison, session

    broken = comparison(0.1, 0.1, loss=float("nan"))
    for report in broken.b_rounds:
        report.metrics["loss_finite"] = False
    result = stage_results.reference(session(), broken, 0.0)
    assert result["status"] == "failed" and "not finite" in result["reason"]
    assert stage_results.reference(session(), comparison(0.1, 0.1), 0.0)["status"] == "baseline"


def test_a_single_class_dataset_is_warned_about(tmp_path):
    from PIL import Image

    from workbench.training.data import load_data

    (tmp_path / "only").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / "only" / f"{i}.png")
    said = []
    spec = load_data(f"imagefolder:{tmp_path}", "data", 8, 8, 0, log=said.append)
    assert spec.num_classes == 1 and any("only 1 class" in line for line in said)


def test_result_file_errors_name_the_file(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2")
    with pytest.raises(ResultFileError) as caught:
        results.read_json(tmp_path / "x.json")
    assert caught.value.path == tmp_path / "x.json" and "not valid JSON" in caught.value.reason
    assert isinstance(caught.value, UsageError)


def test_interrupted_setup_removes_only_the_folders_it_made(tmp_path):
    from workbench.run.folders import Created

    (tmp_path / "reports").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with Created() as created:
            created.folder(tmp_path / "reports" / "r1", "reports_dir")
            created.folder(tmp_path / "profiles" / "r1", "profiles_dir")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"] and not any((tmp_path / "reports").iterdir())


def test_a_damaged_partial_report_does_not_hide_the_interrupt(tmp_path):
    (tmp_path / "reports.jsonl").write_text('{"kind": "side_report", "status": "meas')
    assert channel.received(tmp_path / "reports.jsonl") == {}
