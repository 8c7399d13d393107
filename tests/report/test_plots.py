"""Plot helpers and the dashboard: files exist, are real PNGs, and are not blank."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from workbench.report import plots
from workbench.report.table import load_view

RUNS = Path(__file__).parents[1] / "fixtures" / "runs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_nontrivial_png(path: Path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > min_bytes
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05  # something was drawn, not a blank canvas


def test_bar_chart_with_intervals_reference_and_missing_values(tmp_path):
    fig, ax = plots.new_figure()
    plots.bar_chart(ax, ["baseline", "workers=2", "workers=4", "failed one"], [100.0, 150.0, 140.0, None],
                    errors=[(95.0, 105.0), (140.0, 160.0), None, None], colors=["#4C72B0"] * 4,
                    ylabel="samples/s", title="Throughput by workers", reference=100.0,
                    missing_label="failed")
    assert ax.get_title() == "Throughput by workers" and ax.get_ylabel() == "samples/s"
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "failed one"
    assert_nontrivial_png(plots.save(fig, tmp_path / "bars.png"))


def test_stacked_bars_and_line_chart(tmp_path):
    fig, (left, right) = plots.new_figure(1, 2, size=(12, 5))
    parts = {"weights": [40, 40, 40], "activations": [500, 260, 130]}
    plots.stacked_bars(left, ["STD", "MP", "GA256-64"], parts, ylabel="MiB", title="Memory breakdown",
                       totals=["540 MiB", "300 MiB", None])
    plots.line_chart(right, ["baseline", "dataloader", "compile"], [1.0, 1.2, 1.5],
                     errors=[None, (1.1, 1.3), None], ylabel="speedup (x)", title="Cumulative",
                     reference=1.0, reference_label="1x")
    assert len(left.patches) == 6
    assert_nontrivial_png(plots.save(fig, tmp_path / "stacked.png"))


def test_long_labels_are_rotated():
    fig, ax = plots.new_figure()
    labels = ["baseline", "dataloader", "amp", "channels_last", "accumulation", "checkpointing", "compile"]
    plots.bar_chart(ax, labels, list(range(1, 8)))
    assert ax.get_xticklabels()[0].get_rotation() == pytest.approx(30)


@pytest.mark.parametrize("run", ["cpu-ladder-20251124", "baseline-only"])
def test_dashboard_is_a_nontrivial_png(tmp_path, run):
    path = plots.dashboard(load_view(RUNS / run).records, tmp_path / "dashboard.png")
    assert_nontrivial_png(path, min_bytes=50_000)
    assert matplotlib.image.imread(path).shape[1] >= 1500  # wide enough for five readable panels


def test_save_leaves_no_temporary_files(tmp_path):
    fig, ax = plots.new_figure()
    plots.bar_chart(ax, ["a"], [1.0])
    plots.save(fig, tmp_path / "one.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png"]


def test_an_interval_far_above_the_bars_is_cut_at_twice_the_tallest_and_its_end_written():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    plots.bar_chart(ax, ["a", "b", "c"], [300.0, 350.0, 330.0],
                    errors=[(280.0, 320.0), (15.0, 8092.0), (300.0, 360.0)], value_label="{:.1f}".format)
    assert ax.get_ylim()[1] == pytest.approx(plots.READABLE_TOP * 350.0)
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("CI to")] == ["CI to\n8092.0"]
    calm = Figure().add_subplot()
    plots.bar_chart(calm, ["a", "b"], [300.0, 350.0], errors=[(280.0, 320.0), (330.0, 370.0)])
    assert calm.get_ylim()[1] < 2 * 350.0 and not [t for t in calm.texts if t.get_text().startswith("CI to")]


def test_labels_of_neighbouring_bars_without_data_do_not_overlap(tmp_path):
    fig, ax = plots.new_figure(1, 1, size=(6, 4))
    records = [{"stage": "baseline", "status": "baseline", "trace_step_time_ms": 400.0, "forward_percent": 40.0,
                "backward_percent": 60.0},
               {"stage": "batched_input", "status": "skipped"}, {"stage": "decode_on_device", "status": "skipped"},
               {"stage": "amp", "status": "kept"}]
    plots.breakdown_panel(ax, records)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    missing = [t for t in ax.texts if t.get_text() in ("skipped", "no trace")]
    assert [t.get_text() for t in missing] == ["skipped", "skipped", "no trace"]
    boxes = [t.get_window_extent(renderer) for t in missing]
    assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:]))


def test_throughput_panel_writes_skipped_upwards_beside_each_other(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig, ax = plots.new_figure(1, 1, size=(6, 4))
    records = [{"stage": "baseline", "status": "baseline", "throughput_samples_per_s": 80.0, "tokens_per_sample": 128},
               {"stage": "dataloader", "status": "skipped"}, {"stage": "batched_input", "status": "skipped"},
               {"stage": "amp", "status": "kept", "throughput_samples_per_s": 130.0, "tokens_per_sample": 128}]
    plots.throughput_panel(ax, records)
    renderer = FigureCanvasAgg(fig).get_renderer()
    skipped = [t for t in ax.texts if t.get_text() == "skipped"]
    assert len(skipped) == 2 and skipped[0].get_rotation() == 90
    assert not skipped[0].get_window_extent(renderer).overlaps(skipped[1].get_window_extent(renderer))
    assert ax.get_ylabel().startswith("tokens/s")  # a language model's bars, in its unit
