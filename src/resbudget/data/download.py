"""Opt-in download of the official archive: checksum-verified, written atomically."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from .._io import atomic_path
from .cifar10 import BINARY, DataError, Format, file_digest, resolve_data_dir


def download_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    fmt: Format = BINARY,
    url: str | None = None,
    expected_md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``fmt``'s archive into the data folder unless a verified copy is there; return its path.

    The bytes go to a temporary file beside the target, are checked against the official md5, and only then renamed
    into place; on any failure the temporary file is removed and an existing file is left untouched.
    """
    root = resolve_data_dir(data_dir)
    if root.suffixes[-2:] == [".tar", ".gz"]:
        root = root.parent
    target = root / fmt.archive
    expected = expected_md5 or fmt.archive_md5
    if target.is_file() and file_digest(target, "md5") == expected:
        return target
    if target.exists():
        raise DataError(
            f"{target} exists but its md5 is not {expected}; move it away first (it is not overwritten)"
        )
    source = url or fmt.url
    md5 = hashlib.md5()
    missing = [p for p in (root, *root.parents) if not p.exists()]  # the folders a failure must not leave behind
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(source, timeout=timeout) as response, \
                open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                md5.update(chunk)
                out.write(chunk)
            out.flush()
            if md5.hexdigest() != expected:
                raise DataError(
                    f"download from {source}: md5 mismatch: expected {expected}, got {md5.hexdigest()} "
                    f"({tmp.stat().st_size:,} bytes); nothing was written"
                )
    except (urllib.error.URLError, OSError) as e:
        _remove_empty(missing)
        raise DataError(f"download from {source} failed: {e}; nothing was written") from None
    except BaseException:
        _remove_empty(missing)
        raise
    return target


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


__all__ = ["download_cifar10"]
