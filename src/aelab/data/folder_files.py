"""An image folder's files, for aelab.data.sources: the images of a split folder (class folders or flat), the hash
of their paths and bytes that keys the folder's decoded cache, and that cache, read and written (uint8 .npz, no
pickle, in <data dir>/folders/<key>.npz)."""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError
from ._files import remove_dead_writers_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FORMAT = 1  # of the folder cache; bump when decoding changes
MAX_FOLDER_DEPTH = 4  # levels below a class folder that are searched for images


def list_split(folder: Path) -> tuple[list[str], list[str] | None, list[str], list[str]]:
    """(image files, class name of each file or None when flat, skipped files, class folders without an image)
    of one split folder.
    Plain strings and os.scandir: pathlib costs more than the reading itself for 60,000 small files."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    dirs = [e.path for e in entries if e.is_dir() and not e.name.startswith(".")]
    # regular files only (symlinks to them too): a FIFO or a link to /dev/zero would be read forever
    loose = [e.path for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)]
    skipped = [e.path for e in entries if not e.is_dir() and e.path not in loose]
    if dirs and loose:
        raise DataError(
            f"{folder}: holds both class folders ({os.path.basename(dirs[0])}, ...) and loose images "
            f"({os.path.basename(loose[0])}, ...); put every image in a class folder, or use a flat folder "
            "for unlabeled data"
        )
    if not dirs:
        return loose, None, skipped, []
    files, classes, empty = [], [], []
    for d in dirs:
        before = len(files)
        name = os.path.basename(d)
        for dirpath, dirnames, filenames in os.walk(d):  # symlinked folders are not followed
            if dirpath.count(os.sep) - d.count(os.sep) >= MAX_FOLDER_DEPTH:
                dirnames.clear()  # deeper is not a dataset's layout (a path such as / would be walked whole)
            dirnames.sort()
            for f in sorted(filenames):
                path = os.path.join(dirpath, f)
                image = f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(path)
                (files if image else skipped).append(path)
                if image:
                    classes.append(name)
        if len(files) == before:
            empty.append(d)
    return files, classes, skipped, empty


def files_hash(root: Path, files: list[str], image_size) -> str:
    """sha256 over each file's path (relative to root) and bytes: the cache key of a folder. Blocks of
    files are hashed in threads (file reads release the GIL), then the blocks' digests in order."""
    prefix = len(str(root)) + 1

    def block_digest(block: list[str]) -> bytes:
        h = hashlib.sha256()
        for p in block:
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise DataError(f"{p}: cannot read it ({e.strerror or e})") from None
            h.update(f"{p[prefix:]}\0{len(data)}\0".encode())
            h.update(data)
        return h.digest()

    blocks = [files[i : i + 2048] for i in range(0, len(files), 2048)]
    h = hashlib.sha256(f"aelab-folder-cache {FORMAT} {image_size}".encode())
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for digest in pool.map(block_digest, blocks):
            h.update(digest)
    return h.hexdigest()


def read_cache(path: Path, counts: dict[str, int]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or not what this version writes (a cache file is untrusted:
    a bad one is ignored and rebuilt, never trusted)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, KeyError):
        return None
    ok = set(arrays) == {f"x_{split}" for split in counts}
    ok = ok and all(a.dtype == np.uint8 and a.ndim == 4 and 0 not in a.shape for a in arrays.values())
    ok = ok and all(len(arrays[f"x_{split}"]) == n for split, n in counts.items())
    ok = ok and len({a.shape[1:] for a in arrays.values()}) == 1
    return arrays if ok else None


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temp file beside `path`, then rename: a killed load never leaves a half-written cache."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_writers_files(path.parent, ".tmp")  # what a killed load left
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache folder costs speed, not the run
        tmp.unlink(missing_ok=True)
        print(f"aelab: note: could not cache {path.name} ({e.strerror or e})", file=sys.stderr)
