import dataclasses
import hashlib
import http.server
import io
import pickle
import shutil
import tarfile
import threading

import numpy as np
import pytest
import torch

from resbudget.data import (
    BINARY,
    PYTHON,
    DataError,
    FileCheck,
    class_counts,
    download_cifar10,
    load_cifar10,
    locate,
    stratified_split,
)
from resbudget.data.cifar10 import file_digest

from .conftest import write_manifest

SHARED_SHA256 = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}


def test_shared_files_have_the_official_checksums(data_dir):
    folder = data_dir / "cifar-10-batches-bin"
    assert {name: file_digest(folder / name, "sha256") for name in SHARED_SHA256} == SHARED_SHA256
    assert {c.name: c.digest for c in BINARY.train_files + BINARY.test_files} == SHARED_SHA256


def test_real_data_counts_order_and_dtype(cifar):
    assert cifar.train.images.shape == (50_000, 3, 32, 32) and cifar.train.images.dtype == torch.uint8
    assert cifar.test.images.shape == (10_000, 3, 32, 32)
    assert class_counts(cifar.train.labels) == [5000] * 10
    assert class_counts(cifar.test.labels) == [1000] * 10
    assert cifar.train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert cifar.test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert cifar.train.images[0, 0, 0, :3].tolist() == [59, 43, 50]


def test_training_set_statistics_match_the_normalisation_constants(cifar):
    from resbudget.data import MEAN, STD

    x = cifar.train.images.double() / 255
    assert torch.allclose(x.mean((0, 2, 3)), torch.tensor(MEAN, dtype=torch.float64), atol=5e-5)
    assert torch.allclose(x.std((0, 2, 3)), torch.tensor(STD, dtype=torch.float64), atol=5e-5)


# --- bad inputs ------------------------------------------------------------------------------------------------------
def _copy_bin_folder(data_dir, tmp_path):
    """A folder of links to the real files, so a test can replace one file without copying 180 MB."""
    src = data_dir / "cifar-10-batches-bin"
    dst = tmp_path / "cifar-10-batches-bin"
    dst.mkdir()
    for name in SHARED_SHA256:
        (dst / name).symlink_to(src / name)
    return dst


def test_missing_folder_says_where_it_looked_and_how_to_get_data(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    assert f"not found in {tmp_path / 'nowhere'}: " in msg and "cifar-10-batches-bin/" in msg and "\n" not in msg
    assert "--download" in msg and "RESBUDGET_DATA_DIR" in msg


def test_missing_file_is_named(data_dir, tmp_path):
    folder = _copy_bin_folder(data_dir, tmp_path)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin: missing"):
        load_cifar10(tmp_path)


def test_one_corrupted_byte_is_rejected_with_both_checksums(data_dir, tmp_path):
    folder = _copy_bin_folder(data_dir, tmp_path)
    target = folder / "data_batch_2.bin"
    data = bytearray(target.read_bytes())
    data[12_345] ^= 0x01
    target.unlink()
    target.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)
    msg = str(e.value)
    assert "data_batch_2.bin" in msg and SHARED_SHA256["data_batch_2.bin"] in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg


def test_truncated_file_is_rejected_with_sizes(data_dir, tmp_path):
    folder = _copy_bin_folder(data_dir, tmp_path)
    target = folder / "test_batch.bin"
    data = target.read_bytes()[:-3073]
    target.unlink()
    target.write_bytes(data)
    with pytest.raises(DataError, match=r"test_batch.bin: expected 30,730,000 bytes, found 30,726,927"):
        load_cifar10(tmp_path)


def test_wrong_format_file_is_rejected(data_dir, tmp_path):
    folder = _copy_bin_folder(data_dir, tmp_path)
    (folder / "data_batch_1.bin").unlink()
    (folder / "data_batch_1.bin").write_text("<html>Not Found</html>")
    with pytest.raises(DataError, match="data_batch_1.bin: expected 30,730,000 bytes, found 22"):
        load_cifar10(tmp_path)


def test_folder_itself_and_archive_are_found(data_dir, tmp_path):
    assert locate(data_dir / "cifar-10-batches-bin").path == data_dir / "cifar-10-batches-bin"
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(b"not really")
    found = locate(tmp_path)
    assert found.is_archive and found.fmt is BINARY
    with pytest.raises(DataError, match="md5 mismatch"):
        load_cifar10(tmp_path)


