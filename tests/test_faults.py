"""Faults a hostile-input round found, each mended where it belongs: abbreviated options, a run folder removed
mid-run, a full disk, --allow-unfinished on a killed run, eval's figure, and the checks that must come before a
long wait. Every one ends in one line and exit status 2, or does what the option says."""

import json
import shutil

import pytest
import torch

from resbudget.data import CLASSES, load_dataset
from resbudget.train import RunFolderError, train_run

from .conftest import TINY_SETS, tiny_config
from .test_hostile import one_line_error, run

SET_TINY = [a for s in (*TINY_SETS, "train.epochs=2", "train.batch_size=64", "train.eval_batch_size=128")
            for a in ("--set", s)]


@pytest.mark.parametrize("argv, option", [(["study", "nothing-here", "--jo", "2"], "--jo"),
                                          (["study", "nothing-here", "--job=3"], "--job=3"),
                                          (["train", "--minute", "1", "--plan"], "--minute")])
def test_an_abbreviated_option_is_refused(tmp_path, capsys, monkeypatch, argv, option):
    """argparse would read --jo as --jobs, which the workers' command lines (built without --jobs) then kept: each
    worker started more workers. Every option has one spelling."""
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, *argv, match=f"unrecognized arguments: {option}")
    assert not any(tmp_path.iterdir())  # no workers, no queue, no run folder


class Killed(Exception):
    pass


def _kill_after_epoch(epoch, _row):
    raise Killed


def test_a_run_whose_folder_is_removed_stops_with_one_line_and_writes_nothing(tmp_path, small_cifar):
    run_dir = tmp_path / "run"

    def remove(epoch, _row):
        shutil.rmtree(run_dir)

    with pytest.raises(RunFolderError, match="was removed while the run trained in it; the run stops"):
        train_run(tiny_config(), run_dir, data=small_cifar, progress=False, on_epoch_end=remove)
    assert not run_dir.exists()  # not recreated with the run's later files


def test_minutes_refuses_an_out_in_use_before_the_speed_probe(tmp_path, capsys, monkeypatch):
    from resbudget.train import timed

    def probe(*args, **kwargs):
        raise AssertionError("the probe ran before --out was checked")

    monkeypatch.setattr(timed, "probe_step_seconds", probe)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    one_line_error(capsys, "train", "--minutes", "5", "--out", str(tmp_path / "used"), match="is not empty")
    (tmp_path / "file").write_text("mine")
    one_line_error(capsys, "train", "--minutes", "5", "--out", str(tmp_path / "file"), match="is not a folder")
    assert (tmp_path / "file").read_text() == "mine"


def test_allow_unfinished_uses_a_killed_runs_last_epoch(tmp_path, synthetic_dir, capsys):
    from PIL import Image

    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        train_run(tiny_config(), run_dir, data=synthetic_dir, progress=False, on_epoch_end=_kill_after_epoch)
    assert not (run_dir / "summary.json").exists() and (run_dir / "state.safetensors").is_file()
    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (120, 80, 40)).save(image)
    commands = [["eval", str(run_dir), "--data-dir", str(synthetic_dir)], ["predict", str(run_dir), str(image)],
                ["export", str(run_dir), "--out", str(tmp_path / "net.onnx")]]
    for argv in commands:
        one_line_error(capsys, *argv, match="the run has not finished (no summary.json); resume it")
    for argv in commands:
        code, _, err = run(capsys, *argv, "--allow-unfinished")
        assert code == 0, err
    assert (tmp_path / "net.onnx").is_file()
    # and it resumes to the end as if never stopped
    summary = train_run(None, run_dir, data=synthetic_dir, resume=True, progress=False)
    assert summary.epochs == 2 and len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(tmp_path, synthetic_dir, capsys,
                                                                        monkeypatch):
    from safetensors import SafetensorError

    from resbudget.train import checkpoint

    real = checkpoint.save_file

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')

    monkeypatch.setattr(checkpoint, "save_file", full)
    run_dir = tmp_path / "run"
    err = one_line_error(capsys, "train", "shallow", *SET_TINY, "--out", str(run_dir), "--data-dir",
                         str(synthetic_dir), "--quiet", match="could not be written (No space left on device)")
    assert f"resbudget train --resume --out {run_dir}" in err
    monkeypatch.setattr(checkpoint, "save_file", real)  # room again
    code, _, err = run(capsys, "train", "--resume", "--out", str(run_dir), "--data-dir", str(synthetic_dir),
                       "--quiet")
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2


