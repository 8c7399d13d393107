"""Python-level views: line_profiler names real lines of the loop and the data path; memory over time."""
from __future__ import annotations

from workbench.measure import pyprofile
from workbench.config import RunConfig
from workbench.training.data import write_synthetic_cifar
from workbench.measure.executor import build


def test_line_and_memory_profiles_name_real_lines(tmp_path):
    write_synthetic_cifar(tmp_path / "data", per_batch=32)
    cfg = RunConfig(image_size=16, batch_size=8, data="synthetic", data_dir=str(tmp_path / "data"), device="cpu")
    built = build(cfg, log=lambda message: None)
    text = pyprofile.profile_lines(built, tmp_path / "out", steps=3).read_text()
    assert "step.py:" in text and "self.scaler.scale(loss).backward()" in text
    assert "cifar.py:" in text  # the dataset's item loading is profiled too
    shares = [float(line.split("%")[0]) for line in text.splitlines()[3:] if "%" in line.split()[0]]
    assert shares and all(0 <= share <= 100.5 for share in shares)
    functions = pyprofile.profile_functions(built, tmp_path / "out", steps=3).read_text()
    assert "by cumulative time" in functions and "by self time" in functions
    assert "step.py" in functions and "_forward_backward" in functions  # the step, by function
    csv_path, png = pyprofile.profile_memory(built, tmp_path / "out", steps=3)
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "elapsed_s,rss_mib" and len(rows) > 2
    assert png.stat().st_size > 5000


def test_top_lines_rank_by_time_with_shares():
    rows = [{"file": "a.py", "line": 1, "function": "f", "hits": 1, "time_ms": 5.0, "code": "x"},
            {"file": "a.py", "line": 2, "function": "f", "hits": 2, "time_ms": 15.0, "code": "y"}]
    top = pyprofile.top_lines(rows, step_total_ms=20.0, count=1)
    assert [(row["line"], row["share"]) for row in top] == [(2, 0.75)]


def test_function_view_ranks_by_cumulative_and_self_time(tmp_path):
    import time

    from workbench.trace.callprofile import function_profile

    def outer():
        inner()
        time.sleep(0.01)

    def inner():
        time.sleep(0.03)

    with function_profile(tmp_path / "f.txt", "two functions"):
        outer()
    text = (tmp_path / "f.txt").read_text()
    cumulative, own = text.split("by self time")
    # "share cum_s self_s calls  function  <- callers", in cumulative order
    rows = [line.split()[4:] for line in cumulative.splitlines() if "  <- " in line]
    where = {row[0].split(":")[-1].split("(")[-1].rstrip(")"): i for i, row in enumerate(rows)
             if row[0].startswith("test_pyprofile.py:")}
    assert where["outer"] < where["inner"]
    assert rows[where["inner"]][1] == "<-" and rows[where["inner"]][2].endswith("(outer)")  # its caller is named
    assert own.index("time.sleep") < own.index("(outer)")  # the sleeping builtin owns the self time
