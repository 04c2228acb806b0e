import json
import os

import pytest
import torch

from resbudget.models import BudgetError
from resbudget.train import (
    RunFolderError,
    TrainingError,
    evaluate_checkpoint,
    load_config,
    load_model,
    read_summary,
    train_run,
)
from resbudget.train.checkpoint import plain_state_dict, read_weights

from .conftest import TINY, tiny_config


def test_run_folder_holds_config_metrics_summary_and_weights(small_cifar, tmp_path):
    summary = train_run(tiny_config(), tmp_path / "run", data=small_cifar, progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.toml", "metrics.csv", "metrics.jsonl",
                                                     "model.safetensors", "summary.json"]
    written = json.loads((run / "summary.json").read_text())
    for key in ("config", "params", "macs", "test_accuracy", "wall_seconds", "epochs", "device", "torch_version",
                "seed", "git_commit", "git_dirty"):
        assert key in written
    assert "val_accuracy_tta" not in written and "time_plan" not in written  # only where the run has them
    assert f"({os.cpu_count()} cores" in summary.host_cpu and not summary.host_cpu.startswith("(")
    assert written == summary.to_dict() and read_summary(run / "summary.json") == summary
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert summary.test_accuracy == rows[-1]["test_acc"]  # final epoch, not the best
    assert all(0 < r["train_seconds"] <= r["seconds"] for r in rows)  # the steps alone, evaluation excluded
    assert summary.train_seconds == pytest.approx(sum(r["train_seconds"] for r in rows), abs=2e-3)
    assert 0 < summary.final_eval_seconds and 0 <= summary.whiten_seconds < summary.wall_seconds
    # the tiny recipe trains with torch's SGD, whose float lr a CUDA graph would freeze: eager on every device
    assert summary.step_graph is False and summary.graph_captures == 0 and summary.capture_seconds == 0
    assert (run / "metrics.csv").read_text().splitlines()[0] == (
        "epoch,lr,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc,seconds,train_seconds,images_per_s")
    assert load_config(run / "config.toml") == tiny_config()
    # eval scores as the run did: the run folder and its checkpoint alone reproduce the run's numbers exactly
    for path in (run, run / "model.safetensors"):
        result = evaluate_checkpoint(path, data=small_cifar)
        assert result["precision"] == "bf16"
        assert (result["test_accuracy"], result["test_loss"]) == pytest.approx(
            (summary.test_accuracy, summary.test_loss), abs=1e-6)


