"""data.py: synthetic CIFAR-10 in the real on-disk format, loading it, and every user-facing data error."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from workbench.training import data
from workbench.training.data import (CIFAR_CLASSES, CIFAR_FOLDER, SYNTHETIC_MARKER, TRAIN_FILES, WorkbenchCIFAR10,
                            build_loader, load_data, train_transform, write_synthetic_cifar)
from workbench.errors import UsageError

PER_BATCH = 50


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    """One synthetic CIFAR-10 written once for the read-only tests of this module."""
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar(root, per_batch=PER_BATCH, seed=0)
    return root


@pytest.fixture
def fresh_root(tmp_path) -> Path:
    write_synthetic_cifar(tmp_path, per_batch=10, seed=0)
    return tmp_path


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Tests never reach the network: a download attempt reports 'not available'."""
    attempts = []
    monkeypatch.setattr(data, "_try_download", lambda data_dir: attempts.append(data_dir) or False)
    return attempts


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


# --- the files -------------------------------------------------------------------------------

def test_writes_the_real_cifar_file_layout(cifar_root):
    folder = cifar_root / CIFAR_FOLDER
    names = {p.name for p in folder.iterdir()}
    assert names == {"batches.meta", *TRAIN_FILES, "test_batch", SYNTHETIC_MARKER}


@pytest.mark.parametrize("name", [*TRAIN_FILES, "test_batch"])
def test_batches_have_cifar_keys_and_types(cifar_root, name):
    batch = _unpickle(cifar_root / CIFAR_FOLDER / name)
    assert all(isinstance(key, str) for key in batch)
    assert batch["data"].dtype == np.uint8 and batch["data"].shape == (PER_BATCH, 3072)
    assert isinstance(batch["labels"], list) and len(batch["labels"]) == PER_BATCH
    assert all(isinstance(label, int) and 0 <= label < 10 for label in batch["labels"])


def test_meta_has_label_names(cifar_root):
    meta = _unpickle(cifar_root / CIFAR_FOLDER / "batches.meta")
    assert meta["label_names"] == list(CIFAR_CLASSES)


def test_writing_is_deterministic_per_seed(tmp_path):
    a = write_synthetic_cifar(tmp_path / "a", per_batch=5, seed=1)
    b = write_synthetic_cifar(tmp_path / "b", per_batch=5, seed=1)
    c = write_synthetic_cifar(tmp_path / "c", per_batch=5, seed=2)
    assert np.array_equal(_unpickle(a / "test_batch")["data"], _unpickle(b / "test_batch")["data"])
    assert not np.array_equal(_unpickle(a / "test_batch")["data"], _unpickle(c / "test_batch")["data"])


# --- reading them ---------------------------------------------------------------------------------

def test_stock_torchvision_rejects_synthetic_files(cifar_root):
    with pytest.raises(RuntimeError):
        datasets.CIFAR10(str(cifar_root), train=True)


