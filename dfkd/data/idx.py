"""Read the IDX files of MNIST-style datasets (LeCun's format), gzipped or raw, with one-line errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from synth.common.errors import UserError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (`.gz` or raw): magic 0x0000 | dtype code | number of dimensions, then one
    big-endian uint32 per dimension, then the data."""
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if _is_gzip(path) else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"'{path}' is not a readable IDX file ({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES or data[3] == 0:
        raise UserError(f"'{path}' is not an IDX file (wrong magic number {data[:4].hex() or 'empty'})")
    ndim, dtype = data[3], np.dtype(_DTYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"'{path}' is truncated: its header needs {header} bytes, the file has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise UserError(f"'{path}' is truncated or padded: shape {shape} needs {expected} bytes, found {len(data)}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _is_gzip(path: Path) -> bool:
    """Gzip by content (the magic bytes 1f 8b), not by name: a renamed file still reads."""
    with open(path, "rb") as file:
        return file.read(2) == b"\x1f\x8b"
