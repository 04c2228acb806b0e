"""Your own images: a data set given as image folders (``ROOT/train/CLASS/*``, ``ROOT/test/CLASS/*``) or as arrays
(an ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test``, and optionally ``classes``).

Class names come from the folder names (sorted) or the archive's ``classes``; 2 to :data:`MAX_CLASSES` of them.
Without ``test/``, a seeded, stratified share of each class (:data:`HELD_OUT`) is held out as the test split. Every
image is brought to the net's input size as ``predict`` brings one (data/images.py), and the set is standardised with
its own training images' mean and std. Image folders are decoded once into a cache that is used only while the
checksums of the files it came from still match; bad input is refused in one line before anything is trained.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import MAX_BYTES
from .cifar10 import DataError, stratified_split
from .dataset import Dataset, Normalization, Split
from .images import ImageError, load_image, resize_images

MAX_CLASSES = 1000
MAX_IMAGES = 1_000_000  # per data set (both splits): more is refused before any is decoded
MAX_ARCHIVE_BYTES = 16 * 2**30  # an .npz larger than this is refused before it is read
HELD_OUT = 1 / 6  # without test/: the share of each class held out as the test split (CIFAR-10's 10,000 of 60,000)
HELD_OUT_SEED = 0
CACHE_VERSION = 1  # bumped when the way images are decoded changes: older caches are then decoded again


def held_out(images: int, classes: int) -> int:
    """How many of a set's ``images`` are held out as its test split where it comes without one (at least one a
    class)."""
    return max(classes, round(images * HELD_OUT))


def is_image_folders(path: Path) -> bool:
    """Whether ``path`` is laid out as image folders (a ``train`` folder inside it)."""
    return path.is_dir() and (path / "train").is_dir()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_folders(split_dir: Path) -> dict[str, Path]:
    """The class folders of one split, by name (sorted); anything else there is an error naming it."""
    folders = {}
    with os.scandir(split_dir) as entries:
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            if not Path(entry.path).is_dir():  # follows a link to a folder; a looping link is no folder
                raise DataError(f"{entry.path}: {split_dir} must hold one folder per class, and this is not a folder")
            folders[entry.name] = Path(entry.path)
            if len(folders) > MAX_CLASSES:
                raise DataError(f"{split_dir} holds more than {MAX_CLASSES:,} class folders")
    return dict(sorted(folders.items()))


def _image_files(class_dir: Path, budget: int) -> list[Path]:
    """The files of one class folder (sorted, hidden ones left out), at most ``budget`` of them."""
    files = []
    with os.scandir(class_dir) as entries:
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:  # a link that loops
                is_dir = is_file = False
            if is_dir:
                raise DataError(f"{entry.path}: a class folder holds image files only (folders inside it are not read)")
            if not is_file:  # a broken or looping link, a pipe, a socket
                raise DataError(f"{entry.path}: not a regular file")
            files.append(Path(entry.path))
            if len(files) > budget:
                raise DataError(f"{class_dir.parent.parent}: more than {MAX_IMAGES:,} images; a data set is read "
                                f"into memory whole, so larger ones are refused")
    return sorted(files)


@dataclass(frozen=True)
class _Listing:
    """The files of an image-folder data set: per split, (file, label) in a fixed order, and the class names."""

    classes: tuple[str, ...]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]] | None


def list_classes(root: Path) -> dict[str, Path]:
    """The class folders of the training split, by name: at least 2 of them."""
    train_dirs = _class_folders(root / "train")
    if len(train_dirs) < 2:
        raise DataError(f"{root / 'train'} holds {len(train_dirs)} class folder(s); a classifier needs at least 2")
    return train_dirs


def list_image_folders(root: Path) -> _Listing:
    """The files and labels of image folders, checked: at least 2 classes, none empty, the test split's classes
    among the training split's, a bounded number of files."""
    train_dirs = list_classes(root)
    classes = tuple(train_dirs)
    left = MAX_IMAGES

    def split_files(dirs: dict[str, Path]) -> list[tuple[Path, int]]:
        nonlocal left
        out = []
        for name, folder in dirs.items():
            files = _image_files(folder, left)
            if not files:
                raise DataError(f"{folder}: the class {name!r} has no images")
            left -= len(files)
            out += [(f, classes.index(name)) for f in files]
        return out

    train = split_files(train_dirs)
    test = None
    if (root / "test").exists():
        if not (root / "test").is_dir():
            raise DataError(f"{root / 'test'} is not a folder")
        test_dirs = _class_folders(root / "test")
        unknown = [n for n in test_dirs if n not in train_dirs]
        if unknown:
            raise DataError(f"{root / 'test'}: class {unknown[0]!r} has no training images (train/ has "
                            f"{', '.join(classes)})")
        if not test_dirs:
            raise DataError(f"{root / 'test'} holds no class folders")
        test = split_files(test_dirs)
    return _Listing(classes, train, test)


