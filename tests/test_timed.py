"""train --minutes: the choice from the measured front follows this machine's speed, and a time limit holds."""

import json

import pytest
import torch

from resbudget.cli import main
from resbudget.train import train_run
from resbudget.train.deadline import TimeLimit
from resbudget.train.timed import (
    MARGIN,
    ROBUST_NOISE_ACCURACY,
    Machine,
    TimeBudgetError,
    format_plan,
    load_front,
    plan,
    probe_step_seconds,
)
from tests.conftest import tiny_config

CPU = torch.device("cpu")
STEP = 1.0  # seconds per step of the default recipe on a made-up machine (the default's run: ~4 minutes)


def test_the_front_loads_and_every_point_is_a_recipe_measured_over_seeds():
    points = load_front()
    assert {p.name for p in points} >= {"default", "best"}
    for p in points:
        assert p.seeds >= 3 and p.measured and p.relative_time and set(p.relative_time) <= {"cpu", "cuda"}
        p.config()  # resolves


def test_more_time_buys_a_more_accurate_recipe_and_each_is_predicted_to_fit():
    chosen = []
    for minutes in (2, 3, 5, 15, 60):
        config, record = plan(minutes, machine=Machine(CPU, STEP))
        assert record["predicted_seconds"] <= MARGIN * minutes * 60
        assert record["epochs"] == config.train.epochs
        chosen.append(record)
    assert "no measured recipe fits" in chosen[0]["why"] and chosen[0]["epochs"] < 3  # the fastest point, cut to fit
    assert [r["chosen"] for r in chosen[1:3]] == ["noisy-e3", "default"] and chosen[-1]["chosen"] == "last384-e13"
    accuracy = [next(c["accuracy_tta"] for c in r["candidates"] if c["name"] == r["chosen"]) for r in chosen[1:]]
    assert accuracy == sorted(accuracy) and accuracy[0] < accuracy[-1]


def test_every_point_offered_by_default_holds_under_faint_noise_and_clean_only_ones_are_asked_for():
    front = {p.name: p for p in load_front()}
    assert {"noisy-e3", "default", "last384-e13"} <= {n for n, p in front.items() if p.robust}
    assert not front["best"].robust and not front["no-noise-e12"].robust  # trained without pixel noise
    assert not front["default-e3"].robust  # noise in training, but too few epochs of it
    for minutes in (2, 5, 10, 20, 60, 600):
        _, record = plan(minutes, machine=Machine(CPU, STEP))
        assert front[record["chosen"]].robust and record["clean_images"] is False
        assert all(c["noise_accuracy"] >= ROBUST_NOISE_ACCURACY for c in record["candidates"])
        assert {c["name"] for c in record["not_offered"]} == {n for n, p in front.items() if not p.robust and
                                                              "cpu" in p.relative_time}
    _, robust = plan(600, machine=Machine(CPU, STEP))
    _, clean = plan(600, machine=Machine(CPU, STEP), clean_images=True)
    assert clean["chosen"] == "best" and clean["not_offered"] == [] and clean["clean_images"] is True
    assert front[robust["chosen"]].accuracy_tta < front["best"].accuracy_tta  # the price of asking for robustness
    table = format_plan(robust)
    assert "noise 0.04" in table and "not offered, below 85% under noise 0.04 or not measured there " in table
    assert f"best ({front['best'].accuracy_tta:.2f}%, {front['best'].noise_accuracy:.1f}% under noise)" in table
    assert f"no-noise-e12 ({front['no-noise-e12'].accuracy_tta:.2f}%, unmeasured under noise)" in table


def test_a_smaller_data_set_is_predicted_to_train_faster_and_buys_a_more_accurate_recipe():
    _, full = plan(5, machine=Machine(CPU, STEP))
    _, small = plan(5, machine=Machine(CPU, STEP), train_images=10_000)
    assert small["default_run_seconds"] == pytest.approx(full["default_run_seconds"] / 5, abs=0.1)  # rounded
    accuracy = {r["chosen"]: r["expected_accuracy"] for r in (full, small)}
    assert next(c["accuracy_tta"] for c in small["candidates"] if c["name"] == small["chosen"]) >= next(
        c["accuracy_tta"] for c in full["candidates"] if c["name"] == full["chosen"])
    assert accuracy[small["chosen"]].endswith("on CIFAR-10") and small["train_images"] == 10_000


def test_a_point_measured_on_the_other_kind_of_machine_only_is_not_offered():
    _, on_cpu = plan(600, machine=Machine(CPU, STEP))
    _, on_gpu = plan(600, machine=Machine(torch.device("cuda"), 0.01))
    assert "default-e6" in {c["name"] for c in on_cpu["candidates"]}
    assert "default-e6" not in {c["name"] for c in on_gpu["candidates"]} and on_gpu["device_kind"] == "cuda"


