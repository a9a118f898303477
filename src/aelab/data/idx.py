"""Reader for LeCun's IDX format (MNIST, Fashion-MNIST, KMNIST).

Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of
dimensions n, then n big-endian int32 sizes, then the data in C order.
"""

from __future__ import annotations

import math
import os
import stat
import zlib

import numpy as np

from ..errors import DataError

_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx_bytes(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(f"{name}: bad IDX magic number {raw[:4].hex()} (expected 0000 08..0e NN)")
    ndim = raw[3]
    if ndim == 0:
        raise DataError(f"{name}: IDX file declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header (needs {header} bytes, has {len(raw)})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if any(s == 0 for s in shape):
        raise DataError(f"{name}: IDX file has a zero dimension {shape}")
    dtype = np.dtype(_TYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: no 64-bit overflow to 0
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{name}: IDX data {what}: shape {shape} needs {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


MAX_RAW_BYTES = 1 << 30  # an IDX file, as stored or decompressed (the MNIST-like sets' largest is 47 MB)


def regular_file_size(path: str, max_bytes: int | None = None) -> int:
    """The size of a regular file no larger than max_bytes; a FIFO, a device (a link to /dev/zero), a folder or
    a larger file is refused before it is read (it could be read forever, or hang)."""
    max_bytes = MAX_RAW_BYTES if max_bytes is None else max_bytes
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file")
    if st.st_size > max_bytes:
        raise DataError(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} an IDX file may have")
    return st.st_size


def read_raw(path: str | os.PathLike, max_bytes: int | None = None, decompress: bool = True) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by magic bytes, not by name) unless decompress=False; both
    bounded by max_bytes (a gzip bomb is refused once its output passes the bound, not after)."""
    path = os.fspath(path)
    max_bytes = MAX_RAW_BYTES if max_bytes is None else max_bytes
    regular_file_size(path, max_bytes)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] != b"\x1f\x8b" or not decompress:
        return raw
    out, rest = [], raw
    try:
        while rest[:2] == b"\x1f\x8b":  # gzip members, one after another
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out.append(inflate.decompress(rest, max_bytes + 1 - sum(map(len, out))))
            if sum(map(len, out)) > max_bytes or inflate.unconsumed_tail:
                raise DataError(f"{path}: decompresses to more than {max_bytes:,} bytes")
            if not inflate.eof:
                raise DataError(f"{path}: corrupt or truncated gzip stream (it ends early)")
            rest = inflate.unused_data
    except zlib.error as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    return b"".join(out)


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a numpy array; DataError names the file and the problem."""
    arr = read_idx_bytes(read_raw(path), os.fspath(path))
    if expect_ndim is not None and arr.ndim != expect_ndim:
        raise DataError(f"{os.fspath(path)}: expected {expect_ndim} dimensions, found shape {arr.shape}")
    return arr