def _fingerprint(files: list[tuple[Path, int]], root: Path) -> str:
    """sha256 over every file's path (within ``root``), label and content: what a cache is checked against."""
    h = hashlib.sha256()
    for path, label in files:
        if path.stat().st_size > MAX_BYTES["image"]:  # before reading it: an image file is never this large
            raise DataError(f"{path}: {path.stat().st_size:,} bytes, over the {MAX_BYTES['image']:,} an image file "
                            "may have; remove it or move it out of the data set")
        h.update(f"{path.relative_to(root).as_posix()}\0{label}\0".encode())
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def _decode(files: list[tuple[Path, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            images[i] = load_image(path, size)[0]
        except ImageError as e:
            raise DataError(f"{e}; remove it or move it out of the data set") from None
    return images, np.array([label for _, label in files], dtype=np.int64)


def cache_folder() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "resbudget" / "datasets"


def _cached(root: Path, size: int, fingerprint: str, decode) -> dict[str, np.ndarray]:  # noqa: ANN001
    """The decoded arrays from the cache where its fingerprint matches the files, else decoded and cached."""
    key = hashlib.sha256(f"{root.resolve()}\0{size}\0{CACHE_VERSION}".encode()).hexdigest()[:24]
    path = cache_folder() / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["fingerprint"]) == fingerprint:
                    return {k: stored[k] for k in stored.files if k != "fingerprint"}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a cache that cannot be read is decoded again
    arrays = decode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, fingerprint=np.array(fingerprint), **arrays)
        os.replace(partial, path)
    except OSError:
        pass  # no room or no write access: the data still loads, decoded again next time
    return arrays


def load_image_folders(root: str | os.PathLike, size: int = 32) -> Dataset:
    """Image folders as a :class:`Dataset` of ``size`` x ``size`` images (see the module's description)."""
    root = Path(root)
    listing = list_image_folders(root)
    files = listing.train + (listing.test or [])
    fingerprint = _fingerprint(files, root)

    def decode() -> dict[str, np.ndarray]:
        x_train, y_train = _decode(listing.train, size)
        out = {"x_train": x_train, "y_train": y_train}
        if listing.test is not None:
            out["x_test"], out["y_test"] = _decode(listing.test, size)
        return out

    arrays = _cached(root, size, fingerprint, decode)
    return _dataset(arrays, listing.classes, f"{root} (image folders)", {"image folders": f"sha256:{fingerprint}"})


def load_arrays(path: str | os.PathLike, size: int = 32, check_only: bool = False) -> Dataset:
    """An ``.npz`` archive as a :class:`Dataset`: ``x_train``/``x_test`` uint8 N x H x W x 3, ``y_train``/``y_test``
    integer labels, ``classes`` (optional) the class names; images not ``size`` square are brought to it.
    ``check_only``: the labels and class names alone are read (the images are left empty)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is not a file")
    if path.stat().st_size > MAX_ARCHIVE_BYTES:
        raise DataError(f"{path} is over {MAX_ARCHIVE_BYTES / 2**30:.0f} GiB; a data set is read into memory whole")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x_train", "y_train") if k not in archive.files]
            if missing:
                raise DataError(f"{path}: no {missing[0]!r} array (an .npz data set holds x_train, y_train, x_test, "
                                "y_test and optionally classes)")
            wanted = ("y_train", "y_test", "classes") if check_only else ("x_train", "y_train", "x_test", "y_test",
                                                                          "classes")
            arrays = {k: archive[k] for k in wanted if k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {' '.join(str(e).split())})"
                        ) from None
    if check_only:  # the labels: a split of no images (its test split None where the archive has none)
        empty = torch.empty(0, 3, size, size, dtype=torch.uint8)
        test = Split(empty, torch.from_numpy(arrays["y_test"])) if "y_test" in arrays else None
        return Dataset(Split(empty, torch.from_numpy(arrays["y_train"])), test, str(path),
                       classes=_archive_classes(path, arrays.get("classes"), _label_count(arrays)))
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: x_test and y_test come together")
    classes = _archive_classes(path, arrays.get("classes"), _label_count(arrays))
    out = {}
    for split in ("train", "test"):
        if f"x_{split}" in arrays:
            x, y = _check_arrays(path, split, arrays[f"x_{split}"], arrays[f"y_{split}"], len(classes))
            out[f"x_{split}"], out[f"y_{split}"] = resize_images(x, size), y
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return _dataset(out, classes, f"{path} (arrays)", {path.name: f"sha256:{digest}"})


def _label_count(arrays: dict[str, np.ndarray]) -> int:
    """One more than the largest label (0 where there is none)."""
    labels = [arrays[k] for k in ("y_train", "y_test") if k in arrays and arrays[k].size]
    try:
        return max(int(y.max()) for y in labels) + 1 if labels else 0
    except (TypeError, ValueError):
        return 0  # not integers: the labels' own check says so


def _archive_classes(path: Path, names: np.ndarray | None, count: int) -> tuple[str, ...]:
    if names is None:
        classes = tuple(str(i) for i in range(count))
    else:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: classes must be a 1-D array of names")
        classes = tuple(str(n) for n in names.tolist())
        if count > len(classes):
            raise DataError(f"{path}: a label is {count - 1}, but classes names only {len(classes)}")
        if len(set(classes)) != len(classes):
            raise DataError(f"{path}: two classes have the same name")
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise DataError(f"{path}: {len(classes)} class(es); a classifier needs 2 to {MAX_CLASSES:,}")
    return classes


def _check_arrays(path: Path, split: str, x: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """(images N x 3 x H x W, labels int64) of one split, checked."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise DataError(f"{path}: x_{split} must be uint8 N x H x W x 3 (RGB), got {x.dtype} of shape {x.shape}")
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
        raise DataError(f"{path}: y_{split} must be {len(x):,} integer labels (one per image of x_{split}), got "
                        f"{y.dtype} of shape {y.shape}")
    if not len(x):
        raise DataError(f"{path}: x_{split} holds no images")
    if len(x) > MAX_IMAGES:
        raise DataError(f"{path}: x_{split} holds {len(x):,} images, over the {MAX_IMAGES:,} read here")
    if y.min() < 0 or y.max() >= classes:
        raise DataError(f"{path}: y_{split} holds labels outside 0..{classes - 1}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y.astype(np.int64)


def _dataset(arrays: dict[str, np.ndarray], classes: tuple[str, ...], source: str,
             checksums: dict[str, str]) -> Dataset:
    """The splits (the test split held out of the training images where there is none), each class present in the
    training split, standardised with the training images' own mean and std."""
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    empty = [classes[c] for c, n in enumerate(torch.bincount(y, minlength=len(classes)).tolist()) if n == 0]
    if empty:
        raise DataError(f"{source}: the class {empty[0]!r} has no training images")
    if "x_test" in arrays:
        train, test = Split(x, y), Split(torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"]))
    else:
        if len(y) < 2 * len(classes):
            raise DataError(f"{source}: {len(y)} images are too few to hold a test split out of them")
        keep, held = stratified_split(y, held_out(len(y), len(classes)), HELD_OUT_SEED)
        train, test = Split(x[keep], y[keep]), Split(x[held], y[held])
        source += f"; test split: {len(held):,} images held out of the training images (stratified, seed 0)"
    norm = Normalization.of(train.images)
    return Dataset(Split(train.images, train.labels, norm), Split(test.images, test.labels, norm), source,
                   checksums, classes)
