"""A run that diverges is a result: one line naming where, exit 2, a summary that records it, no finished net; a study
records it and goes on, a search prunes the trial and goes on."""

import json

import pytest

from resbudget.cli import main
from resbudget.train import CheckpointError, DivergedError, evaluate_checkpoint, train_run

from .conftest import TINY_SETS, tiny_config

HUGE_LR = "optim.lr=1e12"  # the tiny net's loss is inf within a few steps
LATE = ("schedule.name=step", "schedule.milestones=[1]", "schedule.gamma=1e12", "train.epochs=3")  # in epoch 2


def test_a_run_that_diverges_stops_at_the_step_and_records_it(tmp_path, small_cifar):
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"diverged in epoch 1, step \d+ of 8: its loss was not finite; try a "
                                            r"lower optim.lr \(it is 1e\+12: e.g. --set optim.lr=2.5e\+11\)") as e:
        train_run(tiny_config(HUGE_LR), run, data=small_cifar, progress=False)
    assert e.value.epoch == 1 and 1 <= e.value.step <= 8
    summary = json.loads((run / "summary.json").read_text())
    assert summary["diverged"] == {"epoch": 1, "step": e.value.step, "reason": str(e.value)}
    assert summary["test_accuracy"] is None and summary["calibration"] is None
    assert not (run / "model.safetensors").exists()  # no epoch ended: no weights at all
    # resumed, it is a result already: the same error, nothing trained again
    with pytest.raises(DivergedError, match="diverged in epoch 1") as again:
        train_run(None, run, data=small_cifar, resume=True, progress=False)
    assert again.value.summary.date == summary["date"]


def test_a_run_that_diverges_later_keeps_its_last_finite_epoch_as_unfinished_weights(tmp_path, small_cifar):
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match="diverged in epoch 2"):
        train_run(tiny_config(*LATE), run, data=small_cifar, progress=False)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # epoch 1 ended; epoch 2 did not
    with pytest.raises(CheckpointError, match=r"the run diverged \(epoch 2, step \d+\): there is no trained net"):
        evaluate_checkpoint(run, data=small_cifar)
    result = evaluate_checkpoint(run, data=small_cifar, allow_unfinished=True)  # epoch 1's weights
    assert 0 <= result["test_accuracy"] <= 1


def test_the_cli_says_one_line_and_exits_2(tmp_path, synthetic_dir, capsys):
    code = main(["train", "shallow", *[a for s in (*TINY_SETS, "train.epochs=2", "train.batch_size=64", HUGE_LR)
                                       for a in ("--set", s)],
                 "--out", str(tmp_path / "run"), "--data-dir", str(synthetic_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "diverged in epoch 1, step" in err and "optim.lr" in err


def test_a_study_records_a_diverged_run_and_goes_on(tmp_path, small_cifar, capsys):
    from resbudget.study import run_study

    from .test_study import _tiny_study

    study = _tiny_study(tmp_path / "s", names=("a", "b"))
    text = (study / "a.toml").read_text().replace("[train]\n", "[optim]\nlr = 1e12\n[train]\n")
    (study / "a.toml").write_text(text)
    summaries = run_study(study, tmp_path / "out", epochs=1, data=small_cifar, progress=False)
    assert [s.experiment for s in summaries] == ["a", "b"]
    assert summaries[0].summary.diverged.epoch == 1 and summaries[0].summary.test_accuracy is None
    assert summaries[1].summary.diverged is None and summaries[1].summary.test_accuracy is not None
    listed = json.loads((tmp_path / "out" / "study.json").read_text())
    assert listed[0]["diverged"]["epoch"] == 1
    again = run_study(study, tmp_path / "out", epochs=1, data=small_cifar, progress=False)  # nothing retrained
    assert [s.summary.date for s in again] == [s.summary.date for s in summaries]


def test_the_study_command_shows_a_diverged_run_in_its_table(tmp_path, synthetic_dir, capsys):
    from .test_study import _tiny_study

    study = _tiny_study(tmp_path / "s", names=("a", "b"))
    text = (study / "a.toml").read_text().replace("[train]\n", "[optim]\nlr = 1e12\n[train]\n")
    (study / "a.toml").write_text(text)
    code = main(["study", str(study), "--epochs", "1", "--out", str(tmp_path / "out"), "--data-dir",
                 str(synthetic_dir), "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "diverged" in next(line for line in out.out.splitlines() if line.startswith("a "))
    assert "%" in next(line for line in out.out.splitlines() if line.startswith("b "))
    assert "diverged in epoch 1" in out.err


def test_a_report_counts_a_diverged_seed_apart(tmp_path, small_cifar):
    import shutil

    from resbudget.report import build_report, find_runs, summarize_runs

    runs = tmp_path / "runs"
    train_run(tiny_config("train.epochs=1"), runs / "s0", data=small_cifar, progress=False)
    shutil.copytree(runs / "s0", runs / "s1")  # a second seed of the same recipe, which diverged
    summary = json.loads((runs / "s1" / "summary.json").read_text())
    summary.update(seed=1, test_accuracy=None, test_loss=None, test_accuracy_tta=None,
                   diverged={"epoch": 1, "step": 3, "reason": "training diverged in epoch 1, step 3 of 8"})
    (runs / "s1" / "summary.json").write_text(json.dumps(summary))
    (row,) = summarize_runs(find_runs([runs]))
    assert row.seeds == [0, 1] and row.diverged == [1] and len(row.accuracies) == 1
    report = build_report([runs], tmp_path / "report").read_text()
    assert f"{row.accuracies[0]:.2f} (1 of 2 diverged)" in report


def test_a_search_prunes_a_diverged_trial_and_goes_on(tmp_path, small_cifar, monkeypatch, capsys):
    from resbudget.search import engine, load_space, run_search

    from .test_search import TINY_SPACE, settings_for

    real, calls = engine.train_run, []

    def first_diverges(config, *args, **kw):  # the first trial at a huge lr, the others as drawn
        import dataclasses

        calls.append(1)
        if len(calls) == 1:
            config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, name="sgd", lr=1e12))
        return real(config, *args, **kw)

    monkeypatch.setattr(engine, "train_run", first_diverges)
    path = tmp_path / "space.toml"
    path.write_text(TINY_SPACE)
    study = run_search("d", trials=2, out_dir=tmp_path / "d", settings=settings_for(load_space(path)),
                       data=small_cifar, heartbeat=1)
    first, second = study.trials
    assert first.state.name == "PRUNED" and first.user_attrs["stopped"].startswith("diverged: training diverged in")
    assert second.state.name == "COMPLETE"
    assert "diverged" in capsys.readouterr().out
