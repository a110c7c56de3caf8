"""Reader for the IDX files of MNIST-style data sets (LeCun's format), with integrity checks."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineError

_DTYPE_CODE_UBYTE = 0x08


def read_idx(path: Path, expected_shape: tuple[int, ...], sha256: str | None, how_to_get: str) -> torch.Tensor:
    """Read a gzipped IDX file of unsigned bytes into a uint8 tensor.

    The checksum is of the decompressed content: distributions recompress the .gz files,
    so the archives' own checksums differ between sources while the content does not.
    """
    if not path.is_file():
        raise PipelineError(f"data file {path} not found: {how_to_get}")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise PipelineError(f"data file {path} is not a valid gzip file ({exc}): {how_to_get}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _DTYPE_CODE_UBYTE:
        raise PipelineError(f"data file {path} is not an IDX file of unsigned bytes (bad magic number): {how_to_get}")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims != expected_shape or len(raw) != header_end + int(np.prod(dims)):
        raise PipelineError(
            f"data file {path} has dimensions {dims} and {len(raw) - header_end} bytes of data, "
            f"expected {expected_shape}: {how_to_get}")
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise PipelineError(f"data file {path} is corrupt (checksum of its content differs): {how_to_get}")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(dims).copy())
