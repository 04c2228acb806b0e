"""Find, verify and load CIFAR-10 from the official binary or python version (folder or .tar.gz).

Nothing is trained on data that has not been verified: every file's checksum against the official values, then the
record counts and the label range. Reading the python version never unpickles arbitrary objects (only the numpy
array constructors the official pickles use are allowed), and it only happens after the md5 matched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import MAX_BYTES, parse_json, read_bounded, regular_file
from .dataset import CLASSES, Dataset, Split

ENV_VAR = "RESBUDGET_DATA_DIR"
MANIFEST_ENV_VAR = "RESBUDGET_DATA_MANIFEST"  # checksums and counts of a set that is not the official one
RECORD_BYTES = 1 + 3 * 32 * 32


class DataError(RuntimeError):
    """Missing, corrupted or malformed dataset files."""


@dataclass(frozen=True)
class FileCheck:
    name: str
    algorithm: str  # "sha256" | "md5"
    digest: str
    size: int | None = None


@dataclass(frozen=True)
class Format:
    """One official distribution of CIFAR-10."""

    name: str
    folder: str
    archive: str
    archive_md5: str
    archive_size: int
    train_files: tuple[FileCheck, ...]
    test_files: tuple[FileCheck, ...]

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"


def _bin(name: str, sha256: str) -> FileCheck:
    return FileCheck(f"{name}.bin", "sha256", sha256, 10_000 * RECORD_BYTES)


BINARY = Format("binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
                170_052_171, (
                    _bin("data_batch_1", "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5"),
                    _bin("data_batch_2", "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed"),
                    _bin("data_batch_3", "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67"),
                    _bin("data_batch_4", "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48"),
                    _bin("data_batch_5", "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add")),
                (_bin("test_batch", "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b"),))
# The python version's pickles have no fixed size; their md5 is what the CIFAR-10 page publishes.
PYTHON = Format("python", "cifar-10-batches-py", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                170_498_071, (
                    FileCheck("data_batch_1", "md5", "c99cafc152244af753f735de768cd75f"),
                    FileCheck("data_batch_2", "md5", "d4bba439e000b95fd0a9bffe97cbabec"),
                    FileCheck("data_batch_3", "md5", "54ebc095f3ab1f0389bbae665268c751"),
                    FileCheck("data_batch_4", "md5", "634d18415352ddfa80567beed471001a"),
                    FileCheck("data_batch_5", "md5", "482c414d41f54cd18b22e5b47cb7c3cb")),
                (FileCheck("test_batch", "md5", "40351d587109b95175f43aff81a1287e"),))
FORMATS = (BINARY, PYTHON)


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "resbudget" / "cifar10"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else $RESBUDGET_DATA_DIR, else the cache folder."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return default_data_dir()


def _digest(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def file_digest(path: Path, algorithm: str) -> str:
    regular_file(path, DataError, what="a data file")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_bytes(data: bytes, check: FileCheck, where: str) -> None:
    """Reject ``data`` (read from ``where``) unless its size and checksum are the official ones."""
    if check.size is not None and len(data) != check.size:
        raise DataError(
            f"{where}: expected {check.size:,} bytes, found {len(data):,} (truncated or not the official file); "
            f"delete it and fetch the dataset again"
        )
    actual = _digest(data, check.algorithm)
    if actual != check.digest:
        raise DataError(
            f"{where}: {check.algorithm} mismatch: expected {check.digest}, got {actual} (corrupted or modified "
            f"file); delete it and fetch the dataset again"
        )


# --- decoding ---------------------------------------------------------------------------------------------------
def decode_binary(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) % RECORD_BYTES:
        raise DataError(f"{where}: {len(data):,} bytes is not a whole number of {RECORD_BYTES}-byte records")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The official python-version pickles hold dicts, lists, bytes and numpy arrays; nothing else is allowed."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch file")


def decode_python(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # any malformed content is a data error naming the file
        raise DataError(f"{where}: not a CIFAR-10 python-version batch ({type(e).__name__}: {e})") from None
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    return images, labels


# --- locating ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Located:
    fmt: Format
    path: Path  # a folder holding the batch files, or a .tar.gz archive
    is_archive: bool


def locate(data_dir: str | os.PathLike | None = None) -> Located:
    """Find one official distribution at ``data_dir`` (see :func:`resolve_data_dir`), or say where we looked."""
    root = resolve_data_dir(data_dir)
    for fmt in FORMATS:
        if root.is_file() and root.name == fmt.archive:
            return Located(fmt, root, True)
    for fmt in FORMATS:
        for folder in (root, root / fmt.folder):
            if (folder / fmt.train_files[0].name).exists() or (folder / fmt.test_files[0].name).exists():
                return Located(fmt, folder, False)
        archive = root / fmt.archive
        if archive.is_file():
            return Located(fmt, archive, True)
    raise DataError(
        f"CIFAR-10 not found in {root}: looked for the batch files there and for cifar-10-batches-bin/, "
        f"cifar-10-batches-py/ or their .tar.gz archive in it; point --data-dir (or ${ENV_VAR}) at the folder "
        f"holding one of them (or at your own images: a folder holding train/CLASS/*, or an .npz file), or pass "
        f"--download to fetch {BINARY.url} into it"
    )


def _read_members(located: Located, names: list[str]) -> dict[str, bytes]:
    """Read the named batch files from a folder or straight out of the archive (nothing is extracted)."""
    out: dict[str, bytes] = {}
    if not located.is_archive:
        for name in names:
            path = located.path / name
            if not path.exists() and not path.is_symlink():
                raise DataError(f"{path}: missing (the {located.fmt.name} version needs {', '.join(names)})")
            out[name] = read_bounded(path, MAX_BYTES["batch"], DataError, "a batch file")
        return out
    verify_archive(located.path, located.fmt)
    with tarfile.open(located.path, "r:gz") as tar:
        for name in names:
            member_name = f"{located.fmt.folder}/{name}"
            try:
                member = tar.getmember(member_name)
            except KeyError:
                raise DataError(f"{located.path}: has no member {member_name}") from None
            f = tar.extractfile(member)
            if f is None:
                raise DataError(f"{located.path}: member {member_name} is not a regular file")
            out[name] = f.read()
    return out


def verify_archive(path: Path, fmt: Format, expected_md5: str | None = None) -> None:
    expected = expected_md5 or fmt.archive_md5
    actual = file_digest(path, "md5")
    if actual != expected:
        size = path.stat().st_size
        raise DataError(
            f"{path}: md5 mismatch: expected {expected}, got {actual} ({size:,} bytes; the official archive has "
            f"{fmt.archive_size:,}); delete it and download again"
        )


def _load_split(located: Located, checks: tuple[FileCheck, ...], expected_count: int, split: str) -> Split:
    decode: Callable[[bytes, str], tuple[np.ndarray, np.ndarray]] = (
        decode_binary if located.fmt.name == "binary" else decode_python
    )
    files = _read_members(located, [c.name for c in checks])
    images, labels = [], []
    for check in checks:
        where = f"{located.path}/{check.name}" if not located.is_archive else f"{located.path}:{check.name}"
        check_bytes(files[check.name], check, where)
        x, y = decode(files[check.name], where)
        if y.size and (y.min() < 0 or y.max() >= len(CLASSES)):
            raise DataError(f"{where}: labels outside 0..{len(CLASSES) - 1} (found {y.min()}..{y.max()})")
        images.append(x)
        labels.append(y)
    count = sum(len(y) for y in labels)
    if expected_count and count != expected_count:
        raise DataError(f"{located.path}: the {split} split has {count:,} records, expected {expected_count:,}")
    return Split(_joined(images, torch.uint8), _joined(labels, torch.int64))


def _joined(arrays: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    """The arrays one after the other in one new tensor, written once into memory torch allocates. (A new numpy array
    of this size asks the kernel for huge pages, whose compaction took seconds on some machines.)"""
    out = torch.empty((sum(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=dtype)
    start = 0
    for a in arrays:
        out[start:start + len(a)].numpy()[...] = a
        start += len(a)
    return out


def read_manifest(path: str | os.PathLike) -> tuple[Format, tuple[int, int]]:
    """A data manifest: the checksums and record counts of a set that is not the official CIFAR-10 but has its
    layout (a synthetic set for tests, a derived set), as JSON ``{"format": "binary" | "python", "train_files":
    [{"name", "algorithm", "digest", "size"}, ...], "test_files": [...], "counts": [train, test]}``, and for an archive
    its ``"archive_md5"``."""
    path = Path(path)
    try:
        data = parse_json(read_bounded(path, MAX_BYTES["manifest"], DataError, "a data manifest"), DataError, str(path))
        fmt = next(f for f in FORMATS if f.name == data["format"])
        files = {key: tuple(FileCheck(c["name"], c["algorithm"], c["digest"], c.get("size")) for c in data[key])
                 for key in ("train_files", "test_files")}
        counts = tuple(int(n) for n in data["counts"])
        archive = {"archive_md5": str(data["archive_md5"])} if "archive_md5" in data else {}
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        raise DataError(f"{path}: not a valid data manifest ({type(e).__name__}: {e})") from None
    if len(counts) != 2 or min(counts) < 1 or not files["train_files"] or not files["test_files"]:
        raise DataError(f"{path}: a data manifest needs train and test files and two positive counts")
    return dataclasses.replace(fmt, **files, **archive), counts


def load_cifar10(data_dir: str | os.PathLike | None = None, *, manifest: str | os.PathLike | None = None) -> Dataset:
    """Load and verify both splits, against the official checksums and counts, or against those of ``manifest``
    (else $RESBUDGET_DATA_MANIFEST; :func:`read_manifest`) for a set that is not the official one. The result
    records the checksums it was verified against."""
    located = locate(data_dir)
    fmt, expected_counts = located.fmt, (50_000, 10_000)
    manifest = manifest or os.environ.get(MANIFEST_ENV_VAR) or None
    if manifest is not None:
        fmt, expected_counts = read_manifest(manifest)
        if fmt.name != located.fmt.name:
            raise DataError(f"{manifest} describes the {fmt.name} version, but {located.path} holds the "
                            f"{located.fmt.name} version")
    located = Located(fmt, located.path, located.is_archive)
    train = _load_split(located, fmt.train_files, expected_counts[0], "train")
    test = _load_split(located, fmt.test_files, expected_counts[1], "test")
    checksums = {c.name: f"{c.algorithm}:{c.digest}" for c in (*fmt.train_files, *fmt.test_files)}
    return Dataset(train=train, test=test, source=str(located.path), checksums=checksums)


def class_counts(labels: torch.Tensor, num_classes: int = len(CLASSES)) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, stratified (train_index, val_index): each class gives its share of ``val_size``."""
    n = len(labels)
    if not 0 < val_size < n:
        raise ValueError(f"data.val_size must be between 1 and {n - 1} (the training set has {n:,} images), "
                         f"got {val_size}")
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels).double()
    exact = counts * val_size / n
    quota = exact.floor().long()
    # Largest remainders take the images left over by rounding down.
    leftover = val_size - int(quota.sum())
    if leftover:
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:leftover]] += 1
    val = []
    for c, q in enumerate(quota.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        val.append(idx[torch.randperm(len(idx), generator=g)[:q]])
    val_index = torch.sort(torch.cat(val)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_index] = False
    return torch.nonzero(mask).flatten(), val_index
