"""Shared fixtures and helpers. Everything but the data-format tests runs on a synthetic CIFAR-10
(``resbudget.data.synthetic_cifar10``); the tests that need the real files ask for ``data_dir`` and are skipped,
saying so, where it is not found. Where $RESBUDGET_DATA_DIR is set (as the README's test command and CI set it),
missing data fails them instead."""

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from resbudget.models import ModelSpec

REPO = Path(__file__).resolve().parents[1]
TINY = ModelSpec(stem_width=8, stage_widths=(8, 16), stage_blocks=(1, 1), stage_strides=(1, 2))
TINY_SETS = ("model.stem_width=8", "model.stage_widths=[8, 16]", "model.stage_blocks=[1, 1]",
             "model.stage_strides=[1, 2]")


def tiny_config(*sets: str):
    """The study's recipe on the TINY net: 2 epochs of batch 64 at lr 0.05; ``sets`` on top."""
    from resbudget.train import load_config

    return load_config("shallow", [*TINY_SETS, "train.epochs=2", "train.batch_size=64", "train.eval_batch_size=128",
                                   "optim.lr=0.05", *sets])


# set by pytest for each test, and by torch on first use (where its compiler caches go): not the tests' doing
OWN_VARIABLES = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_", "TRITON_")


def _global_state() -> dict:
    """What one test could change for every test after it: torch's process-wide settings, the environment and the
    working folder. Not cudnn.benchmark, which a run on a GPU turns on for its process by design."""
    import torch

    return {"torch threads": torch.get_num_threads(), "default dtype": torch.get_default_dtype(),
            "grad mode": torch.is_grad_enabled(),
            "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
            "mkldnn": torch.backends.mkldnn.enabled,
            "float32 matmul precision": torch.get_float32_matmul_precision(),
            "environment": {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)},
            "working folder": os.getcwd()}


@pytest.fixture(autouse=True)
def _no_leaked_state():
    """Every test leaves the process as it found it: a test that changes a global setting fails, naming it (the
    setting is put back, so the tests after it are not affected). The suite then runs the same in any order."""
    import torch

    before = _global_state()
    yield
    after = _global_state()
    leaked = [name for name in before if before[name] != after[name]]
    if after["torch threads"] != before["torch threads"]:
        torch.set_num_threads(before["torch threads"])
    if after["default dtype"] != before["default dtype"]:
        torch.set_default_dtype(before["default dtype"])
    torch.set_grad_enabled(before["grad mode"])
    torch.use_deterministic_algorithms(before["deterministic algorithms"])
    torch.backends.mkldnn.enabled = before["mkldnn"]
    torch.set_float32_matmul_precision(before["float32 matmul precision"])
    for key in set(after["environment"]) - set(before["environment"]):
        del os.environ[key]
    os.environ.update(before["environment"])
    os.chdir(before["working folder"])
    if leaked:
        changed = sorted(k for k in set(before["environment"]) | set(after["environment"])
                         if before["environment"].get(k) != after["environment"].get(k))
        detail = f" ({', '.join(changed)})" if changed else ""
        pytest.fail(f"the test changed global state it did not put back: {', '.join(leaked)}{detail}")