def test_env_var_names_the_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("RESBUDGET_DATA_DIR", str(data_dir))
    assert locate().path == data_dir / "cifar-10-batches-bin"


# --- the python version, synthetic (its checksums replaced: only the real files carry the official ones) -----------
def _python_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    return pickle.dumps({b"data": images.reshape(len(images), -1), b"labels": labels.tolist(),
                         b"batch_label": b"synthetic"}, protocol=2)


def _python_format(files: dict[str, bytes]):
    checks = {n: FileCheck(n, "md5", hashlib.md5(b).hexdigest()) for n, b in files.items()}
    return dataclasses.replace(PYTHON, train_files=tuple(checks[f"data_batch_{i}"] for i in range(1, 6)),
                               test_files=(checks["test_batch"],))


def _manifest(tmp_path, fmt, counts=(50_000, 10_000)):
    return write_manifest(tmp_path / "manifest.json", fmt, counts)


def _python_files(cifar, per_batch=20):
    files = {}
    for i in range(5):
        sl = slice(i * per_batch, (i + 1) * per_batch)
        files[f"data_batch_{i + 1}"] = _python_batch(cifar.train.images[sl].numpy(), cifar.train.labels[sl].numpy())
    files["test_batch"] = _python_batch(cifar.test.images[:per_batch].numpy(), cifar.test.labels[:per_batch].numpy())
    return files


def test_python_version_folder_and_archive_read_the_same_images(cifar, tmp_path):
    files = _python_files(cifar)
    folder = tmp_path / "dir" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    fmt = _python_format(files)
    from_folder = load_cifar10(tmp_path / "dir", manifest=_manifest(tmp_path, fmt, (100, 20)))
    assert torch.equal(from_folder.train.images, cifar.train.images[:100])
    assert torch.equal(from_folder.test.labels, cifar.test.labels[:20])

    archive = tmp_path / "arch" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fmt = dataclasses.replace(fmt, archive_md5=file_digest(archive, "md5"))
    from_archive = load_cifar10(archive.parent, manifest=_manifest(tmp_path, fmt, (100, 20)))
    assert torch.equal(from_archive.train.images, from_folder.train.images)


def test_record_count_mismatch_is_an_error(cifar, tmp_path):
    files = _python_files(cifar)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(DataError, match="train split has 100 records, expected 50,000"):
        load_cifar10(tmp_path, manifest=_manifest(tmp_path, _python_format(files)))


def test_label_out_of_range_is_an_error(cifar, tmp_path):
    files = _python_files(cifar)
    files["test_batch"] = _python_batch(cifar.test.images[:20].numpy(), np.full(20, 11))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(DataError, match=r"test_batch: labels outside 0..9"):
        load_cifar10(tmp_path, manifest=_manifest(tmp_path, _python_format(files), (100, 20)))


