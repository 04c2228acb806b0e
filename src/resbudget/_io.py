"""Atomic file writes shared by every layer: a crash never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        # mkstemp makes 0600, and some writers (safetensors) replace the file with their own 0600 one: the final file
        # gets the usual permissions, as every other file written here
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_toml(path: str | os.PathLike, error: type[Exception] = ValueError) -> dict:
    """Parse a TOML file; a missing file or a syntax error raises ``error`` naming the file."""
    import tomllib

    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a TOML file") from None
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text, so not a TOML file ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
