"""Your own images: image folders and .npz arrays read, checked and cached; a net trained on them names their classes
in eval, predict and the ONNX export; bad input refused in one line."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from resbudget.cli import main
from resbudget.data import DataError, Normalization, load_arrays, load_dataset, load_image_folders
from resbudget.data import folders as folders_module
from resbudget.train import read_summary, train_run
from tests.conftest import tiny_config

CLASSES = ("cat", "dog", "fox")


def _images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class a colour, plus noise (N x H x W x 3 uint8), and their labels."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    x = colours[labels][:, None, None, :] + g.normal(0, 30, (n, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8), labels


def _write_folders(root, split: str, x: np.ndarray, y: np.ndarray, fmt: str = "png") -> None:
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / split / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.{fmt}")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def folders(tmp_path):
    root = tmp_path / "pets"
    x, y = _images(300, 0)
    _write_folders(root, "train", x[:240], y[:240])
    _write_folders(root, "test", x[240:], y[240:])
    return root, x, y


def test_image_folders_decode_to_the_pixels_written_with_their_classes_and_own_normalisation(folders):
    root, x, y = folders
    data = load_image_folders(root)
    assert data.classes == CLASSES and len(data.train) == 240 and len(data.test) == 60
    # files are read class by class, sorted by name: the pixels are the ones written, image for image
    order = sorted(range(240), key=lambda i: (y[i], f"{i:05d}"))
    assert torch.equal(data.train.images, torch.from_numpy(x[order].transpose(0, 3, 1, 2)))
    assert torch.equal(data.train.labels, torch.from_numpy(y[order]))
    assert data.norm == Normalization.of(data.train.images) and data.norm != Normalization()
    assert data.test.norm == data.norm
    assert data.checksums["image folders"].startswith("sha256:")


def test_folders_are_decoded_once_and_decoded_again_when_a_file_changes(folders, monkeypatch):
    root, x, _ = folders
    first = load_image_folders(root)
    calls = []
    real = folders_module._decode
    monkeypatch.setattr(folders_module, "_decode", lambda *a: calls.append(1) or real(*a))
    again = load_image_folders(root)
    assert not calls and torch.equal(again.train.images, first.train.images)  # from the cache
    changed = root / "train" / "cat" / "00000.png"
    Image.fromarray(255 - x[0]).save(changed)
    third = load_image_folders(root)
    assert calls and not torch.equal(third.train.images, first.train.images)


def test_without_a_test_folder_a_stratified_share_is_held_out(tmp_path):
    x, y = _images(120, 1)
    _write_folders(tmp_path / "d", "train", x, y)
    data = load_image_folders(tmp_path / "d")
    assert len(data.train) == 100 and len(data.test) == 20
    assert torch.bincount(data.test.labels).tolist() == [7, 7, 6] or sorted(
        torch.bincount(data.test.labels).tolist()) == [6, 7, 7]
    assert "held out" in data.source


def test_npz_arrays_read_as_given_and_images_are_brought_to_the_input_size(tmp_path):
    x, y = _images(90, 2, size=40)
    path = tmp_path / "set.npz"
    np.savez(path, x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:], classes=np.array(CLASSES))
    data = load_arrays(path, size=32)
    assert data.classes == CLASSES and data.image_size == 32 and len(data.test) == 30
    same = load_dataset(path, image_size=40)
    assert torch.equal(same.train.images, torch.from_numpy(x[:60].transpose(0, 3, 1, 2)))
    plain = tmp_path / "plain.npz"
    np.savez(plain, x_train=x, y_train=y)
    assert load_arrays(plain, 40).classes == ("0", "1", "2")  # no names: the label numbers


def _bad_folders(tmp_path, case: str):
    root = tmp_path / case
    x, y = _images(30, 3)
    _write_folders(root, "train", x, y)
    if case == "one class":
        for name in ("dog", "fox"):
            for f in (root / "train" / name).iterdir():
                f.unlink()
            (root / "train" / name).rmdir()
    elif case == "empty class":
        (root / "train" / "owl").mkdir()
    elif case == "not an image":
        (root / "train" / "cat" / "notes.png").write_text("not an image")
    elif case == "unknown test class":
        _write_folders(root, "test", x[:3], y[:3])
        (root / "test" / "owl").mkdir()
    elif case == "looping link":
        os.symlink(root / "train" / "cat" / "loop", root / "train" / "cat" / "loop")
    elif case == "a folder in a class":
        (root / "train" / "cat" / "more").mkdir()
    elif case == "a file beside the classes":
        (root / "train" / "readme.txt").write_text("hi")
    return root


@pytest.mark.parametrize("case, match", [
    ("one class", "holds 1 class folder\\(s\\); a classifier needs at least 2"),
    ("empty class", "the class 'owl' has no images"),
    ("not an image", "notes.png: not a readable image"),
    ("unknown test class", "class 'owl' has no training images"),
    ("looping link", "loop: not a regular file"),
    ("a folder in a class", "a class folder holds image files only"),
    ("a file beside the classes", "must hold one folder per class"),
])
def test_bad_folders_are_refused_in_one_line(tmp_path, case, match):
    with pytest.raises(DataError, match=match):
        load_image_folders(_bad_folders(tmp_path, case))


def test_a_set_over_the_image_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    x, y = _images(30, 4)
    _write_folders(tmp_path / "d", "train", x, y)
    monkeypatch.setattr(folders_module, "MAX_IMAGES", 20)
    monkeypatch.setattr(folders_module, "_decode", lambda *a: pytest.fail("decoded"))
    with pytest.raises(DataError, match="more than 20 images"):
        load_image_folders(tmp_path / "d")


@pytest.mark.parametrize("arrays, match", [
    ({"y_train": np.zeros(3, int)}, "no 'x_train' array"),
    ({"x_train": np.zeros((3, 8, 8), np.uint8), "y_train": np.array([0, 1, 1])}, "must be uint8 N x H x W x 3"),
    ({"x_train": np.zeros((3, 8, 8, 3), np.float32), "y_train": np.array([0, 1, 1])}, "must be uint8"),
    ({"x_train": np.zeros((3, 8, 8, 3), np.uint8), "y_train": np.array([0, 1])}, "must be 3 integer labels"),
    ({"x_train": np.zeros((3, 8, 8, 3), np.uint8), "y_train": np.zeros(3, int)}, "1 class\\(es\\)"),
    ({"x_train": np.zeros((3, 8, 8, 3), np.uint8), "y_train": np.array([0, 1, 2]),
      "classes": np.array(["a", "b"])}, "a label is 2, but classes names only 2"),
    ({"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.array([0, 2, 0, 2])}, "class '1' has no training"),
])
def test_bad_arrays_are_refused_in_one_line(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load_arrays(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load_arrays(tmp_path / "junk.npz")


def test_a_net_trained_on_folders_names_their_classes_everywhere(folders, tmp_path, capsys):
    root, x, _ = folders
    summary = train_run(tiny_config("train.epochs=2", "train.batch_size=32"), tmp_path / "run", data=root,
                        progress=False)
    assert summary.classes == list(CLASSES) and summary.config["model"]["num_classes"] == 3
    assert summary.normalization == load_image_folders(root).norm.to_dict()
    assert summary.test_accuracy > 0.9  # colours are easy
    assert read_summary(tmp_path / "run" / "summary.json").classes == list(CLASSES)
    # eval: the classes by name, the matrix over the test images
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [c["class"] for c in result["per_class"]] == list(CLASSES) and sum(map(sum, result["confusion"])) == 60
    # predict --csv: one file,class line per image of an unlabeled folder
    unlabeled = tmp_path / "new"
    unlabeled.mkdir()
    for i in (0, 1, 2):
        Image.fromarray(x[250 + i]).save(unlabeled / f"img{i}.png")
    assert main(["predict", str(tmp_path / "run"), str(unlabeled), "--csv", str(tmp_path / "out.csv")]) == 0
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    assert rows[0] == ["file", "class"] and len(rows) == 4 and {r[1] for r in rows[1:]} <= set(CLASSES)
    assert main(["predict", str(tmp_path / "run"), str(unlabeled), "--csv", str(tmp_path / "out.csv")]) == 2
    assert "the file exists" in capsys.readouterr().err


def test_an_export_of_a_net_trained_on_own_data_names_its_classes_and_standardises_as_trained(folders, tmp_path):
    pytest.importorskip("onnx")
    import onnx

    root, _, _ = folders
    train_run(tiny_config("train.epochs=1", "train.batch_size=32"), tmp_path / "run", data=root, progress=False)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)


def test_eval_refuses_data_with_another_number_of_classes(folders, tmp_path, synthetic_dir, capsys):
    root, _, _ = folders
    train_run(tiny_config("train.epochs=1", "train.batch_size=32"), tmp_path / "run", data=root, progress=False)
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(synthetic_dir)]) == 2
    assert "the net tells 3 classes apart, the data set has 10" in capsys.readouterr().err


def test_eval_without_data_reads_what_the_run_recorded_and_refuses_it_once_changed(folders, tmp_path, capsys):
    root, x, _ = folders
    train_run(tiny_config("train.epochs=1", "train.batch_size=32"), tmp_path / "run", data=root, progress=False)
    assert read_summary(tmp_path / "run" / "summary.json").data_path == str(root.resolve())
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0  # no --data-dir: the folders it trained on
    assert json.loads(capsys.readouterr().out)["per_class"][0]["class"] == "cat"
    Image.fromarray(255 - x[0]).save(root / "train" / "cat" / "00000.png")
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "is no longer the data the run was trained on (its checksums differ)" in capsys.readouterr().err


def test_calibrate_ensemble_corruptions_and_a_time_plan_work_on_own_folders(folders, tmp_path, capsys):
    root, _, _ = folders
    tiny = ["--set", "model.stem_width=8", "--set", "model.stage_widths=[8,16]", "--set", "model.stage_blocks=[1,1]",
            "--set", "model.stage_strides=[1,2]", "--set", "train.epochs=1", "--set", "train.batch_size=32"]
    # a run with a validation split fits its own temperature; calibrate fits it again on the same images
    assert main(["train", "shallow", *tiny, "--set", "data.val_size=30", "--data-dir", str(root), "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["calibrate", str(tmp_path / "run")]) == 0  # no --data-dir: the folders the run recorded
    assert "temperature" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "run"), "--corruptions", "--images", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["robustness"]["images"] == 30
    assert main(["ensemble", "train", "shallow", "--members", "2", *tiny, "--data-dir", str(root), "--out",
                 str(tmp_path / "ens"), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["members"]
    assert main(["train", "--minutes", "5", "--plan", "--data-dir", str(root)]) == 0
    assert "on CIFAR-10" in capsys.readouterr().out  # the front's accuracies are CIFAR-10's, and it says so


def test_a_file_too_large_to_be_an_image_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from resbudget import _io

    x, y = _images(30, 5)
    _write_folders(tmp_path / "d", "train", x, y)
    (tmp_path / "d" / "train" / "cat" / "huge.png").write_bytes(b"\0" * 5000)
    monkeypatch.setitem(_io.MAX_BYTES, "image", 4096)
    with pytest.raises(DataError, match="huge.png: 5,000 bytes, over the 4,096 an image file may have"):
        load_image_folders(tmp_path / "d")