def test_workbench_cifar_loads_synthetic(cifar_root):
    train = WorkbenchCIFAR10(str(cifar_root), train=True, transform=train_transform(32))
    test = WorkbenchCIFAR10(str(cifar_root), train=False)
    assert len(train) == 5 * PER_BATCH and len(test) == PER_BATCH
    assert train.classes == list(CIFAR_CLASSES)
    assert train.class_to_idx["truck"] == 9
    image, label = train[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= label < 10


def test_md5_checks_stay_without_the_marker(fresh_root):
    (fresh_root / CIFAR_FOLDER / SYNTHETIC_MARKER).unlink()
    with pytest.raises(RuntimeError):
        WorkbenchCIFAR10(str(fresh_root), train=True)


def test_classes_are_learnable_by_nearest_class_mean(cifar_root):
    train = WorkbenchCIFAR10(str(cifar_root), train=True)
    test = WorkbenchCIFAR10(str(cifar_root), train=False)
    x, y = train.data.reshape(len(train), -1).astype(float), np.asarray(train.targets)
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    xt, yt = test.data.reshape(len(test), -1).astype(float), np.asarray(test.targets)
    predicted = ((xt[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert (predicted == yt).mean() > 0.5  # chance is 0.1


# --- load_data ------------------------------------------------------------------------------------

def test_synthetic_into_empty_dir_writes_the_data(tmp_path, no_download):
    logged = []
    spec = load_data("synthetic", str(tmp_path / "d"), image_size=16, per_batch=4, seed=0, log=logged.append)
    assert (tmp_path / "d" / CIFAR_FOLDER / SYNTHETIC_MARKER).exists()
    assert len(spec.dataset) == 20 and spec.num_classes == 10
    assert "synthetic" in spec.description and "not CIFAR-10" in spec.description
    assert logged and "writing synthetic" in logged[0]
    assert spec.dataset[0][0].shape == (3, 16, 16)
    assert no_download == []


def test_eval_split_uses_test_batch(fresh_root):
    spec = load_data("synthetic", str(fresh_root), image_size=16, per_batch=10, seed=0, train=False)
    assert len(spec.dataset) == 10
    assert spec.dataset[0][0].shape == (3, 16, 16)


def test_auto_reuses_existing_synthetic_without_download(fresh_root, no_download):
    spec = load_data("auto", str(fresh_root), image_size=8, per_batch=10, seed=0, log=lambda _: None)
    assert len(spec.dataset) == 50
    assert no_download == []


def test_auto_falls_back_to_synthetic_when_not_downloadable(tmp_path, no_download):
    logged = []
    spec = load_data("auto", str(tmp_path), image_size=8, per_batch=3, seed=0, log=logged.append)
    assert len(no_download) == 1
    assert len(spec.dataset) == 15
    assert any("not downloadable" in line for line in logged)


def test_cifar10_missing_and_not_downloadable_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="data=cifar10") as info:
        load_data("cifar10", str(tmp_path), image_size=8, per_batch=3, seed=0)
    assert str(tmp_path) in str(info.value) and "--data synthetic" in str(info.value)


@pytest.mark.parametrize("size", [0, 100])
def test_corrupt_synthetic_folder_is_usage_error_naming_it(fresh_root, size):
    path = fresh_root / CIFAR_FOLDER / "data_batch_2"
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(UsageError) as info:
        load_data("synthetic", str(fresh_root), image_size=8, per_batch=10, seed=0)
    assert str(fresh_root / CIFAR_FOLDER) in str(info.value)


def test_missing_file_in_synthetic_folder_is_usage_error(fresh_root):
    (fresh_root / CIFAR_FOLDER / "test_batch").unlink()
    with pytest.raises(UsageError, match=CIFAR_FOLDER):
        load_data("synthetic", str(fresh_root), image_size=8, per_batch=10, seed=0, train=False)


def test_fake_real_cifar_fails_md5_as_usage_error(fresh_root, no_download):
    (fresh_root / CIFAR_FOLDER / SYNTHETIC_MARKER).unlink()  # now it claims to be the real thing
    with pytest.raises(UsageError, match="corrupt"):
        load_data("cifar10", str(fresh_root), image_size=8, per_batch=10, seed=0)
    assert no_download == []


def test_synthetic_refuses_to_overwrite_real_cifar(fresh_root):
    (fresh_root / CIFAR_FOLDER / SYNTHETIC_MARKER).unlink()
    with pytest.raises(UsageError, match="real CIFAR-10"):
        load_data("synthetic", str(fresh_root), image_size=8, per_batch=10, seed=0)


# --- imagefolder ------------------------------------------------------------------------------------

def test_imagefolder_missing_is_usage_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UsageError, match="no such folder") as info:
        load_data(f"imagefolder:{missing}", "unused", image_size=8, per_batch=1, seed=0)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("layout", ["empty", "empty_class_folders"])
def test_imagefolder_without_images_is_usage_error(tmp_path, layout):
    if layout == "empty_class_folders":
        (tmp_path / "cats").mkdir()
        (tmp_path / "dogs").mkdir()
    with pytest.raises(UsageError, match="holds no images") as info:
        load_data(f"imagefolder:{tmp_path}", "unused", image_size=8, per_batch=1, seed=0)
    assert str(tmp_path) in str(info.value)


def test_imagefolder_loads_classes(tmp_path):
    for cls, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (12, 10), colour).save(tmp_path / cls / f"{i}.png")
    spec = load_data(f"imagefolder:{tmp_path}", "unused", image_size=8, per_batch=1, seed=0)
    assert spec.num_classes == 2 and len(spec.dataset) == 4
    assert "ImageFolder" in spec.description
    image, label = spec.dataset[3]
    assert image.shape == (3, 8, 8) and label == 1


# --- build_loader ---------------------------------------------------------------------------------

def test_loader_full_batches_and_seeded_order(cifar_root):
    dataset = WorkbenchCIFAR10(str(cifar_root), train=False, transform=train_transform(8))

    def first_labels(seed):
        loader = build_loader(dataset, 16, num_workers=0, pin_memory=False, persistent_workers=False,
                              prefetch_factor=2, seed=seed)
        batches = list(loader)
        assert len(batches) == PER_BATCH // 16 and all(b[0].shape == (16, 3, 8, 8) for b in batches)
        return batches[0][1].tolist()

    assert first_labels(0) == first_labels(0)
    assert first_labels(0) != first_labels(1)


def test_loader_batch_larger_than_dataset_is_usage_error(cifar_root):
    dataset = WorkbenchCIFAR10(str(cifar_root), train=False)
    with pytest.raises(UsageError, match=f"batch_size={PER_BATCH + 1}"):
        build_loader(dataset, PER_BATCH + 1, 0, False, False, 2, 0)


def test_cifar10_on_synthetic_folder_is_usage_error_without_download(fresh_root, no_download):
    with pytest.raises(UsageError, match="synthetic"):
        load_data("cifar10", str(fresh_root), image_size=8, per_batch=10, seed=0)
    assert no_download == []


def test_a_decoded_split_is_reused_until_its_files_change(fresh_root, monkeypatch):
    """The fork server decodes a split once and every round forked from it reuses the arrays; an
    edited file is read again, never served stale."""
    from workbench.launch import RoundSpec, SideSpec
    from workbench.measure import entry

    spec = fresh_root / "request.json"
    config = {"device": "cpu", "data": "auto", "data_dir": str(fresh_root)}
    spec.write_text(json.dumps(RoundSpec({side: SideSpec(side, config) for side in "ab"}, ("a", "b")).to_json()))
    entry.preload(str(spec))
    reads = []
    real_read = data.read_batch
    monkeypatch.setattr(data, "read_batch", lambda path: reads.append(path.name) or real_read(path))
    first = WorkbenchCIFAR10(str(fresh_root), train=True)
    assert reads == [] and len(first) == 5 * 10 and WorkbenchCIFAR10(str(fresh_root), train=False).classes == first.classes
    batch = fresh_root / CIFAR_FOLDER / TRAIN_FILES[0]
    entry = pickle.loads(batch.read_bytes())
    entry["data"] = np.zeros_like(entry["data"])
    batch.write_bytes(pickle.dumps(entry))
    again = WorkbenchCIFAR10(str(fresh_root), train=True)
    assert len(reads) == len(TRAIN_FILES) and not again.data[:10].any()


def test_preloading_never_writes_data(tmp_path):
    data.preload_cifar(str(tmp_path / "nothing-here"))
    assert not (tmp_path / "nothing-here").exists()
