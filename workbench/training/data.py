"""Training data: CIFAR-10 through torchvision, an offline CIFAR-format stand-in, or an ImageFolder.

CIFAR-10 cannot be downloaded everywhere, so the workbench can write a synthetic dataset in CIFAR-10's
real on-disk format (pickled batches.meta, data_batch_1..5, test_batch) and read it through
torchvision's own CIFAR10 class. That class checks each file's MD5 against the real release, so the
one change is `WorkbenchCIFAR10`, which skips the MD5 check only in a folder carrying our marker
file; real CIFAR-10 goes through the stock checks untouched.
"""
from __future__ import annotations

import json
import pickle
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision import datasets, transforms

from workbench.config import data_source, is_token_data
from workbench.training import safe_pickle
from workbench.training.tokens import load_tokens
from workbench.errors import UsageError
from workbench.results import write_atomic

CIFAR_FOLDER = "cifar-10-batches-py"
SYNTHETIC_MARKER = "WORKBENCH_SYNTHETIC"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 20
# Bumped when the synthetic images change, so an older copy is rewritten rather than silently reused.
SYNTHETIC_VERSION = 2


@dataclass(frozen=True)
class DataSpec:
    """A dataset ready for a DataLoader, and a sentence saying what it is."""

    dataset: torch.utils.data.Dataset
    num_classes: int        # the vocabulary, for token windows
    description: str
    tokens_per_sample: int = 0   # seq_len for token windows; 0 for images


def train_transform(image_size: int) -> transforms.Compose:
    """The lab's input pipeline: it is part of what we measure, so it is the default."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, antialias=True),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def raw_transform(image_size: int, fixed_size: bool) -> transforms.Compose:
    """For the batched pipeline: the stored pixels as a uint8 tensor, augmented later on the device.
    Images of varying size (an ImageFolder) are resized to one square first so they can be batched."""
    resize = [] if fixed_size else [transforms.Resize((image_size, image_size), antialias=True)]
    return transforms.Compose([*resize, transforms.PILToTensor()])


def eval_transform(image_size: int) -> transforms.Compose:
    return transforms.Compose([transforms.Resize(image_size, antialias=True), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class WorkbenchCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR10, which also accepts the workbench's synthetic files (no MD5 to match).

    Files no MD5 vouches for are untrusted (the marker is a plain file anyone can add): they are read
    with the restricted unpickler and checked for shape, never with pickle.load.
    """

    def __init__(self, root: str, train: bool = True, transform=None) -> None:
        key = _files_key(Path(root) / self.base_folder, train)
        if key in _DECODED:  # the same files, unchanged since this process (or its parent) read them
            datasets.VisionDataset.__init__(self, root, transform=transform)
            self.train = train
            self.data, self.targets, self.classes = _DECODED[key]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
            return
        if not (Path(root) / self.base_folder / SYNTHETIC_MARKER).exists():
            super().__init__(root, train=train, transform=transform)  # real CIFAR-10: every MD5 checked
        else:
            datasets.VisionDataset.__init__(self, root, transform=transform)
            self.train = train
            self._load_unverified()
        check_labels(self.targets, self.classes)
        if key is not None:
            _DECODED[key] = (self.data, self.targets, self.classes)

    def _load_unverified(self) -> None:
        if not self._check_integrity():
            raise RuntimeError("a data batch or batches.meta is missing")
        folder = Path(self.root) / self.base_folder
        batches = [read_batch(folder / name) for name, _ in (self.train_list if self.train else self.test_list)]
        self.data = np.vstack([data for data, _ in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = [label for _, labels in batches for label in labels]
        self._load_meta()

    def _is_synthetic(self) -> bool:
        return (Path(self.root) / self.base_folder / SYNTHETIC_MARKER).exists()

    def _check_integrity(self) -> bool:
        if not self._is_synthetic():
            return super()._check_integrity()
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name in (*TRAIN_FILES, "test_batch", "batches.meta"))

    def _load_meta(self) -> None:
        if not self._is_synthetic():
            return super()._load_meta()
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        meta = safe_pickle.load(path)
        names = meta.get(self.meta["key"]) if isinstance(meta, dict) else None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{path.name} holds no list of class names under {self.meta['key']!r}")
        self.classes = names
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


# Decoded splits by folder, split and the files' size and modification time. Unpickling the train
# split takes about 1 s: the fork server decodes it once (measure/entry.py:preload) and every round
# forked from it inherits the arrays, read-only, instead of decoding them again. An edited or
# replaced file changes the key, so stale pixels are never served.
_DECODED: dict[tuple, tuple[np.ndarray, list[int], list[str]]] = {}


def _files_key(folder: Path, train: bool) -> tuple | None:
    names = (*(TRAIN_FILES if train else ("test_batch",)), "batches.meta", SYNTHETIC_MARKER)
    try:
        stats = [(name, (folder / name).stat()) for name in names if name != SYNTHETIC_MARKER or (folder / name).exists()]
    except OSError:  # a missing file: no key, and the normal load says what is wrong
        return None
    return (str(folder.resolve()), train, *((name, st.st_size, st.st_mtime_ns) for name, st in stats))


def preload_cifar(data_dir: str) -> None:
    """Decode both splits of a CIFAR-format folder that is already there (never writes any)."""
    if (Path(data_dir) / CIFAR_FOLDER / "batches.meta").is_file():
        for train in (True, False):
            WorkbenchCIFAR10(data_dir, train=train)


def read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """(images as N x 3072 uint8, labels) from an unverified CIFAR-format batch, checked for shape."""
    entry = safe_pickle.load(path)
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get("labels") if isinstance(entry, dict) else None
    if not (isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 3072 and data.dtype == np.uint8):
        raise ValueError(f"{path.name} is not a CIFAR-format batch (needs a dict with 'data': N x 3072 uint8)")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(x) is int for x in labels)):
        raise ValueError(f"{path.name} needs 'labels': one integer per image")
    return data, labels


