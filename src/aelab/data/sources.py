"""Your own data: image folders, .npz/.npy files, tensors, numpy arrays and torch Datasets.

Everything becomes a `Data`: train and test images float32 (N, C, H, W) in [0, 1], labels int64
(-1 everywhere for unlabeled data), and `info`, the record written to a run's config.json: where the
data came from, how many images and classes were read, how the test split was made, and `sha256`,
a hash of the arrays themselves (so a run can tell when the data behind a path have changed).

    data = from_path("photos/")            # photos/<class>/*.png, or photos/train/<class>/... + photos/test/...
    data = from_path("digits.npz")         # arrays x, optional y, x_test, y_test
    data = from_arrays(x, y)               # tensors or numpy arrays, (N, H, W), (N, C, H, W) or (N, H, W, C)
    data = from_dataset(torch_dataset)     # any Dataset of images or (image, label) pairs

Without test data, a stratified (labeled) or random (unlabeled) hold-out split is made with a fixed
seed (`test_fraction`, `split_seed`) and recorded. Bad data (values outside [0, 1], NaN, mixed sizes
without `image_size`, an empty folder, an unreadable file, a label count that differs from the image
count) raise DataError naming the file; nothing is silently dropped: files that are not images are
counted in `info["skipped_files"]`, and a class folder without an image is named in
`info["empty_class_folders"]` and warned about (it is not a class).

Decoded image folders are cached as .npz (uint8, no pickle) in aelab's data folder (datasets.data_dir():
<data dir>/folders/<key>.npz, never inside the image folder), keyed by a hash of the files' bytes: a second load reads the files only to hash them.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

# an image folder's listing, hash and decoded cache; FORMAT and MAX_FOLDER_DEPTH are kept importable from here
from .folder_files import FORMAT, IMAGE_SUFFIXES, MAX_FOLDER_DEPTH  # noqa: F401
from .folder_files import files_hash as _files_hash
from .folder_files import list_split as _list_split
from .folder_files import read_cache as _read_cache
from .folder_files import write_cache as _write_cache

GRAY_MODES = ("1", "L", "LA", "La")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")  # 16-bit grey: scaled to 8 bits (v / 257, rounded), the cache's unit
MAX_IMAGES = 10**7
MAX_IMAGE_PIXELS = 4096 * 4096  # per image file, checked from its header before it is decoded
MAX_IMAGE_FILE_BYTES = 256 << 20


@dataclass
class Data:
    """Train and test images (float32 (N, C, H, W) in [0, 1]), labels (int64, -1 = unlabeled) and `info`."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        return bool((self.train_y >= 0).all()) and len(self.train_y) > 0

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def content_hash(*arrays: torch.Tensor | np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of each array: equal data, equal hash, wherever they came from."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else a
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------- arrays
def images_to_nchw(a: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, H, W, C) with C in {1, 3} -> (N, C, H, W); (N, D) with D a square ->
    (N, 1, s, s); (N, C, H, W) as it is. Values: uint8 is scaled by 1/255, anything else must already be
    in [0, 1]. Returns float32."""
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise DataError(f"{where}: images must be numbers, got dtype {a.dtype}")
    if a.ndim == 2:
        side = int(round(a.shape[1] ** 0.5))
        if side * side != a.shape[1]:
            raise DataError(
                f"{where}: flat images of {a.shape[1]} values are not square; give (N, H, W) or (N, C, H, W)"
            )
        a = a.reshape(len(a), 1, side, side)
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[3] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):  # channels last, as PIL and matplotlib give them
            a = a.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {a.shape}")
    if len(a) == 0 or 0 in a.shape:
        raise DataError(f"{where}: no images (shape {a.shape})")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        bad = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0][0])
        raise DataError(f"{where}: image {bad} contains NaN or inf")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        raise DataError(
            f"{where}: values range over [{lo:g}, {hi:g}], outside [0, 1]; scale them to [0, 1] first "
            "(uint8 images are scaled by 1/255)"
        )
    return a


def labels_array(y, n: int, where: str) -> np.ndarray:
    y = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be one integer per image, got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{where}: {len(y)} labels for {n} images")
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.dtype.kind == "u" and len(y) and int(y.max()) >= 2**63:
        raise DataError(f"{where}: label {int(y.max())} does not fit a 64-bit signed integer")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def resize_images(x: np.ndarray, image_size: Sequence[int] | None) -> np.ndarray:
    if image_size is None or tuple(x.shape[2:]) == tuple(image_size):
        return x
    t = torch.nn.functional.interpolate(torch.from_numpy(x), size=tuple(image_size), mode="bilinear", antialias=True)
    return t.clamp(0, 1).numpy()


def holdout_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, test indices, description): stratified when labeled and every class has 2 images."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_test = max(1, round(test_fraction * n))
    if n - n_test < 1:
        raise DataError(f"{n} images are too few for a hold-out split of {test_fraction:g}")
    idx = np.arange(n)
    labeled = bool((labels >= 0).all())
    counts = np.unique(labels, return_counts=True)[1]
    n_classes = len(counts)
    if labeled and counts.min() >= 2 and n_test >= n_classes and n - n_test >= n_classes:
        tr, te = train_test_split(idx, test_size=n_test, stratify=labels, random_state=seed)
        how = f"stratified hold-out of {n_test} of {n} images (fraction {test_fraction:g}, seed {seed})"
    else:
        tr, te = train_test_split(idx, test_size=n_test, random_state=seed)
        why = "unlabeled" if not labeled else "a class has fewer than 2 images"
        how = f"random hold-out of {n_test} of {n} images ({why}; fraction {test_fraction:g}, seed {seed})"
    return tr, te, how


VALIDATION_SEED = 0
VAL_FRACTION = 0.1  # the protocol's default validation split: 10% of the train images ...
VAL_MAX_IMAGES = 500  # ... or 500 of them, whichever is fewer
MIN_TRAIN_FOR_VALIDATION = 20  # below this, the default carves none (it would leave a split of one image)


def capped_val_fraction(n_train: int, fraction: float = VAL_FRACTION) -> float:
    """`fraction` of n_train images, or VAL_MAX_IMAGES of them if that is fewer (the protocol's 10% or 500)."""
    return min(fraction, VAL_MAX_IMAGES / max(1, n_train))


def default_val_fraction(n_train: int) -> float:
    """What `aelab train` carves when not told: the capped 10%, or none below MIN_TRAIN_FOR_VALIDATION images."""
    return 0.0 if n_train < MIN_TRAIN_FOR_VALIDATION else capped_val_fraction(n_train)


def validation_split(train_labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray, str]:
    """(kept train indices, validation indices, description): the validation split carved from a train split,
    the one definition that the trainer and the experiments' selection share."""
    keep, held, how = holdout_split(np.asarray(train_labels), fraction, VALIDATION_SEED)
    return keep, held, f"{how}, carved from the train split"


def _finish(
    x: np.ndarray,
    y: np.ndarray | None,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    info: dict,
    test_fraction: float,
    split_seed: int,
) -> Data:
    """Hold-out split where needed, labels -1 where absent, the info record, tensors."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if y is None:
        y = np.full(len(x), -1, dtype=np.int64)
    if x_test is None:
        tr, te, how = holdout_split(y, test_fraction, split_seed)
        x, y, x_test, y_test = x[tr], y[tr], x[te], y[te]
        info["split"] = how
        info["test_fraction"], info["split_seed"] = test_fraction, split_seed
    else:
        if y_test is None:
            y_test = np.full(len(x_test), -1, dtype=np.int64)
        if tuple(x_test.shape[1:]) != tuple(x.shape[1:]):
            raise DataError(f"test images have shape {tuple(x_test.shape[1:])}, train images {tuple(x.shape[1:])}")
        if (y >= 0).all() != (y_test >= 0).all():
            raise DataError("train and test must both be labeled or both unlabeled")
        info["split"] = "given"
    labeled = bool(len(y)) and bool((y >= 0).all())
    data = Data(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y)),
        torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y_test)),
    )
    info.update(
        shape=list(data.image_shape),
        n_train=len(x),
        n_test=len(x_test),
        labeled=labeled,
        n_classes=int(len(np.unique(np.concatenate([y, y_test])))) if labeled else 0,
        sha256=content_hash(data.train_x, data.train_y, data.test_x, data.test_y),
    )
    data.info = info
    return data


def from_arrays(
    x,
    y=None,
    x_test=None,
    y_test=None,
    *,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: Sequence[int] | None = None,
    name: str = "arrays",
) -> Data:
    """Data from tensors or numpy arrays (see `images_to_nchw` for the accepted shapes and values)."""

    def images(a, where):
        a = np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)
        return resize_images(images_to_nchw(a, where), image_size)

    x = images(x, f"{name}: x")
    y = None if y is None else labels_array(y, len(x), f"{name}: y")
    if x_test is not None:
        x_test = images(x_test, f"{name}: x_test")
        y_test = None if y_test is None else labels_array(y_test, len(x_test), f"{name}: y_test")
    elif y_test is not None:
        raise DataError(f"{name}: y_test given without x_test")
    if (y is None) != (y_test is None) and x_test is not None:
        raise DataError(f"{name}: give labels for both train and test images, or for neither")
    info = {"kind": "arrays", "source": name}
    return _finish(x, y, x_test, y_test, info, test_fraction, split_seed)


def from_dataset(
    dataset,
    test=None,
    *,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: Sequence[int] | None = None,
    name: str = "dataset",
) -> Data:
    """Data from a torch Dataset (or any sequence) of images or (image, label) pairs; `test` likewise.
    Images may be tensors, numpy arrays or PIL images; they are read once into memory."""

    def read(ds, where):
        items, labels = [], []
        for i in range(len(ds)):
            item = ds[i]
            image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) and len(item) == 2 else (item, None)
            if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
                image = np.asarray(pil_8bit(image, f"{where}[{i}]"))
            a = np.asarray(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image)
            if a.ndim == 3 and a.shape[2] in (1, 3) and a.shape[0] not in (1, 3):
                a = a.transpose(2, 0, 1)
            a = images_to_nchw(a[None] if a.ndim in (2, 3) else a, f"{where}[{i}]")
            a = resize_images(a, image_size)
            if items and a.shape[1:] != items[0].shape[1:]:
                raise DataError(
                    f"{where}[{i}]: image of shape {a.shape[1:]}, but {where}[0] has {items[0].shape[1:]}; "
                    "pass image_size=(H, W) to resize them all"
                )
            items.append(a)
            labels.append(label)
        if not items:
            raise DataError(f"{where}: the dataset is empty")
        have = [lab is not None for lab in labels]
        if any(have) and not all(have):
            raise DataError(f"{where}: some items have labels and some do not")
        y = None
        if all(have):
            y = labels_array(np.array([int(lab) for lab in labels]), len(items), where)
        return np.concatenate(items), y

    x, y = read(dataset, name)
    x_test, y_test = read(test, f"{name} (test)") if test is not None else (None, None)
    if test is not None and (y is None) != (y_test is None):
        raise DataError(f"{name}: give labels for both train and test items, or for neither")
    info = {"kind": "dataset", "source": name}
    return _finish(x, y, x_test, y_test, info, test_fraction, split_seed)


# ---------------------------------------------------------------- files
def from_path(
    path: str | os.PathLike,
    *,
    image_size: Sequence[int] | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
    progress: bool = False,
) -> Data:
    """Data from a folder of images, a .npz (x, optional y, x_test, y_test) or a .npy (images only)."""
    path = Path(path)
    if path.is_dir():
        return _from_folder(path, image_size, test_fraction, split_seed, cache_dir, write_cache, progress)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file or folder")
    if path.suffix.lower() not in (".npz", ".npy"):
        raise DataError(f"{path}: expected a folder of images, a .npz or a .npy file")
    _check_array_file(path)  # sizes from the headers, before anything is decompressed or allocated
    try:
        loaded = np.load(path, allow_pickle=False)  # object arrays would need pickle: refused
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read it as {path.suffix} ({' '.join(str(e).split())})") from None
    if isinstance(loaded, np.ndarray):
        arrays = {"x": loaded}
    else:
        with loaded:
            unknown = sorted(set(loaded.files) - {"x", "y", "x_test", "y_test"})
            if unknown or "x" not in loaded.files:
                raise DataError(
                    f"{path}: expected arrays x and optionally y, x_test, y_test; found {', '.join(loaded.files)}"
                )
            try:
                arrays = {k: loaded[k] for k in loaded.files}
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"{path}: cannot read its arrays ({' '.join(str(e).split())})") from None
    data = from_arrays(
        arrays["x"],
        arrays.get("y"),
        arrays.get("x_test"),
        arrays.get("y_test"),
        test_fraction=test_fraction,
        split_seed=split_seed,
        image_size=image_size,
        name=str(path),
    )
    data.info.update(kind=path.suffix.lower()[1:], source=str(path.resolve()))
    return data


def _array_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy header, without reading the data."""
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, _, dtype = read(f)
    return tuple(shape), dtype


def _check_array_file(path: Path) -> None:
    """Refuse an .npy/.npz whose arrays cannot be read as they claim, before any is decompressed or allocated:
    every member's header must describe an array whose bytes are there (not truncated, not more than a zip
    member holds), of a plain dtype, and all of them, as float32 too, must fit in memory."""
    import zipfile

    from ..models.memory import available_memory_bytes

    def check(shape, dtype, stored: int, where: str) -> int:
        if dtype.hasobject:
            raise DataError(f"{where}: cannot read object arrays (they would need pickle)")
        if any(n < 0 for n in shape):
            raise DataError(f"{where}: a negative size in its shape {shape}")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > stored:
            raise DataError(f"{where}: its header claims {shape} {dtype} ({nbytes:,} bytes) but {stored:,} are stored")
        images = int(shape[0]) if shape else 1
        # as stored, as float32 and a split's copy of it; and per image an int64 label, order and index
        return int(np.prod(shape, dtype=object)) * (dtype.itemsize + 8) + images * 24

    need = 0
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                shape, dtype = _array_header(f)
                need += check(shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), str(path))
        else:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    with zf.open(info) as f:
                        shape, dtype = _array_header(f)
                        header = f.tell()
                    need += check(shape, dtype, info.file_size - header, f"{path}, {info.filename}")
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read it as {path.suffix} ({' '.join(str(e).split())[:200]})") from None
    have = available_memory_bytes()
    if need > have:
        raise DataError(f"{path}: its arrays need about {need / 2**30:.3g} GiB; {have / 2**30:.3g} GiB is available")


def pil_8bit(im, where):
    """A PIL image as 8-bit "L" (grey modes) or "RGB" (the rest; alpha dropped). 16-bit grey is scaled by 1/257
    (convert("L") would clip everything above 255); 32-bit integer or float images are refused."""
    from PIL import Image

    if im.mode in SIXTEEN_BIT_MODES:
        grey = np.round(np.asarray(im, dtype=np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(grey, mode="L")
    if im.mode in ("I", "F"):
        raise DataError(f"{where}: 32-bit {im.mode!r} images are not read; save them as 8- or 16-bit")
    return im.convert("L" if im.mode in GRAY_MODES else "RGB")


def _decode(path: str, image_size) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_IMAGE_FILE_BYTES:
                raise DataError(f"{path}: a file over {MAX_IMAGE_FILE_BYTES >> 20} MB is not read as one image")
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:  # the header only: nothing is decoded yet
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{path}: {im.size[0]}x{im.size[1]} pixels, more than the {MAX_IMAGE_PIXELS:,} aelab decodes "
                    "per image; shrink it first"
                )
            im = pil_8bit(im, path)
            if image_size is not None and im.size != (image_size[1], image_size[0]):
                im = im.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read this image ({' '.join(str(e).split())})") from None


def _check_decode_memory(files: list[str], image_size) -> None:
    """Refuse, before decoding anything, a folder whose images cannot fit in memory: N images of the size
    --image-size gives (or the first image's, read from its header) take N x 3 x H x W bytes decoded and four
    times that as float32."""
    from PIL import Image, UnidentifiedImageError

    from ..models.memory import available_memory_bytes

    if image_size is not None:
        h, w = image_size
    else:
        try:
            with Image.open(files[0]) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return  # _decode says what is wrong with it
    need, have = len(files) * 3 * h * w * 5, available_memory_bytes()
    if need > have:
        raise DataError(
            f"{len(files)} images of {h}x{w} pixels need about {need / 2**30:.3g} GiB decoded; "
            f"{have / 2**30:.3g} GiB of memory is available (pass a smaller --image-size)"
        )


def _decode_all(files: list[str], image_size, progress: bool, desc: str) -> np.ndarray:
    """Decode every file (2 threads: Pillow releases the GIL while it decodes) into one uint8 (N, C, H, W)."""
    _check_decode_memory(files, image_size)  # refused before anything is shown or decoded
    from ..progress import Progress

    with Progress(f"{desc}: decoding", total=len(files), unit="img", enabled=progress) as bar:
        bar.phase(f"{len(files)} images")
        return _decode_into(files, image_size, bar)


def _decode_into(files: list[str], image_size, bar) -> np.ndarray:
    images: list[np.ndarray] = []
    first = None
    blocks = [files[i : i + 512] for i in range(0, len(files), 512)]  # one task per block: futures cost too
    from PIL import Image

    # Pillow warns (on stderr, several lines) between 89 and 179 Mpixel and refuses above: the refusal is our one
    # line; the warning is not needed
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for block, decoded in zip(blocks, pool.map(lambda b: [_decode(p, image_size) for p in b], blocks)):
            for path, img in zip(block, decoded):
                if first is None:
                    first = (path, img.shape[:2])
                elif img.shape[:2] != first[1]:
                    raise DataError(
                        f"mixed image sizes: {first[0]} is {first[1][0]}x{first[1][1]} but {path} is "
                        f"{img.shape[0]}x{img.shape[1]}; pass --image-size H,W to resize them all"
                    )
            images += decoded
            bar.update(len(block))
    rgb = any(img.ndim == 3 for img in images)  # grey images among colour ones get three equal channels
    out = np.empty((len(images), 3 if rgb else 1, *first[1]), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = img.transpose(2, 0, 1) if img.ndim == 3 else img[None]
    return out


def _from_folder(root: Path, image_size, test_fraction, split_seed, cache_dir, write_cache, progress) -> Data:
    from . import datasets

    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_test and not has_train:
        raise DataError(f"{root}: has a test/ folder but no train/ folder")
    splits = {"train": root / "train", "test": root / "test"} if has_train else {"train": root}
    listed, empty_classes, notes = {}, [], []
    for split, folder in splits.items():
        files, classes, skipped, empty = _list_split(folder)
        if not files:
            raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        if empty:  # not a class of the data: say so (once the folder has loaded), rather than let a typo'd or
            empty_classes += [os.path.relpath(d, root) for d in empty]  # unfilled folder vanish
            notes.append(
                f"{folder}: {len(empty)} class folder(s) hold no image and are not classes: "
                f"{', '.join(os.path.basename(d) for d in empty[:5])}"
            )
        if len(files) > MAX_IMAGES:
            raise DataError(f"{folder}: {len(files)} images, more than the {MAX_IMAGES} aelab loads")
        listed[split] = (files, classes, skipped)
    if has_test and (listed["train"][1] is None) != (listed["test"][1] is None):
        raise DataError(f"{root}: train/ and test/ must both have class folders, or both be flat")
    all_files = [f for files, _, _ in listed.values() for f in files]
    key = _files_hash(root, all_files, None if image_size is None else list(image_size))
    cache = Path(cache_dir or datasets.data_dir()) / "folders" / f"{key}.npz"
    arrays = _read_cache(cache, {split: len(files) for split, (files, _, _) in listed.items()})
    if arrays is None:
        arrays = {}
        for split, (files, _, _) in listed.items():
            arrays[f"x_{split}"] = _decode_all(files, image_size, progress, f"{root.name}/{split}")
        if write_cache:
            _write_cache(cache, arrays)
    shapes = {a.shape[1:] for k, a in arrays.items()}
    if len(shapes) > 1:
        raise DataError(f"{root}: train and test images differ in size or channels; pass --image-size H,W")
    names = sorted({c for _, classes, _ in listed.values() for c in (classes or [])})
    if has_test and names:
        extra = sorted(set(listed["test"][1]) - set(listed["train"][1]))
        if extra:
            raise DataError(f"{root}/test: class folder {extra[0]} has no counterpart in train/")
    ys = {}
    for split, (files, classes, _) in listed.items():
        index = {c: i for i, c in enumerate(names)}
        ys[split] = None if classes is None else np.array([index[c] for c in classes], dtype=np.int64)
    skipped = [s for _, _, sk in listed.values() for s in sk]
    info = {
        "kind": "folder",
        "source": str(root.resolve()),
        "files_sha256": key,
        "classes": names,
        "skipped_files": len(skipped),
    }
    if skipped:
        info["skipped_examples"] = skipped[:5]
    if empty_classes:
        info["empty_class_folders"] = empty_classes
    x = arrays["x_train"].astype(np.float32) / 255.0
    x_test = arrays["x_test"].astype(np.float32) / 255.0 if "x_test" in arrays else None
    data = _finish(x, ys["train"], x_test, ys.get("test"), info, test_fraction, split_seed)
    for note in notes:  # after everything loaded: a folder that is refused gets its one line and nothing else
        warnings.warn(note, stacklevel=3)
    return data