def test_training_reduces_the_loss(small_cifar, tmp_path):
    train_run(tiny_config("train.epochs=4", "data.crop_padding=0", "data.flip=false"), tmp_path / "run",
          data=small_cifar, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1


def test_validation_split_is_carved_from_training(small_cifar, tmp_path):
    summary = train_run(tiny_config("data.val_size=100", "schedule.name=plateau", "train.epochs=1"), tmp_path / "run",
                    data=small_cifar, progress=False)
    assert summary.val_accuracy is not None and not summary.plateau_watched_test


def test_study_mode_is_flagged_in_every_output(small_cifar, tmp_path, capsys):
    import sys

    summary = train_run(tiny_config("schedule.name=plateau", "schedule.monitor=test", "train.epochs=1"),
                    tmp_path / "run", data=small_cifar, progress=sys.stdout)
    assert summary.plateau_watched_test is True and "TEST accuracy" in summary.notes[0]
    assert "TEST accuracy" in capsys.readouterr().out
    result = evaluate_checkpoint(tmp_path / "run", data=small_cifar)
    assert "TEST accuracy" in result["notes"][0]


class Interrupt(Exception):
    pass


def test_resumed_run_continues_from_its_last_epoch_and_matches(small_cifar, tmp_path):
    config = tiny_config("train.epochs=3", "train.precision=fp32")
    train_run(config, tmp_path / "full", data=small_cifar, progress=False)

    def stop_after_two(epoch, _row):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_run(config, tmp_path / "cut", data=small_cifar, progress=False, on_epoch_end=stop_after_two)
    assert not (tmp_path / "cut" / "summary.json").exists()
    seen = []
    summary = train_run(None, tmp_path / "cut", resume=True, data=small_cifar, progress=False,
                    on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [3]
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    full, _ = load_model(tmp_path / "full")
    cut, _ = load_model(tmp_path / "cut")
    for (name, a), b in zip(full.state_dict().items(), cut.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert summary.test_accuracy == json.loads((tmp_path / "full" / "summary.json").read_text())["test_accuracy"]
    # Resuming a finished run changes nothing and returns its summary.
    assert train_run(None, tmp_path / "cut", resume=True, data=small_cifar, progress=False) == summary


def test_resume_refuses_a_different_config_and_start_refuses_a_used_folder(small_cifar, tmp_path):
    train_run(tiny_config("train.epochs=1"), tmp_path / "run", data=small_cifar, progress=False)
    with pytest.raises(RunFolderError, match="not empty"):
        train_run(tiny_config("train.epochs=1"), tmp_path / "run", data=small_cifar, progress=False)
    with pytest.raises(RunFolderError, match="differs from the one stored"):
        train_run(tiny_config("train.epochs=5"), tmp_path / "run", resume=True, data=small_cifar, progress=False)
    with pytest.raises(RunFolderError, match="holds no run"):
        train_run(None, tmp_path / "empty", resume=True, data=small_cifar, progress=False)


def test_over_budget_is_refused_unless_allowed(small_cifar, tmp_path):
    config = tiny_config("train.budget=1000", "train.epochs=1")
    with pytest.raises(BudgetError, match="over the budget of 1,000"):
        train_run(config, tmp_path / "run", data=small_cifar, progress=False)
    assert not (tmp_path / "run").exists()
    summary = train_run(config, tmp_path / "run", data=small_cifar, progress=False, allow_over_budget=True)
    assert summary.over_budget is True


def test_diverging_loss_stops_with_an_error(small_cifar, tmp_path):
    with pytest.raises(TrainingError, match="lower optim.lr"):
        train_run(tiny_config("optim.lr=1e30", "train.epochs=1", "train.precision=fp32"), tmp_path / "run",
              data=small_cifar, progress=False)


def test_weights_have_plain_names_and_a_spec(small_cifar, tmp_path):
    train_run(tiny_config("train.epochs=1"), tmp_path / "run", data=small_cifar, progress=False)
    spec, tensors, meta = read_weights(tmp_path / "run" / "model.safetensors")
    assert spec.stage_widths == TINY.stage_widths
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in tensors)
    model, _ = load_model(tmp_path / "run")

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert list(plain_state_dict(Wrapped(model))) == list(model.state_dict())


def test_a_non_checkpoint_is_rejected(tmp_path):
    from resbudget.train import CheckpointError

    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "nothing")


def test_the_finished_nets_numbers_end_the_metrics_and_eval_reproduces_them(small_cifar, tmp_path):
    """Test accuracy is taken once, from the finished net, after the last epoch (not every epoch): it still ends the
    metrics log, and equals the summary's."""
    summary = train_run(tiny_config("train.eval_test_every_epoch=false", "train.tta=flip"), tmp_path / "run",
                        data=small_cifar, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["test_acc"] is None and rows[-1]["test_acc"] == summary.test_accuracy
    assert summary.test_accuracy_tta is not None and summary.git_dirty in (True, False, None)
    result = evaluate_checkpoint(tmp_path / "run", data=small_cifar)
    assert (result["test_accuracy"], result["test_accuracy_tta"]) == (summary.test_accuracy,
                                                                       summary.test_accuracy_tta)
    assert result["tta"] == "flip" and result["views"] == 2 and result["calibration"]["views"] == 2


def test_eval_gives_per_class_accuracy_and_a_confusion_matrix_that_add_up(small_cifar, tmp_path, capsys):
    from resbudget.cli import format_classes
    from resbudget.data import CLASSES

    train_run(tiny_config("train.epochs=1"), tmp_path / "run", data=small_cifar, progress=False)
    result = evaluate_checkpoint(tmp_path / "run", data=small_cifar)
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (10, 10) and int(confusion.sum()) == result["images"] == len(small_cifar.test)
    assert int(confusion.trace()) / result["images"] == pytest.approx(result["test_accuracy"])
    assert [c["class"] for c in result["per_class"]] == list(CLASSES)
    for i, c in enumerate(result["per_class"]):
        assert c["images"] == int(confusion[i].sum()) == int((small_cifar.test.labels == i).sum())
        assert c["accuracy"] == pytest.approx(int(confusion[i, i]) / c["images"])
    text = format_classes(result["per_class"], result["confusion"])
    assert all(f"  {name} " in text for name in CLASSES) and text.count("\n") == 12