def test_a_pickle_that_calls_code_is_refused(cifar, tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    files = _python_files(cifar)
    files["data_batch_1"] = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(DataError, match="refusing to load shutil.rmtree"):
        load_cifar10(tmp_path, manifest=_manifest(tmp_path, _python_format(files), (100, 20)))
    assert (tmp_path / "victim").is_dir()


# --- download against a local server ----------------------------------------------------------------------------------
@pytest.fixture
def local_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _small_bin_archive(cifar, path):
    with tarfile.open(path, "w:gz") as tar:
        for name, split in [("data_batch_1.bin", cifar.train), ("test_batch.bin", cifar.test)]:
            records = torch.cat([split.labels[:30, None].to(torch.uint8), split.images[:30].reshape(30, -1)], 1)
            data = records.numpy().tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_download_verifies_and_writes_atomically(cifar, local_server, tmp_path):
    served, url = local_server
    _small_bin_archive(cifar, served / "small.tar.gz")
    md5 = file_digest(served / "small.tar.gz", "md5")
    dest = tmp_path / "data"
    path = download_cifar10(dest, url=f"{url}/small.tar.gz", expected_md5=md5)
    assert path == dest / "cifar-10-binary.tar.gz"
    assert path.read_bytes() == (served / "small.tar.gz").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-binary.tar.gz"]
    # A verified copy is kept: no second fetch (the server no longer has the file).
    (served / "small.tar.gz").unlink()
    assert download_cifar10(dest, url=f"{url}/small.tar.gz", expected_md5=md5) == path
    # And the downloaded archive loads, read straight from the tar.
    checks = (FileCheck("data_batch_1.bin", "sha256", hashlib.sha256(
        torch.cat([cifar.train.labels[:30, None].to(torch.uint8), cifar.train.images[:30].reshape(30, -1)], 1)
        .numpy().tobytes()).hexdigest()),)
    test_checks = (FileCheck("test_batch.bin", "sha256", hashlib.sha256(
        torch.cat([cifar.test.labels[:30, None].to(torch.uint8), cifar.test.images[:30].reshape(30, -1)], 1)
        .numpy().tobytes()).hexdigest()),)
    fmt = dataclasses.replace(BINARY, archive_md5=md5, train_files=checks, test_files=test_checks)
    loaded = load_cifar10(dest, manifest=_manifest(tmp_path, fmt, (30, 30)))
    assert torch.equal(loaded.train.images, cifar.train.images[:30])


def test_download_with_wrong_checksum_leaves_nothing(cifar, local_server, tmp_path):
    served, url = local_server
    _small_bin_archive(cifar, served / "small.tar.gz")
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="md5 mismatch: expected 0{32}"):
        download_cifar10(dest, url=f"{url}/small.tar.gz", expected_md5="0" * 32)
    assert not dest.exists()  # not even the folder it created


def test_download_failure_leaves_nothing_and_keeps_existing_files(local_server, tmp_path):
    _, url = local_server
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="404"):
        download_cifar10(dest, url=f"{url}/missing.tar.gz", expected_md5="0" * 32)
    assert not dest.exists()
    dest.mkdir()
    (dest / "cifar-10-binary.tar.gz").write_bytes(b"the user's own file")
    with pytest.raises(DataError, match="not overwritten"):
        download_cifar10(dest, url=f"{url}/missing.tar.gz", expected_md5="0" * 32)
    assert (dest / "cifar-10-binary.tar.gz").read_bytes() == b"the user's own file"


# --- validation split ----------------------------------------------------------------------------------------------
def test_stratified_split_is_seeded_disjoint_and_balanced(cifar):
    train_idx, val_idx = stratified_split(cifar.train.labels, 5000, seed=3)
    assert len(val_idx) == 5000 and len(train_idx) == 45_000
    assert class_counts(cifar.train.labels[val_idx]) == [500] * 10
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    again, _ = stratified_split(cifar.train.labels, 5000, seed=3)
    assert torch.equal(again, train_idx)
    other, _ = stratified_split(cifar.train.labels, 5000, seed=4)
    assert not torch.equal(other, train_idx)


def test_stratified_split_with_uneven_size():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    _, val = stratified_split(labels, 5, seed=0)
    assert class_counts(labels[val], 3) == [3, 2, 0] or class_counts(labels[val], 3) == [3, 1, 1]
    with pytest.raises(ValueError, match="val_size must be between 1 and 9"):
        stratified_split(labels, 10, seed=0)


# --- end to end on the real files ----------------------------------------------------------------------------------
def test_a_short_run_on_real_images_from_the_command_line(data_dir, tmp_path, capsys):
    import json

    from resbudget.cli import main

    from .conftest import TINY_SETS

    argv = ["train", "shallow", *[a for s in TINY_SETS for a in ("--set", s)], "--set", "train.epochs=1", "--set",
            "data.train_limit=256", "--set", "data.test_limit=200", "--set", "train.batch_size=64",
            "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--json", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["data_checksums"]["test_batch.bin"] == f"sha256:{BINARY.test_files[0].digest}"
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 10_000


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "binary"}', '{"format": "tiff", "train_files": [], '
                                  '"test_files": [], "counts": [1, 1]}'])
def test_a_bad_data_manifest_is_one_data_error(tmp_path, text):
    from resbudget.data import read_manifest

    (tmp_path / "m.json").write_text(text)
    with pytest.raises(DataError, match="m.json: not a valid data manifest|m.json: a data manifest needs|"
                                        "m.json is not valid JSON"):
        read_manifest(tmp_path / "m.json")
