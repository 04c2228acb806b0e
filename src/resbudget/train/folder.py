"""A run folder held by one process: a new run needs it empty, a resumed one reads its config, and an exclusive lock
keeps every other run or command from writing there while it trains."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .._io import read_toml
from .config import Config, ConfigError, config_from_dict, config_to_dict

try:
    import fcntl
except ImportError:  # not on POSIX (Windows): run folders are not locked there
    fcntl = None


class RunFolderError(RuntimeError):
    pass


def open_run_folder(out_dir: Path, config: Config | None, resume: bool) -> Config:
    """The run's config. A new run needs an empty or absent folder; ``resume`` reads the folder's own config (a given
    ``config`` must equal it). Nothing is written: :func:`hold_run_folder` takes the folder."""
    if resume:
        cfg_path = out_dir / "config.toml"
        if not cfg_path.is_file():
            raise RunFolderError(f"--resume: {out_dir} holds no run (no config.toml)")
        try:
            stored = config_from_dict(read_toml(cfg_path, RunFolderError), stored=True)
        except ConfigError as e:
            raise RunFolderError(f"{cfg_path}: {e}") from None
        if config is not None and config_to_dict(config) != config_to_dict(stored):
            raise RunFolderError(
                f"--resume: the given config differs from the one stored in {cfg_path}; resume without a config "
                "argument, or start a new run in another --out folder"
            )
        return stored
    if config is None:
        raise ConfigError("a config is needed to start a run")
    check_new_run_folder(out_dir)
    return config


def check_new_run_folder(out_dir: Path) -> None:
    """A new run needs ``out_dir`` absent or an empty folder (``RunFolderError`` otherwise)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"{out_dir} is not a folder; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunFolderError(
            f"{out_dir} is not empty; pass --resume to continue the run in it, or choose another --out folder "
            "(nothing in it is overwritten)"
        )


@contextlib.contextmanager
def hold_run_folder(out_dir: Path, resume: bool) -> Iterator[None]:
    """Create ``out_dir`` if needed and hold it for the whole run: an exclusive lock on the folder (``flock``, which
    the kernel releases when the process ends, however it ends), taken before any data is loaded. A second run into
    the folder, or a ``--resume`` while it runs, is refused; so is a folder that cannot be written. Under the lock a
    new run checks again that the folder is empty, and a resumed one removes the temporary files a killed run left.
    If the run fails before writing anything, a folder it created is removed again."""
    try:
        out_dir.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False
    except OSError as e:
        raise RunFolderError(f"{out_dir}: cannot create the run folder ({e.strerror or e})") from None
    if not out_dir.is_dir():
        raise RunFolderError(f"{out_dir} is not a folder")
    with lock_run_folder(out_dir, "or choose another --out folder"):
        try:
            with tempfile.TemporaryFile(dir=out_dir):
                pass
        except OSError as e:
            raise RunFolderError(f"{out_dir}: cannot write to the run folder ({e.strerror or e})") from None
        if not resume and any(out_dir.iterdir()):
            raise RunFolderError(f"{out_dir} is not empty; pass --resume to continue the run in it, or choose "
                                 "another --out folder (nothing in it is overwritten)")
        for leftover in out_dir.glob(".*.tmp"):  # atomic writes cut short by a killed run
            leftover.unlink(missing_ok=True)
        try:
            yield
        except BaseException:
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            raise


@contextlib.contextmanager
def lock_run_folder(out_dir: Path, advice: str = "") -> Iterator[None]:
    """Hold the exclusive lock of a run folder (``flock`` on the folder, which the kernel releases when the process
    ends, however it ends): every command that writes into a run folder holds it, so none writes while a run trains
    there or another command writes. Taken without waiting: a folder in use is refused."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunFolderError(f"{out_dir} is in use by another resbudget run or command; wait for it to end"
                                     + (f", {advice}" if advice else "")) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def check_folder(out_dir: Path) -> None:
    """A run stops, writing nothing more, where its folder (or the config.toml in it) has gone while it trained:
    what it would write would otherwise make a folder that looks like a run but cannot be read as one."""
    if not (out_dir / "config.toml").is_file():
        raise RunFolderError(f"{out_dir} (or its config.toml) was removed while the run trained in it; the run stops "
                             "here and writes nothing more")