def test_the_choice_follows_the_measured_speed_on_a_machine_twice_as_slow():
    _, fast = plan(15, machine=Machine(CPU, STEP))
    _, slow = plan(15, machine=Machine(CPU, 2 * STEP))
    assert fast["chosen"] != slow["chosen"] or fast["epochs"] > slow["epochs"]
    assert slow["predicted_seconds"] <= MARGIN * 15 * 60
    # the probe's own time is spent before the choice, and counted
    _, probed = plan(15, machine=Machine(CPU, probe=lambda device: 2 * STEP), elapsed=100.0)
    assert probed["seconds_before_training"] >= 100.0 and probed["probe_step_seconds"] == 2 * STEP


def test_a_parameter_budget_filters_the_front():
    config, record = plan(600, machine=Machine(CPU, STEP), budget=3_000_000)
    assert record["chosen"] == "default" and record["params"] <= 3_000_000  # the wider nets left out
    assert "last384-e13" not in {c["name"] for c in record["not_offered"]}  # left out for its size, not for noise
    _, clean = plan(600, machine=Machine(CPU, STEP), budget=3_000_000, clean_images=True)
    assert clean["chosen"] == "no-noise-e12" and clean["params"] <= 3_000_000
    with pytest.raises(TimeBudgetError, match=r"no recipe of the front that holds under faint noise has at most "
                                              r"1,000 parameters \(--clean-images also offers those that do not\)$"):
        plan(600, machine=Machine(CPU, STEP), budget=1000)
    with pytest.raises(TimeBudgetError, match=r"no recipe of the front has at most 1,000 parameters$"):
        plan(600, machine=Machine(CPU, STEP), budget=1000, clean_images=True)


def test_the_probe_times_steps_of_a_net():
    assert 0 < probe_step_seconds(CPU, steps=1, config=tiny_config()) < 5


@pytest.mark.parametrize("args, message", [
    (["--minutes", "10", "best"], "--minutes chooses the recipe for the time: give no recipe"),
    (["--minutes", "10", "--set", "train.epochs=3"], "--set may change only train.seed, train.device, not "
                                                      "train.epochs"),
    (["--budget", "1000000"], "--budget chooses among the recipes of --minutes"),
    (["--plan"], "--plan shows what --minutes N would train: give --minutes"),
    (["--minutes", "0"], "--minutes: must be between 0.1 and 100,000"),
    (["--minutes", "5", "--budget", "0.5k"], "no recipe of the front that holds under faint noise has at most 500 "
                                              "parameters"),  # before a probe
    (["--clean-images"], "--clean-images widens the recipes --minutes chooses from: give --minutes"),
])
def test_bad_time_budget_requests_are_refused_in_one_line(args, message, capsys):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plan_prints_each_recipes_time_here_and_the_choice_and_trains_nothing(tmp_path, monkeypatch, capsys):
    from resbudget.train import timed

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(timed, "probe_step_seconds", lambda device: STEP)
    assert main(["train", "--minutes", "15", "--plan", "--data-dir", str(tmp_path / "no-data-needed")]) == 0
    out = capsys.readouterr().out
    _, record = plan(15, machine=Machine(CPU, STEP))
    rows = [line for line in out.splitlines() if line.split(" ")[0] in {c["name"] for c in record["candidates"]}]
    assert len(rows) == len(record["candidates"]) >= 3
    assert [line.split()[0] for line in rows if line.endswith("<- chosen")] == [record["chosen"]]
    assert f"chosen: {record['chosen']}" in out and "default's run ~" in out
    assert not (tmp_path / "runs").exists()


def test_a_run_under_a_time_limit_stops_between_steps_and_still_ends_cleanly(tmp_path, small_cifar):
    """The limit holds whatever the plan predicted: 200 epochs of the tiny net cannot fit in 3 s."""
    limit = 3.0
    summary = train_run(tiny_config("train.epochs=200"), tmp_path / "run", data=small_cifar, progress=False,
                        time_limit=TimeLimit(limit))
    assert summary.stopped.startswith("time limit of 3 s: training stopped in epoch")
    assert summary.wall_seconds <= 1.05 * limit and summary.time_limit == limit
    assert summary.test_accuracy is not None and (tmp_path / "run" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) < 200 and not (tmp_path / "run" / "state.safetensors").exists()