def check_labels(targets: list[int], classes: list[str]) -> None:
    """Every label must name a class: a label past the class list fails deep inside the loss otherwise."""
    if targets and (min(targets) < 0 or max(targets) >= len(classes)):
        raise ValueError(f"labels run from {min(targets)} to {max(targets)} but batches.meta names "
                         f"{len(classes)} classes")


def _class_templates(rng: np.random.Generator) -> np.ndarray:
    """One smooth colour pattern per class (4x4 grid blown up to 32x32): learnable, not trivial."""
    coarse = rng.uniform(0, 255, size=(len(CIFAR_CLASSES), 3, 4, 4))
    return coarse.repeat(8, axis=2).repeat(8, axis=3)


def _synthetic_images(templates: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Faint class patterns under heavy noise: learnable, but not at 99% after a few dozen steps
    # (the memory-matrix experiment compares accuracies, which must not all saturate).
    noise = rng.normal(0, 80, size=(len(labels), 3, 32, 32))
    images = 0.4 * templates[labels] + 0.6 * 128 + noise
    return np.clip(images, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_synthetic_cifar(root: Path, per_batch: int = 10000, seed: int = 0) -> Path:
    """Write a learnable CIFAR-10 look-alike in the real on-disk format; return its folder.

    Written into a side folder and renamed into place, so an interrupted write never leaves a
    half dataset that looks like real CIFAR-10.
    """
    final = Path(root) / CIFAR_FOLDER
    if final.exists() and not (final / SYNTHETIC_MARKER).exists():
        raise UsageError(f"{str(final)!r} holds data that is not the workbench's; refusing to overwrite it")
    folder = Path(root) / f".{CIFAR_FOLDER}.partial"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    templates = _class_templates(rng)
    for name in (*TRAIN_FILES, "test_batch"):
        labels = rng.integers(0, len(CIFAR_CLASSES), size=per_batch)
        batch = {"batch_label": f"synthetic {name}", "labels": labels.tolist(),
                 "data": _synthetic_images(templates, labels, rng),
                 "filenames": [f"synthetic_{name}_{i}.png" for i in range(per_batch)]}
        _pickle_to(folder / name, batch)
    _pickle_to(folder / "batches.meta", {"label_names": list(CIFAR_CLASSES),
                                         "num_cases_per_batch": per_batch, "num_vis": 3072})
    marker = {"seed": seed, "per_batch": per_batch, "version": SYNTHETIC_VERSION}
    (folder / SYNTHETIC_MARKER).write_text(json.dumps(marker) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    folder.rename(final)
    return final


def _pickle_to(path: Path, payload: dict) -> None:
    write_atomic(path, lambda handle: pickle.dump(payload, handle, protocol=2), binary=True)


def _folder_state(data_dir: Path) -> str:
    """'missing', 'synthetic' or 'present' (something there that claims to be CIFAR-10)."""
    folder = Path(data_dir) / CIFAR_FOLDER
    if not folder.exists():
        return "missing"
    return "synthetic" if (folder / SYNTHETIC_MARKER).exists() else "present"


def settled_without_download(data: str, data_dir: str) -> str:
    """What data=auto is on this machine without downloading: CIFAR-10 when data_dir holds it, else
    the synthetic stand-in. Several nodes settle it each on its own disk and compare the answers
    (a node with CIFAR-10 and one without would otherwise train on different data)."""
    if data != "auto":
        return data
    return "cifar10" if _folder_state(Path(data_dir)) == "present" else "synthetic"


def _synthetic_version(data_dir: Path) -> int | None:
    try:
        return json.loads((Path(data_dir) / CIFAR_FOLDER / SYNTHETIC_MARKER).read_text()).get("version")
    except (OSError, ValueError):
        return None


def _try_download(data_dir: Path) -> bool:
    """Download real CIFAR-10; False (not an error) when there is no network."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        datasets.CIFAR10(str(data_dir), train=True, download=True)
        return True
    except Exception:  # no network, DNS failure, proxy refusal: all mean "not available here"
        return False
    finally:
        socket.setdefaulttimeout(previous)


def prepare_cifar(data: str, data_dir: Path, per_batch: int, seed: int, log=print) -> str:
    """Make sure CIFAR-format data is in data_dir; return 'cifar10' or 'synthetic'."""
    state = _folder_state(data_dir)
    if data == "synthetic" or (data == "auto" and state == "synthetic"):
        if state == "synthetic" and _synthetic_version(data_dir) != SYNTHETIC_VERSION:
            log(f"synthetic data in {data_dir} was written by an older workbench: rewriting it")
            state = "missing"
        if state == "missing":
            log(f"writing synthetic CIFAR-format data to {data_dir} ({per_batch} images per batch file)")
            _write_or_explain(data_dir, per_batch, seed)
        elif state == "present":
            raise UsageError(f"data_dir={str(data_dir)!r} holds real CIFAR-10; use --data cifar10 or another --data-dir")
        return "synthetic"
    if data == "cifar10" and state == "synthetic":
        raise UsageError(f"data_dir={str(data_dir)!r} holds synthetic data, not CIFAR-10; "
                         "use --data synthetic or another --data-dir")
    if state == "present" or _try_download(data_dir):
        return "cifar10"
    if data == "cifar10":
        raise UsageError(f"data=cifar10: no CIFAR-10 in {str(data_dir)!r} and it could not be downloaded; "
                         "allowed: put cifar-10-batches-py there, or use --data synthetic")
    log(f"CIFAR-10 not found in {data_dir} and not downloadable: using synthetic CIFAR-format data instead")
    return prepare_cifar("synthetic", data_dir, per_batch, seed, log)


def _write_or_explain(data_dir: Path, per_batch: int, seed: int) -> None:
    try:
        write_synthetic_cifar(data_dir, per_batch, seed)
    except OSError as error:  # a file where the folder should be, a read-only filesystem, a full disk
        raise UsageError(f"data_dir={str(data_dir)!r} cannot hold the synthetic data ({error.strerror or error}); "
                         "allowed: a folder you can write to") from None


def _open_cifar(data_dir: Path, train: bool, transform) -> WorkbenchCIFAR10:
    try:
        return WorkbenchCIFAR10(str(data_dir), train=train, transform=transform)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError,
            AttributeError, OSError) as error:
        folder = Path(data_dir) / CIFAR_FOLDER
        detail = str(error).splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UsageError(f"data_dir={str(folder)!r} is missing or corrupt ({detail}); "
                         "allowed: a complete cifar-10-batches-py folder (delete it to regenerate)") from None


def _open_imagefolder(path: str, transform, file_loader: Callable[[str], object] | None) -> datasets.ImageFolder:
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"data=imagefolder:{path}: no such folder; allowed: a folder with one sub-folder per class")
    loader = {"loader": file_loader} if file_loader else {}  # PIL (ImageFolder's own) unless told otherwise
    try:
        return datasets.ImageFolder(str(root), transform=transform, **loader)
    except (FileNotFoundError, RuntimeError) as error:
        raise UsageError(f"data=imagefolder:{path} holds no images ({error}); "
                         "allowed: a folder with one sub-folder of images per class") from None


def _transform(image_size: int, train: bool, batched: bool, fixed_size: bool):
    if not train:
        return eval_transform(image_size)
    return raw_transform(image_size, fixed_size) if batched else train_transform(image_size)


def load_data(data: str, data_dir: str, image_size: int, per_batch: int, seed: int,
              train: bool = True, log=print, batched: bool = False,
              file_loader: Callable[[str], object] | None = None, seq_len: int = 128,
              token_dtype: str = "uint16") -> DataSpec:
    """The dataset a RunConfig names, with its transforms and a description of what it is.
    batched=True yields uint8 images for the on-device augmentation (workbench/training/batched_input.py);
    file_loader (an ImageFolder only) turns each file into a sample as it is, with no transform
    (the file's bytes for decode_on_device: workbench/training/jpeg_input.py)."""
    if is_token_data(data):
        return _token_spec(data, seq_len, token_dtype, seed, train)
    transform = _transform(image_size, train, batched, fixed_size=not data.startswith("imagefolder:"))
    if data.startswith("imagefolder:"):
        path = data.split(":", 1)[1]
        dataset = _open_imagefolder(path, None if file_loader else transform, file_loader)
        if len(dataset.classes) < 2:
            log(f"warning: data=imagefolder:{path} has only {len(dataset.classes)} class: the loss trains "
                "to 0 and accuracy means nothing; add a sub-folder per class")
        return DataSpec(dataset, len(dataset.classes), f"ImageFolder {path} ({len(dataset)} images)")
    kind = prepare_cifar(data, Path(data_dir), per_batch, seed, log)
    dataset = _open_cifar(Path(data_dir), train, transform)
    label = "CIFAR-10" if kind == "cifar10" else "synthetic CIFAR-format data (offline stand-in, not CIFAR-10)"
    return DataSpec(dataset, len(dataset.classes), f"{label}, {len(dataset)} images from {data_dir}")


def load_configured(cfg, log=print) -> DataSpec:
    """The training data a RunConfig names (what the run's setup and each node load before any stage)."""
    return load_data(data_source(cfg), cfg.data_dir, cfg.image_size, cfg.synthetic_per_batch, cfg.seed, log=log,
                     seq_len=cfg.seq_len, token_dtype=cfg.token_dtype)


def _token_spec(data: str, seq_len: int, token_dtype: str, seed: int, train: bool) -> DataSpec | None:
    """Token windows (training, or held out: None where a file is too short to spare any)."""
    tokens = load_tokens(data, seq_len, token_dtype, seed)
    windows = tokens.train if train else tokens.held_out
    if windows is None:
        return None
    return DataSpec(windows, tokens.vocab_size, tokens.description, tokens_per_sample=seq_len)


def build_loader(dataset, batch_size: int, num_workers: int, pin_memory: bool,
                 persistent_workers: bool, prefetch_factor: int, seed: int,
                 sampler=None, collate_fn: Callable | None = None) -> torch.utils.data.DataLoader:
    """A shuffling loader with full batches only, so every step has the same shape.

    With a sampler (one shard per process under DDP) the sampler does the shuffling; collate_fn
    (None: the default collation) packs samples that do not stack, such as files' bytes.
    """
    if len(dataset) < batch_size:
        raise UsageError(f"batch_size={batch_size} is larger than the dataset ({len(dataset)} samples)")
    extra = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor} if num_workers else {}
    order = {"sampler": sampler} if sampler is not None else {
        "shuffle": True, "generator": torch.Generator().manual_seed(seed)}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, drop_last=True, num_workers=num_workers,
                                       pin_memory=pin_memory, collate_fn=collate_fn, **order, **extra)
