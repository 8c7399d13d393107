"""decode_on_device: the loader reads JPEG bytes, the device decodes, crops, flips and normalizes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg

from workbench.config import RunConfig
from workbench.errors import StageSkipped
from workbench.measure.executor import build, measure_config
from workbench.progress import Progress
from workbench.training.batched_input import crop_boxes
from workbench.training.data import IMAGENET_MEAN, IMAGENET_STD, build_loader, load_data
from workbench.training.jpeg_input import (JPEG_MAGIC, DecodeAugment, check_jpeg_folder, collate_encoded,
                                           read_encoded, whole_pixels)

CPU = torch.device("cpu")
LOWEST = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
HIGHEST = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)


def smooth_image(height: int, width: int, shade: int) -> torch.Tensor:
    """A uint8 CHW image with a horizontal ramp (JPEG keeps it nearly intact) around one shade."""
    ramp = torch.linspace(-40, 40, width).expand(3, height, width)
    return (ramp + shade).clamp(0, 255).to(torch.uint8).contiguous()


def write_jpeg_folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of JPEGs, each file a different size (as real photographs are)."""
    for label, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = smooth_image(18 + 5 * i, 40 - 3 * i, 80 + 90 * label)
            (root / name / f"{i}.jpg").write_bytes(bytes(encode_jpeg(image, quality=95).numpy()))
    return root


@pytest.fixture
def jpeg_folder(tmp_path) -> Path:
    return write_jpeg_folder(tmp_path / "photos")


def encoded_batch(folder: Path):
    spec = load_data(f"imagefolder:{folder}", "unused", image_size=8, per_batch=1, seed=0, file_loader=read_encoded)
    return collate_encoded([spec.dataset[i] for i in range(len(spec.dataset))])


def test_the_dataset_yields_each_files_bytes_and_label(jpeg_folder):
    spec = load_data(f"imagefolder:{jpeg_folder}", "unused", image_size=8, per_batch=1, seed=0,
                     file_loader=read_encoded)
    assert spec.num_classes == 2 and len(spec.dataset) == 12
    data, label = spec.dataset[7]
    assert data.dtype == torch.uint8 and data.dim() == 1 and label == 1
    assert bytes(data.numpy()) == (jpeg_folder / "dogs" / "1.jpg").read_bytes()


def test_collate_packs_the_files_end_to_end_and_splits_them_back(jpeg_folder):
    images, labels = encoded_batch(jpeg_folder)
    files = images.files()
    assert len(files) == 12 and labels.tolist() == [0] * 6 + [1] * 6
    assert len({len(f) for f in files}) > 1 and images.data.numel() == sum(len(f) for f in files)
    assert bytes(files[0].numpy()) == (jpeg_folder / "cats" / "0.jpg").read_bytes()


def test_the_loader_workers_hand_over_packed_batches(jpeg_folder):
    spec = load_data(f"imagefolder:{jpeg_folder}", "unused", image_size=8, per_batch=1, seed=0, file_loader=read_encoded)
    loader = build_loader(spec.dataset, 4, 1, False, False, 2, 0, collate_fn=collate_encoded)
    images, labels = next(iter(loader))
    assert images.lengths.shape == (4,) and labels.shape == (4,)
    assert all(bytes(f[:3].numpy()) == JPEG_MAGIC for f in images.files())


def test_a_decoded_batch_is_float_at_image_size_and_normalized(jpeg_folder):
    images, _ = encoded_batch(jpeg_folder)
    out = DecodeAugment(16, CPU, seed=0)(images)
    assert out.shape == (12, 3, 16, 16) and out.dtype == torch.float32 and out.is_contiguous()
    per_channel = out.transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= LOWEST - 1e-3).all() and (per_channel.max(1).values <= HIGHEST + 1e-3).all()
    # The cats are darker than the dogs (shades 80 and 170), whatever the crop.
    assert out[:6].mean() < out[6:].mean()


def test_a_flat_grey_jpeg_normalizes_to_its_shade(tmp_path):
    (tmp_path / "grey").mkdir()
    for i in range(8):
        grey = torch.full((3, 20 + i, 30), 128, dtype=torch.uint8)
        (tmp_path / "grey" / f"{i}.jpg").write_bytes(bytes(encode_jpeg(grey).numpy()))
    images, _ = encoded_batch(tmp_path)
    out = DecodeAugment(12, CPU, seed=0)(images)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), expected, atol=0.02)


def test_the_augmentation_is_deterministic_for_a_seed(jpeg_folder):
    images, _ = encoded_batch(jpeg_folder)
    first, again = DecodeAugment(16, CPU, seed=3)(images), DecodeAugment(16, CPU, seed=3)(images)
    assert torch.equal(first, again)
    assert not torch.equal(first, DecodeAugment(16, CPU, seed=4)(images))