def test_train_minutes_from_the_command_line_ends_within_its_minutes(tmp_path, monkeypatch, capsys):
    """The whole path on a made-up fast machine (its probe says 0.05 s a step): the plan picks a recipe that fits
    15 s (a shortened default, or the default itself, as the process's start leaves time), the run holds the limit on
    the real step times and records what it predicted beside what it took."""
    from resbudget.data import BINARY, MANIFEST_ENV_VAR, synthetic_cifar10
    from resbudget.train import timed
    from tests.conftest import synthetic_manifest, write_binary_version

    data = synthetic_cifar10(3000, 200)
    root = tmp_path / "synthetic"
    write_binary_version(data, root / BINARY.folder)
    monkeypatch.setenv(MANIFEST_ENV_VAR, str(synthetic_manifest(root, 3000, 200)))
    monkeypatch.setattr(timed, "probe_step_seconds", lambda device: 0.05)
    assert main(["train", "--minutes", "0.25", "--data-dir", str(root), "--out", str(tmp_path / "run"), "--quiet",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    plan_ = summary["time_plan"]
    assert plan_["chosen"] in ("noisy-e3", "default-e6", "default")
    assert plan_["probe_step_seconds"] == 0.05 and plan_["minutes"] == 0.25
    assert summary["time_limit"] == 15.0 and summary["wall_seconds"] <= 1.05 * 15.0
    assert summary["epochs"] == plan_["epochs"] and summary["test_accuracy_tta"] is not None


def test_a_limit_no_recipe_can_keep_is_refused_with_the_least_that_can():
    with pytest.raises(TimeBudgetError, match=r"--minutes 0.1 cannot be kept on this machine: the shortest run, "
                                              r"noisy-e3 cut to 1 epoch, is predicted to take \d+ s") as e:
        plan(0.1, machine=Machine(CPU, STEP))
    least = e.value.record["least_minutes"]
    assert f"give --minutes {least:g} or more" in str(e.value)
    _, record = plan(least, machine=Machine(CPU, STEP))  # the least it names is kept
    assert record["epochs"] >= 1 and record["predicted_seconds"] <= MARGIN * least * 60


def test_plan_shows_the_table_then_refuses_a_limit_it_cannot_keep(tmp_path, monkeypatch, capsys):
    from resbudget.train import timed

    monkeypatch.setattr(timed, "probe_step_seconds", lambda device: STEP)
    assert main(["train", "--minutes", "0.1", "--plan"]) == 2
    out = capsys.readouterr()
    assert "s of the 0.1 minutes are left" in out.out and "noisy-e3" in out.out
    assert "<- chosen" not in out.out and out.err.count("\n") == 1 and "cannot be kept" in out.err
    with pytest.raises(TimeBudgetError) as e:
        plan(0.1, machine=Machine(CPU, STEP), elapsed=7.0)  # the process's start took longer than the limit
    assert "nothing of the 0.1 minutes is left for the run" in timed.format_plan(e.value.record)


def test_the_evaluations_views_are_cut_to_fit_a_limit_or_the_run_refused():
    from resbudget.train.deadline import Evaluations, TimeLimitError, tta_that_fits

    evaluations = Evaluations(seconds_per_view=0.001, per_epoch=0, final=10_000, fit=0)  # 10 s a view
    assert tta_that_fits(evaluations, "flip-shift4", 100.0, 100.0) == "flip-shift4"  # 40 s of 100
    assert tta_that_fits(evaluations, "flip-shift4", 50.0, 50.0) == "flip"  # 20 s of 50
    assert tta_that_fits(evaluations, "flip-shift4", 15.0, 15.0) == "none"  # 10 s fits, not under half
    with pytest.raises(TimeLimitError, match="cannot be kept: one training step and the evaluations after it would "
                                             "take about 14 s of the 12 s left"):
        tta_that_fits(evaluations, "flip-shift4", 12.0, 12.0, step_seconds=4.0)


def test_a_run_whose_evaluation_would_not_fit_is_refused_before_training(tmp_path, small_cifar, monkeypatch):
    from resbudget.train import deadline, run
    from resbudget.train.deadline import TimeLimitError

    monkeypatch.setattr(run, "seconds_per_view", lambda *args: 1.0)  # a net that scores one image a second
    with pytest.raises(TimeLimitError, match="the time limit of 5 s cannot be kept"):
        train_run(tiny_config(), tmp_path / "run", data=small_cifar, progress=False, time_limit=TimeLimit(5.0))
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert deadline.EVAL_SHARE_MAX < 1


def test_a_run_whose_tta_would_not_fit_is_scored_with_fewer_views_and_says_so(tmp_path, small_cifar, monkeypatch):
    from resbudget.train import run

    # 256 test images, scored after each epoch (the study's recipe) and then with each view, at 0.01 s an image: 7.7 s
    # with the 2 views of flip, 17.9 s with the 6 of flip-shift, beside a 20 s limit
    monkeypatch.setattr(run, "seconds_per_view", lambda *args: 0.01)
    stream = __import__("io").StringIO()
    summary = train_run(tiny_config("train.tta=flip-shift", "train.epochs=1"), tmp_path / "run", data=small_cifar,
                        progress=stream, time_limit=TimeLimit(20.0))
    assert summary.tta == "flip" and summary.test_accuracy_tta is not None
    assert "the time limit holds the final evaluation to flip TTA (2 view(s) of 6)" in stream.getvalue()


def test_a_long_run_of_a_tiny_net_ends_within_its_limit_measured_from_outside(tmp_path, small_cifar):
    import time

    start = time.perf_counter()
    summary = train_run(tiny_config("train.epochs=1000", "train.tta=flip"), tmp_path / "run", data=small_cifar,
                        progress=False, time_limit=TimeLimit(4.0))
    assert time.perf_counter() - start <= 1.1 * 4.0 and summary.stopped
