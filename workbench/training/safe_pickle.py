"""Reading CIFAR-format pickles that no checksum vouches for, without running code from them.

A pickle can name any importable callable and call it while loading (a `__reduce__` payload runs a
shell command). The CIFAR format holds only dicts, lists, strings, numbers and numpy arrays, so the
unpickler admits exactly the callables those need: numpy's array reconstruction (under its
numpy 1.x and 2.x module names), ndarray and dtype, and latin-1 `_codecs.encode`, which protocol 2
uses for the raw bytes of an array. Anything else is refused before it is called.
"""
from __future__ import annotations

import _codecs
import pickle
from pathlib import Path

import numpy as np

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whatever its module
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
LATIN1 = ("latin1", "latin-1", "iso-8859-1")


class UnsafePickle(pickle.UnpicklingError):
    """The pickle names a callable the CIFAR format never holds."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower() not in LATIN1:
        raise UnsafePickle(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return _codecs.encode(text, "latin1")


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise UnsafePickle(f"refusing to load {module}.{name}: not part of the CIFAR format")


def load(path: Path):
    """Unpickle a CIFAR-format file (latin-1 strings, as torchvision reads them) with the allowlist."""
    with open(path, "rb") as handle:
        return RestrictedUnpickler(handle, encoding="latin1").load()