def test_per_image_boxes_stay_inside_each_image():
    heights = torch.tensor([20.0, 300.0, 7.0] * 500)
    widths = torch.tensor([500.0, 30.0, 9.0] * 500)
    boxes = crop_boxes(1500, heights, widths, torch.Generator().manual_seed(0), CPU)
    _, x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= widths + 1e-3).all() and (y2 <= heights + 1e-3).all()
    for box, height, width in zip(boxes.tolist(), heights.int().tolist(), widths.int().tolist()):
        top, left, h, w = whole_pixels(*box[1:], height, width)
        assert 0 <= top and 0 <= left and h >= 1 and w >= 1 and top + h <= height and left + w <= width


def test_a_png_behind_a_jpg_name_is_reencoded_as_jpeg(tmp_path):
    path = tmp_path / "disguised.jpg"
    Image.new("RGB", (12, 10), (200, 30, 60)).save(path, format="PNG")
    data = read_encoded(str(path))
    assert bytes(data[:3].numpy()) == JPEG_MAGIC
    with Image.open(path) as original:
        assert original.format == "PNG"
    pixel = DecodeAugment(4, CPU, seed=0)(collate_encoded([(data, 0)])[0])
    expected = (torch.tensor([200, 30, 60]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(pixel.mean(dim=(0, 2, 3)), expected, atol=0.1)


def test_a_few_non_jpeg_files_are_noted_and_a_folder_of_them_refused(tmp_path):
    jpegs = [str(tmp_path / "a" / f"{i}.jpg") for i in range(3)]
    pngs = [str(tmp_path / "b" / f"{i}.png") for i in range(4)]
    assert check_jpeg_folder(jpegs, str(tmp_path)) is None
    note = check_jpeg_folder(jpegs + pngs[:1], str(tmp_path))
    assert note.startswith("1 of 4 files are not JPEG (first: b/0.png)") and "re-encode" in note
    with pytest.raises(StageSkipped, match="4 of the 7 files") as refused:
        check_jpeg_folder(jpegs + pngs, str(tmp_path))
    assert "first: b/0.png" in str(refused.value) and "per_sample" in str(refused.value)


def tiny_config(folder: Path, **overrides) -> RunConfig:
    fields = dict(data=f"imagefolder:{folder}", input_pipeline="decode_on_device", device="cpu", image_size=16,
                  batch_size=4, model="workbench.experiments.matrix:lab_cnn", warmup_steps=1, timed_steps=2, repeats=1)
    return RunConfig(**{**fields, **overrides})


def test_build_refuses_a_folder_of_pngs_naming_the_first(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 10), (40 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(StageSkipped, match="6 of the 6 files") as refused:
        build(tiny_config(tmp_path), log=lambda message: None)
    assert "cats/0.png" in str(refused.value)


@pytest.mark.slow
def test_a_short_measurement_trains_on_decoded_jpegs(jpeg_folder):
    Image.new("RGB", (25, 14), (90, 90, 90)).save(jpeg_folder / "cats" / "odd.png")  # noted, re-encoded
    built = build(tiny_config(jpeg_folder, num_workers=1), log=lambda message: None)
    assert built.step.settings.transform_moves_images and "first: cats/odd.png" in built.notes["non_jpeg_files"]
    raw = measure_config(built, None, None, "none", built.notes["rss_before_model_mb"], Progress("jpeg"), "full")
    metrics = raw["metrics"]
    assert metrics["loss_finite"] and metrics["throughput"]["median"] > 0
    assert metrics["compute_only"] is not None and metrics["eval_accuracy"] is None  # an ImageFolder has no held-out split
    # FLOPs are counted on image_size inputs, as the per-sample pipeline's are.
    per_sample = build(tiny_config(jpeg_folder, input_pipeline="per_sample"), log=lambda message: None)
    assert built.notes["flops_per_step"] == per_sample.notes["flops_per_step"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decode_on_cuda_matches_the_cpu_decode(jpeg_folder):
    images, labels = encoded_batch(jpeg_folder)
    cuda = torch.device("cuda")
    out = DecodeAugment(16, cuda, seed=0)(images)
    assert out.device.type == "cuda" and out.shape == (12, 3, 16, 16) and torch.isfinite(out).all()
    # The same boxes (sampled on the host); the flips come from each device's own generator, and
    # nvJPEG's IDCT may differ from libjpeg's by a level or two: compare per-image means, flip-proof.
    on_cpu = DecodeAugment(16, CPU, seed=0)(images)
    assert torch.allclose(out.mean(dim=(2, 3)).cpu(), on_cpu.mean(dim=(2, 3)), atol=0.05)
    from workbench.training.step import StepSettings, TrainStep
    from tests.conftest import tiny_convnet

    model = tiny_convnet(2).to(cuda)
    settings = StepSettings(cuda, device_transform=DecodeAugment(16, cuda, 0), transform_moves_images=True)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), settings)
    assert torch.isfinite(step(images, labels)).item()
