"""The batched input pipeline: crops like RandomResizedCrop, flips, normalizes, on any device."""
import torch

from workbench.training.batched_input import CROP_RATIO, DeviceAugment, crop_boxes
from workbench.config import RunConfig
from workbench.training.data import IMAGENET_MEAN, IMAGENET_STD
from workbench.errors import UsageError


def test_boxes_stay_inside_the_image_with_the_sampled_scale_and_ratio():
    generator = torch.Generator().manual_seed(0)
    boxes = crop_boxes(4000, 32, 48, generator, torch.device("cpu"))
    _, x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 48 + 1e-4).all() and (y2 <= 32 + 1e-4).all()
    area = (x2 - x1) * (y2 - y1) / (32 * 48)
    assert area.min() >= 0.02 and area.max() <= 1.0 + 1e-5
    ratio = (x2 - x1) / (y2 - y1)
    unclamped = (x2 - x1 < 47) & (y2 - y1 < 31)
    assert ratio[unclamped].min() >= CROP_RATIO[0] - 1e-3 and ratio[unclamped].max() <= CROP_RATIO[1] + 1e-3
    assert boxes[:, 0].tolist() == list(range(4000))


def test_augment_resizes_normalizes_and_flips_about_half():
    augment = DeviceAugment(16, torch.device("cpu"), seed=0)
    gray = torch.full((64, 3, 8, 8), 128, dtype=torch.uint8)
    out = augment(gray)
    assert out.shape == (64, 3, 16, 16) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), expected, atol=1e-4)
    # A left-to-right ramp: flipped images run right-to-left.
    ramp = torch.arange(8, dtype=torch.uint8).mul(30).expand(200, 3, 8, 8).contiguous()
    out = DeviceAugment(8, torch.device("cpu"), seed=1)(ramp)
    decreasing = (out[:, 0, 4, -1] < out[:, 0, 4, 0]).float().mean().item()
    assert 0.35 < decreasing < 0.65


def test_input_pipeline_is_validated():
    assert RunConfig(input_pipeline="batched").input_pipeline == "batched"
    try:
        RunConfig(input_pipeline="gpu")
    except UsageError as error:
        assert "input_pipeline='gpu'" in str(error) and "per_sample" in str(error)
    else:
        raise AssertionError("a bad input_pipeline was accepted")


def test_worker_sweep_covers_the_usable_cores():
    from workbench.training import loader_sweep as workers

    assert workers.candidates(2) == [0, 1, 2]
    assert workers.candidates(16) == [0, 1, 2, 4, 8, 16]
    assert workers.candidates(12) == [0, 1, 2, 4, 8, 12]
    assert workers.best({}) == 0


def test_small_dev_shm_switches_to_file_system_sharing_once_said(monkeypatch):
    import torch.multiprocessing

    from workbench.training import loader_sweep as workers

    said = []
    batch = 32 * 3 * 224 * 224 * 4
    assert workers.check_shared_memory(batch, 16, said.append, free_mb=10_000) is None
    before = torch.multiprocessing.get_sharing_strategy()
    try:
        note = workers.check_shared_memory(batch, 16, said.append, free_mb=64)
        assert torch.multiprocessing.get_sharing_strategy() == "file_system"
    finally:
        torch.multiprocessing.set_sharing_strategy(before)
    assert note and "64 MB" in note and said == [note]


def test_a_crashing_worker_count_is_recorded_not_fatal(monkeypatch):
    from workbench.training import loader_sweep as workers

    def fake(dataset, batch_size, count, seed):
        if count == 2:
            raise RuntimeError("DataLoader worker (pid 7) is killed by signal: Bus error.")
        return 0.01 * (count + 1)

    monkeypatch.setattr(workers, "loader_seconds_per_batch", fake)
    timings, errors = workers.sweep(None, 4, 2, 0, log=lambda _: None)
    assert set(timings) == {0, 1} and "Bus error" in errors[2]
