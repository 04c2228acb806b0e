"""File reads and writes shared by every layer. A write is atomic: a crash never leaves a half-written file behind.
A read is bounded: only a regular file is opened (never a FIFO, a device or a link loop), and no more than the bound
stated for its kind is read, before anything parses it; parsed data deeper than :data:`MAX_DEPTH` is refused."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def usual_mode() -> int:
    """The permissions a newly created file gets under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and some writers (safetensors) replace the file with their own 0600 one: the final file
        # gets the usual permissions, as every other file written here
        os.chmod(tmp_path, usual_mode())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def publish_new(tmp: str | os.PathLike, path: str | os.PathLike, error: type[Exception] = FileExistsError) -> None:
    """Move the finished file ``tmp`` to ``path`` only if ``path`` still does not exist (a hard link, which the kernel
    refuses over an existing name): a file another process wrote there meanwhile is never replaced."""
    tmp, path = Path(tmp), Path(path)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise error(f"{path} appeared while this one was being written; it is kept, and this one is not "
                    "written: choose another name") from None
    except OSError:  # a file system without hard links: an exclusive create claims the name, then the rename
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise error(f"{path} appeared while this one was being written; it is kept, and this one is not "
                        "written: choose another name") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# --- bounded reads ----------------------------------------------------------------------------------------------------
KIB, MIB = 1024, 1024 * 1024
# The most a file of each kind may hold: far above any real one, far below what could hurt the machine.
MAX_BYTES = {
    "config": 1 * MIB,  # a config, base, spec or search-space TOML file
    "json": 16 * MIB,  # summary.json, ensemble.json
    "log": 256 * MIB,  # metrics.jsonl: one row per epoch
    "image": 64 * MIB,  # an image file given to predict (its pixel count is bounded separately)
    "manifest": 64 * KIB,  # a data manifest: checksums and counts
    "batch": 256 * MIB,  # a CIFAR-10 batch file: 30.7 MB (binary) or 31 MB (python) in the official set
    "spec": 64 * KIB,  # the model spec's JSON in a checkpoint's metadata: a few hundred characters
}
MAX_DEPTH = 32  # nesting of parsed TOML or JSON: configs are 2 deep, a training state's structure about 10
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _size_text(n: int) -> str:
    return f"{n / MIB:,.1f} MiB" if n >= MIB else f"{n / KIB:,.0f} KiB" if n >= KIB else f"{n} bytes"


def regular_file(path: str | os.PathLike, error: type[Exception] = ValueError, limit: int | None = None,
                 what: str = "a file") -> os.stat_result:
    """The ``stat`` of ``path`` if it is a regular file (links followed) of at most ``limit`` bytes; else ``error``
    in one line: missing, a link loop, a folder, a FIFO, a device or a socket, or too large."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except ValueError:  # a NUL byte in the name
        raise error(f"{str(path)!r} is not a valid file name") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(f"{path} is a loop of symbolic links, not {what}") from None
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{path} is {kind}, not {what}")
    if limit is not None and st.st_size > limit:
        raise error(f"{path} is {_size_text(st.st_size)}, over the {_size_text(limit)} {what} may be")
    return st


def read_bounded(path: str | os.PathLike, limit: int, error: type[Exception] = ValueError,
                 what: str = "a file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before it is opened, and again while it is
    read, should it grow or be swapped for something else)."""
    path = Path(path)
    regular_file(path, error, limit, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in meanwhile never blocks
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path} is not a regular file, so not {what}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path} is over the {_size_text(limit)} {what} may be")
    return data


def check_depth(data: object, error: type[Exception] = ValueError, where: str = "data",
                limit: int = MAX_DEPTH) -> None:
    """``error`` if lists and tables in ``data`` nest deeper than ``limit`` (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else None
        if children is None:
            continue
        if depth > limit:
            raise error(f"{where} nests lists or tables more than {limit} deep")
        stack.extend((child, depth + 1) for child in children)


def parse_json(text: str | bytes, error: type[Exception] = ValueError, where: str = "JSON") -> object:
    """JSON text parsed, with its nesting bounded; a syntax error or too deep a nesting raises ``error`` in one
    line naming ``where``."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise error(f"{where} nests lists or tables more than {MAX_DEPTH} deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{where} is not valid JSON ({e})") from None
    check_depth(data, error, where)
    return data


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError, kind: str = "json") -> object:
    """A JSON file, read within the bound of its kind (:data:`MAX_BYTES`) and parsed with its nesting bounded."""
    return parse_json(read_bounded(path, MAX_BYTES[kind], error, "a JSON file"), error, str(path))


def read_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError) -> list[dict]:
    """A JSON-lines log (one object per line, blank lines skipped), within :data:`MAX_BYTES` ``["log"]``."""
    text = read_bounded(path, MAX_BYTES["log"], error, "a JSON-lines log").decode("utf-8", errors="replace")
    rows = [parse_json(line, error, f"{path}, line {i}") for i, line in enumerate(text.splitlines(), 1)
            if line.strip()]
    bad = next((i for i, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise error(f"{path}: row {bad} is not a JSON object")
    return rows


def parse_toml(text: str, error: type[Exception] = ValueError, where: str = "TOML") -> dict:
    import tomllib

    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise error(f"{where} nests lists or tables more than {MAX_DEPTH} deep") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{where} is not valid TOML: {e}") from None
    check_depth(data, error, where)
    return data


def read_toml(path: str | os.PathLike, error: type[Exception] = ValueError) -> dict:
    """Parse a TOML file (at most :data:`MAX_BYTES` ``["config"]``); a missing, special or oversized file, a syntax
    error or too deep a nesting raises ``error`` naming the file."""
    path = Path(path)
    data = read_bounded(path, MAX_BYTES["config"], error, "a TOML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text, so not a TOML file ({e.reason} at byte {e.start})") from None
    return parse_toml(text, error, str(path))