@pytest.fixture
def run_dir(tmp_path, synthetic_dir):
    train_run(tiny_config("train.epochs=1"), tmp_path / "run", data=synthetic_dir, progress=False)
    return tmp_path / "run"


def test_eval_writes_its_figure_with_json_and_names_the_file_it_wrote(run_dir, tmp_path, synthetic_dir, capsys):
    data = ["--data-dir", str(synthetic_dir)]
    code, out, err = run(capsys, "eval", str(run_dir), *data, "--json", "--figure", str(tmp_path / "r.png"))
    assert code == 0, err
    result = json.loads(out)  # stdout stays JSON
    # the confusion matrix counts every test image, its diagonal the right ones; the mistakes listed are mistakes
    confusion = torch.tensor(result["confusion"])
    assert int(confusion.sum()) == result["images"] and confusion.trace() / result["images"] == pytest.approx(
        result["test_accuracy"])
    mistakes = result["mistakes"]
    assert mistakes and all(m["true"] != m["predicted"] for m in mistakes)
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
    labels = load_dataset(synthetic_dir).test.labels
    assert all(CLASSES[int(labels[m["index"]])] == m["true"] for m in mistakes)
    assert (tmp_path / "r.png").is_file() and f"written to {tmp_path / 'r.png'}" in err
    code, out, err = run(capsys, "eval", str(run_dir), *data, "--figure", str(tmp_path / "plain"))
    assert code == 0 and f"written to {tmp_path / 'plain.png'}\n" in out and (tmp_path / "plain.png").is_file()
    (tmp_path / "figs").mkdir()
    one_line_error(capsys, "eval", str(run_dir), *data, "--figure", str(tmp_path / "figs"), match="is a folder")
    one_line_error(capsys, "eval", str(run_dir), *data, "--figure", str(tmp_path / "r.jpg"), match="not .jpg")
    assert not (tmp_path / "figs.png").exists()


def test_the_first_epoch_check_counts_the_images_a_trial_trains_on():
    from resbudget.search.engine import trained_images

    assert trained_images(tiny_config("data.val_size=5000", "data.train_limit=3000"), 50_000) == 3000
    assert trained_images(tiny_config("data.val_size=5000"), 50_000) == 45_000
    assert trained_images(tiny_config("data.val_size=100", "data.train_limit=3000"), 1_000) == 900


def test_a_trial_whose_evaluation_cannot_fit_its_minutes_is_rejected_not_run(tmp_path, small_cifar, monkeypatch,
                                                                             capsys):
    """search --trial-minutes: the trial's evaluations are timed on its net before training; one that could not
    score its validation split within the limit is rejected at once, and the search goes on."""
    from resbudget.search import load_space, run_search
    from resbudget.train import run as run_module

    from .test_search import TINY_SPACE, settings_for

    real, calls = run_module.seconds_per_view, []

    def slow_first(*args):
        calls.append(1)
        return 1.0 if len(calls) == 1 else real(*args)  # the first trial's net: a second an image

    monkeypatch.setattr(run_module, "seconds_per_view", slow_first)
    path = tmp_path / "space.toml"
    path.write_text(TINY_SPACE)
    study = run_search("t", trials=1, out_dir=tmp_path / "t", data=small_cifar, heartbeat=1,
                       settings=settings_for(load_space(path), trial_seconds=30.0))
    first, second = study.trials
    assert "cannot be kept" in first.user_attrs["rejected"] and second.state.name == "COMPLETE"
    assert second.user_attrs["seconds"] <= 1.1 * 30.0
