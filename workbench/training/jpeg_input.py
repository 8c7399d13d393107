"""The decode_on_device input pipeline: the loader reads JPEG files' bytes, the device decodes them.

With an ImageFolder of JPEGs, decoding with PIL in the DataLoader is the wall once the GPU is fed (a
500x375 JPEG takes a few ms on one core, before the crop). Here:
- the workers only read each file and pack a batch's files into one flat uint8 tensor plus their
  lengths: two shared-memory handles a batch, where a list of B tensors would pass one file
  descriptor per image and exhaust the descriptor limit with many workers in flight;
- `torchvision.io.decode_jpeg` decodes the whole batch on the device (batched nvJPEG on CUDA, which
  takes the bytes from host memory itself; on a CPU the same call decodes there);
- the decoded images differ in size, so each gets its own RandomResizedCrop box (crop_boxes, sampled
  on the host: the slice bounds are Python integers and need no device sync), cropped and resized to
  image_size with antialiasing as torchvision's RandomResizedCrop does; flip and normalize run batched.

Non-JPEG files: a folder mostly of other formats is refused when the configuration is built (decoding
them is exactly the CPU work this pipeline removes); the few a mixed folder holds, and a PNG behind a
.jpg name, are decoded with PIL in the worker and re-encoded as JPEG, so nothing but JPEG reaches
decode_jpeg (CUDA's decoder takes no other format).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch.nn import functional
from torchvision.io import ImageReadMode, decode_jpeg

from workbench.errors import StageSkipped
from workbench.training.batched_input import FlipNormalize, crop_boxes

JPEG_SUFFIXES = (".jpg", ".jpeg")
JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker, then the first segment's marker
# Quality of the JPEG a non-JPEG file is re-encoded as: near-lossless, and rare files only.
REENCODE_QUALITY = 95


class EncodedImages(NamedTuple):
    """A batch of encoded files: their bytes end to end, and each file's length."""

    data: torch.Tensor  # uint8, 1-D
    lengths: torch.Tensor  # int64, one per file

    def files(self) -> list[torch.Tensor]:
        """One 1-D uint8 view per file (lengths are host values: no device sync)."""
        return list(self.data.split(self.lengths.tolist()))


def read_encoded(path: str) -> torch.Tensor:
    """An ImageFolder loader that does not decode: the file's bytes as a 1-D uint8 tensor."""
    raw = Path(path).read_bytes()
    if not raw.startswith(JPEG_MAGIC):
        raw = reencode_as_jpeg(raw)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def reencode_as_jpeg(raw: bytes) -> bytes:
    """Any image PIL reads (the per_sample pipeline's decoder) as JPEG bytes, in RGB."""
    out = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").save(out, format="JPEG", quality=REENCODE_QUALITY)
    return out.getvalue()


def collate_encoded(items: list[tuple[torch.Tensor, int]]) -> tuple[EncodedImages, torch.Tensor]:
    """(files packed end to end, labels) from (bytes, label) samples."""
    files = [data for data, _ in items]
    lengths = torch.tensor([len(data) for data in files], dtype=torch.int64)
    return EncodedImages(torch.cat(files), lengths), torch.tensor([label for _, label in items])


def non_jpeg_names(paths: list[str]) -> list[str]:
    """The files whose name does not say JPEG (read from the listing: no file is opened)."""
    return [path for path in paths if not path.lower().endswith(JPEG_SUFFIXES)]


def check_jpeg_folder(paths: list[str], root: str) -> str | None:
    """Refuse a folder mostly of other formats; for a few, the sentence saying they are re-encoded."""
    others = non_jpeg_names(paths)
    if not others:
        return None
    first = os.path.relpath(others[0], root)
    if 2 * len(others) > len(paths):
        raise StageSkipped(f"input_pipeline=decode_on_device decodes JPEG files, and {len(others)} of the "
                           f"{len(paths)} files in {root} are not JPEG (first: {first}); allowed: a folder of "
                           ".jpg/.jpeg files, or input_pipeline per_sample or batched")
    return (f"{len(others)} of {len(paths)} files are not JPEG (first: {first}): the loader workers decode "
            "them with PIL and re-encode them as JPEG")


class DecodeAugment:
    """Decode a batch of JPEG files on the device, then crop, flip and normalize it there."""

    def __init__(self, image_size: int, device: torch.device, seed: int) -> None:
        self.image_size, self.device = image_size, device
        # Boxes are sampled on the host (their bounds slice the images); the flip on the device.
        self.host_generator = torch.Generator().manual_seed(seed)
        # seed + 1: on a CPU the same seed would draw the flips from the boxes' own random numbers.
        self.flip_normalize = FlipNormalize(device, torch.Generator(device=device).manual_seed(seed + 1))

    def __call__(self, images: EncodedImages) -> torch.Tensor:
        decoded = decode_jpeg(images.files(), mode=ImageReadMode.RGB, device=self.device)
        return self.flip_normalize(torch.cat([self._resized(image, box) for image, box
                                              in zip(decoded, self._boxes(decoded))]))

    def _boxes(self, decoded: list[torch.Tensor]) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) per image, in whole pixels, as RandomResizedCrop crops."""
        sizes = [(image.shape[1], image.shape[2]) for image in decoded]  # host metadata: no sync
        heights, widths = torch.tensor(sizes, dtype=torch.float32).unbind(1)
        boxes = crop_boxes(len(sizes), heights, widths, self.host_generator, torch.device("cpu"))
        return [whole_pixels(*box[1:], height, width) for box, (height, width) in zip(boxes.tolist(), sizes)]

    def _resized(self, image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        top, left, height, width = box
        crop = image[None, :, top:top + height, left:left + width].float()
        return functional.interpolate(crop, size=(self.image_size, self.image_size), mode="bilinear",
                                      align_corners=False, antialias=True)


def whole_pixels(x1: float, y1: float, x2: float, y2: float, height: int, width: int) -> tuple[int, int, int, int]:
    """A sampled box rounded to whole pixels inside the image, at least one pixel each way."""
    left, top = min(int(x1), width - 1), min(int(y1), height - 1)
    right, bottom = min(max(round(x2), left + 1), width), min(max(round(y2), top + 1), height)
    return top, left, bottom - top, right - left