def real_data_dir() -> Path | None:
    candidates = [os.environ.get("RESBUDGET_DATA_DIR"), REPO.parent / "shared" / "cifar10"]
    for c in candidates:
        if c and (Path(c) / "cifar-10-batches-bin").is_dir():
            return Path(c).resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real CIFAR-10 (binary version): only for the tests of reading and verifying its files."""
    found = real_data_dir()
    if found is None:
        message = "CIFAR-10 binary version not found: set RESBUDGET_DATA_DIR to the folder holding cifar-10-batches-bin"
        if os.environ.get("RESBUDGET_DATA_DIR") or os.environ.get("CI"):  # asked for (as CI does): a failure
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def cifar(data_dir):
    """The real CIFAR-10, loaded and verified once."""
    from resbudget.data import load_cifar10

    return load_cifar10(data_dir)


@pytest.fixture(scope="session")
def small_cifar():
    """512 training and 256 test images of the synthetic CIFAR-10, for end-to-end tests of a few steps."""
    from resbudget.data import synthetic_cifar10

    return synthetic_cifar10(512, 256)


def write_binary_version(cifar, folder: Path, train_files: int = 5) -> None:
    """``cifar`` in the official binary layout (label byte + 3072 pixel bytes per record) under ``folder``."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)

    def records(split):
        return np.concatenate([split.labels.numpy().astype(np.uint8)[:, None],
                               split.images.reshape(len(split), -1).numpy()], axis=1).tobytes()

    per_file = len(cifar.train) // train_files
    for i in range(train_files):
        part = cifar.train.subset(slice(i * per_file, (i + 1) * per_file))
        (folder / f"data_batch_{i + 1}.bin").write_bytes(records(part))
    (folder / "test_batch.bin").write_bytes(records(cifar.test))


def write_manifest(path: Path, fmt, counts: tuple[int, int]) -> Path:
    """A data manifest (``load_cifar10(manifest=...)``, $RESBUDGET_DATA_MANIFEST) of ``fmt``'s files and ``counts``."""
    import json

    def files(checks):
        return [{"name": c.name, "algorithm": c.algorithm, "digest": c.digest, "size": c.size} for c in checks]

    path.write_text(json.dumps({"format": fmt.name, "train_files": files(fmt.train_files),
                                "test_files": files(fmt.test_files), "counts": list(counts),
                                "archive_md5": fmt.archive_md5}))
    return path


def synthetic_manifest(root: Path, n_train: int, n_test: int) -> Path:
    """The manifest of the synthetic files under ``root`` (written by :func:`write_binary_version`): their own
    checksums and counts instead of the official ones, beside the folder."""
    from resbudget.data import BINARY, FileCheck

    folder = root / BINARY.folder

    def check(name):
        data = (folder / name).read_bytes()
        return FileCheck(name, "sha256", hashlib.sha256(data).hexdigest(), len(data))

    fmt = dataclasses.replace(BINARY, train_files=tuple(check(c.name) for c in BINARY.train_files),
                              test_files=(check("test_batch.bin"),))
    return write_manifest(root.parent / f"{root.name}-manifest.json", fmt, (n_train, n_test))


@pytest.fixture
def synthetic_dir(tmp_path, monkeypatch, small_cifar) -> Path:
    """A folder holding the synthetic set in the binary version's layout, which ``load_cifar10`` (and so every
    command's ``--data-dir``, in this process and in the processes it starts) accepts for this test: its manifest is
    $RESBUDGET_DATA_MANIFEST."""
    from resbudget.data import BINARY, MANIFEST_ENV_VAR

    root = tmp_path / "synthetic-cifar10"
    write_binary_version(small_cifar, root / BINARY.folder)
    manifest = synthetic_manifest(root, len(small_cifar.train) // 5 * 5, len(small_cifar.test))
    monkeypatch.setenv(MANIFEST_ENV_VAR, str(manifest))
    return root


def cli_in_child(argv: list[str]) -> list[str]:
    """The command line of a child process that runs ``resbudget ARGV`` (with this process's environment)."""
    import sys

    return [sys.executable, "-m", "resbudget", *argv]


def _postgres_bindir() -> Path | None:
    import glob
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server of this test session: the machine's own binaries, a data folder in /tmp, localhost and a
    free port, run as the ``postgres`` user when the tests run as root (the server refuses root). Skipped where
    PostgreSQL or psycopg is missing, unless $RESBUDGET_REQUIRE_POSTGRES is set (CI), where that fails."""
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = _postgres_bindir()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        bindir = None
    if bindir is None:
        reason = "PostgreSQL (initdb) or psycopg is not installed"
        if os.environ.get("RESBUDGET_REQUIRE_POSTGRES"):
            pytest.fail(f"{reason}, and $RESBUDGET_REQUIRE_POSTGRES asks for it")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="resbudget-pg-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd):
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "resbudget")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/resbudget"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
