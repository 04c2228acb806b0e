"""resbudget search: the space, rejection from the spec, seeding, resuming, pruning, time limits, report, confirm.
Trials train tiny nets on the synthetic set (a second or two each), or a stand-in for training where only the
search's own logic is under test."""

import json
import time
from pathlib import Path

import optuna
import pytest

from resbudget.search import (
    Rejected,
    SearchError,
    SearchSettings,
    Space,
    SpaceError,
    engine,
    fill_budget,
    load_space,
    open_search,
    open_storage,
    pareto_front,
    run_search,
    search_report,
    trial_config,
)
from resbudget.search.engine import default_storage, trained
from resbudget.search.space import check_trial, parse_param
from resbudget.train import RunSummary, load_config

TINY_SPACE = """
[params]
"model.stem_width" = 8
"model.stem_kernel" = {choices = [2, 3]}
"model.stages" = {choices = [2, 3]}
"model.stage_widths" = {choices = [8, 16]}
"model.stage_blocks" = {choices = [1]}
"model.stage_strides" = {choices = [1, 2]}
"model.stage_entry" = "block"
"model.block" = {choices = ["single", "basic"]}
"model.shortcut" = "conv1x1"
"model.head_hidden" = {choices = [[], [16]]}
"train.epochs" = {low = 2, high = 3}
"train.batch_size" = 64
"train.eval_batch_size" = 256
"train.drop_easy" = {low = 0.0, high = 0.5}
"train.tta" = {choices = ["none", "flip"]}
"train.whiten_init" = false
"""


@pytest.fixture
def tiny_space(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(TINY_SPACE)
    return load_space(path)


def settings_for(space, **kw):
    return SearchSettings(space=space, val_size=100, **kw)


def search(tmp_path, space, data, trials=3, name="s", **kw):
    settings = kw.pop("settings", None) or settings_for(space, **kw)
    return run_search(name, trials=trials, out_dir=tmp_path / name, settings=settings, data=data, heartbeat=1)


def drawn(study):
    return [t.params for t in study.trials]


# --- the space -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    ({"low": 3, "high": 1}, "must be below"),
    ({"low": 0, "high": 1, "log": True}, "log range needs low > 0"),
    ({"choices": []}, "non-empty list"),
    ({"choices": [1, 1]}, "repeat"),
    ({"lo": 1, "high": 2}, "unknown field 'lo'"),
    ({"choices": [1], "low": 0}, "cannot be mixed"),
    ({"low": 1, "high": 2, "log": True, "step": 1}, "not both"),
])
def test_a_bad_parameter_is_refused_by_name(value, message):
    with pytest.raises(SpaceError, match=message) as e:
        parse_param("optim.lr", value)
    assert "optim.lr" in str(e.value)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "search").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_space_file_of_the_repository_loads(path):
    assert load_space(path).params


def test_a_space_names_config_keys_and_every_per_stage_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[params]\n"optim.nope" = 1\n')
    with pytest.raises(SpaceError, match="unknown config key 'optim.nope'"):
        load_space(bad)
    bad.write_text('[params]\n"model.stage_widths" = [64, 128]\n')
    with pytest.raises(SpaceError, match="fixed to one list while model.stages is drawn"):
        load_space(bad)
    bad.write_text('base = "nope"\n')
    with pytest.raises(SpaceError, match="unknown base 'nope'"):
        load_space(bad)


def test_the_default_space_holds_the_default_recipe_as_its_first_trial():
    space = load_space()
    base = space.base_params()
    assert base is not None and base["model.stages"] == 3 and base["model.stage_widths.1"] == 256
    config = trial_config(space, {}, val_size=5000, seed=0, budget=5_000_000)
    assert config.model == load_config(None).model and config.data.val_size == 5000


def test_the_drawn_values_make_the_trial_config(tiny_space):
    trial = optuna.trial.FixedTrial({"model.stem_kernel": 3, "model.stages": 2, "model.stage_widths.0": 16,
                                     "model.stage_widths.1": 8, "model.stage_blocks.0": 1, "model.stage_blocks.1": 1,
                                     "model.stage_strides.0": 1, "model.stage_strides.1": 2, "model.block": "basic",
                                     "model.head_hidden": "[16]", "train.epochs": 3, "train.drop_easy": 0.25,
                                     "train.tta": "flip", "optim.lr": 0.2, "optim.momentum": 0.7,
                                     "train.label_smoothing": 0.1})
    config = trial_config(tiny_space, tiny_space.suggest(trial), val_size=100, seed=4, budget=10**6)
    assert config.model.stage_widths == (16, 8) and config.model.head_hidden == (16,)
    assert config.model.stem_width == 8 and config.model.stem_kernel == 3
    assert (config.train.epochs, config.train.drop_easy, config.train.tta, config.train.seed) == (3, 0.25, "flip", 4)


def test_over_budget_and_collapsing_specs_are_rejected_from_the_spec(tiny_space):
    wide = trial_config(tiny_space, {"model.stage_widths": [512, 512, 512]}, val_size=100, seed=0, budget=100_000)
    with pytest.raises(Rejected, match="over the budget of 100,000"):
        check_trial(wide, None)
    small = trial_config(tiny_space, {"model.stage_widths": [8, 16, 16]}, val_size=100, seed=0, budget=100_000)
    _, macs = check_trial(small, None)
    with pytest.raises(Rejected, match="MACs budget"):
        check_trial(small, macs - 1)
    collapsing = trial_config(load_space(), {"model.stage_strides": [2, 2, 2, 2, 1], "model.stage_widths": [8] * 5,
                                             "model.stage_blocks": [1] * 5}, val_size=100, seed=0, budget=10**6)
    with pytest.raises(Rejected, match="collapses to 1x1 at stage 4"):
        check_trial(collapsing, None)


def test_fill_scales_widths_up_to_the_budget_and_no_further():
    from resbudget.models import check_spec, get_preset

    spec = get_preset("airres")
    filled = fill_budget(spec, 4_000_000)
    params = check_spec(filled, 4_000_000)
    assert 3_500_000 < params <= 4_000_000
    assert all(b > a for a, b in zip(spec.stage_widths, filled.stage_widths))
    assert all(w % 8 == 0 for w in filled.stage_widths)
    assert fill_budget(spec, 1_000_000) == spec  # already over: unchanged (the check rejects it)


def test_pareto_front_keeps_only_undominated_points():
    points = [(10, 90.0, 0), (20, 89.0, 1), (30, 93.0, 2), (30, 92.0, 3), (5, 80.0, 4)]
    assert pareto_front(points) == [(5, 80.0, 4), (10, 90.0, 0), (30, 93.0, 2)]


# --- searching -------------------------------------------------------------------------------------------------------
def test_over_budget_nets_are_never_built(tmp_path, tiny_space, small_cifar, monkeypatch):
    from resbudget.train import setup as setup_module

    built = []
    real = setup_module.initial_model

    def recording(config):
        built.append(config.model)
        return real(config)

    monkeypatch.setattr(setup_module, "initial_model", recording)
    space = Space(tiny_space.base, tuple(p for p in tiny_space.params if p.key != "model.stage_widths")
                  + (parse_param("model.stage_widths", {"choices": [8, 16, 256]}),))
    study = search(tmp_path, space, small_cifar, trials=3, budget=40_000)
    rejected = [t for t in study.trials if "rejected" in t.user_attrs]
    trained = [t for t in study.trials if "rejected" not in t.user_attrs]
    assert rejected and all("over the budget of 40,000" in t.user_attrs["rejected"] for t in rejected)
    from resbudget.models import check_spec
    assert len(built) == len(trained) == 3 and all(check_spec(s, 40_000) <= 40_000 for s in built)
    assert not any((tmp_path / "s" / "trials" / f"trial-{t.number:04d}").exists() for t in rejected)


def test_a_fixed_seed_draws_the_same_trials_and_the_test_set_is_never_read(tmp_path, tiny_space, small_cifar,
                                                                          monkeypatch):
    from resbudget.train import run as run_module

    real, seen = run_module.evaluate, []

    def spying(model, split, **kw):
        seen.append(len(split))
        return real(model, split, **kw)

    monkeypatch.setattr(run_module, "evaluate", spying)
    a = search(tmp_path, tiny_space, small_cifar, trials=2, name="a", seed=7)
    b = search(tmp_path, tiny_space, small_cifar, trials=2, name="b", seed=7)
    assert drawn(a) == drawn(b) and len({json.dumps(p, sort_keys=True) for p in drawn(a)}) > 1
    assert [t.value for t in a.trials] == [t.value for t in b.trials]
    assert set(seen) == {100}, "only the validation split is evaluated"
    summary = json.loads((tmp_path / "a" / "trials" / "trial-0000" / "summary.json").read_text())
    assert summary["test_accuracy"] is None and summary["test_set_used"] is False
    c = search(tmp_path, tiny_space, small_cifar, trials=2, name="c", seed=8)
    assert drawn(c) != drawn(a)


def test_an_interrupted_search_resumes_and_runs_the_cut_trial_again(tmp_path, tiny_space, small_cifar, monkeypatch):
    real, calls = engine.train_run, []

    def interrupted_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(engine, "train_run", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, tiny_space, small_cifar, trials=4)
    monkeypatch.setattr(engine, "train_run", real)
    study = run_search("s", trials=4, out_dir=tmp_path / "s", data=small_cifar, heartbeat=1)  # no settings: stored
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") + states.count("PRUNED") == 4
    cut = next(t for t in study.trials if t.state.name == "FAIL")
    again = [t for t in study.trials if t.user_attrs.get("retry_of") == cut.number]
    assert len(again) == 1 and again[0].params == cut.params
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    # a finished search does nothing more
    assert len(run_search("s", trials=4, out_dir=tmp_path / "s", data=small_cifar).trials) == len(study.trials)


def test_other_settings_for_an_existing_search_are_refused(tmp_path, tiny_space, small_cifar):
    search(tmp_path, tiny_space, small_cifar, trials=1)
    storage = open_storage(engine.default_storage(tmp_path / "s"), 1)
    with pytest.raises(SearchError, match="already exists with other settings \\(budget differ"):
        open_search("s", storage, settings_for(tiny_space, budget=123_456))
    with pytest.raises(SearchError, match="no search 'other'"):
        open_search("other", storage, None, create=False)


def fake_training(accuracy_of, seconds_per_epoch=0.0):
    """A stand-in for train_run: per-epoch validation accuracy from the config, reported through on_epoch_end."""
    def train_run(config, run_dir, *, on_epoch_end, **kw):
        for epoch in range(1, config.train.epochs + 1):
            time.sleep(seconds_per_epoch)
            on_epoch_end(epoch, {"val_acc": accuracy_of(config) * epoch / config.train.epochs, "stopped": None,
                                 "images_per_s": 1000.0})
        return RunSummary(val_accuracy=accuracy_of(config), wall_seconds=0.01, test_set_used=False)
    return train_run


def test_the_pruner_stops_trials_behind_the_others(tmp_path, tiny_space, small_cifar, monkeypatch):
    monkeypatch.setattr(engine, "train_run", fake_training(lambda c: c.optim.lr))
    space = Space(tiny_space.base, (parse_param("optim.lr", {"low": 0.01, "high": 1.0}),
                                    parse_param("train.epochs", 8)))
    study = search(tmp_path, space, small_cifar, trials=16)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all("pruned after epoch" in t.user_attrs["stopped"] for t in pruned)
    complete = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    # a pruned trial was behind the trials that went on at the step where it stopped
    for t in pruned:
        step, value = max(t.intermediate_values.items())
        peers = [o.intermediate_values[step] for o in study.trials if step in o.intermediate_values and o != t]
        assert sum(p > value for p in peers) >= len(peers) / 2 - 1
    assert max(complete) > max(t.params["optim.lr"] for t in pruned)


def test_a_trial_over_its_time_is_stopped(tmp_path, tiny_space, small_cifar, monkeypatch):
    monkeypatch.setattr(engine, "train_run", fake_training(lambda c: 0.5, seconds_per_epoch=0.2))
    space = Space(tiny_space.base, (parse_param("train.epochs", {"choices": [2, 30]}),))
    study = search(tmp_path, space, small_cifar, trials=4, trial_seconds=1.5)
    long = [t for t in study.trials if t.params["train.epochs"] == 30]
    short = [t for t in study.trials if t.params["train.epochs"] == 2]
    assert long and all(t.state.name == "PRUNED" and "over time" in t.user_attrs["stopped"] for t in long)
    assert all(t.user_attrs["epochs_done"] < 10 for t in long)
    assert all(t.state.name == "COMPLETE" for t in short)


SLOW_SPACE = """
[params]
"model.stem_width" = 64
"model.stages" = 1
"model.stage_widths" = [128]
"model.stage_blocks" = [1]
"model.stage_strides" = [1]
"model.stem_kernel" = 3
"model.stage_entry" = "block"
"model.block" = "basic"
"model.shortcut" = "conv1x1"
"model.head_hidden" = []
"train.drop_easy" = 0.0
"train.epochs" = 4
"train.batch_size" = 64
"train.eval_batch_size" = 100
"train.tta" = "none"
"train.whiten_init" = false
"""


def test_a_trial_limit_holds_inside_an_epoch_and_a_net_that_cannot_fit_is_rejected(tmp_path, monkeypatch):
    """A net whose first epoch takes several times the limit: the first trial stops between two steps and still ends
    cleanly within the limit + 10%; the second, the same net, is rejected from its MACs before it is built (and the
    search, which can draw nothing else, ends saying so)."""
    from resbudget.data import synthetic_cifar10

    path = tmp_path / "slow.toml"
    path.write_text(SLOW_SPACE)
    limit = 8.0
    data = synthetic_cifar10(6000, 100)
    settings = SearchSettings(space=load_space(path), val_size=200, trial_seconds=limit)
    monkeypatch.setattr(engine, "MAX_REJECTED_IN_A_ROW", 1)
    with pytest.raises(SearchError, match="were rejected"):
        run_search("slow", trials=2, out_dir=tmp_path / "slow", settings=settings, data=data, heartbeat=1)
    first, second = optuna.load_study(study_name="slow", storage=default_storage(tmp_path / "slow")).trials
    assert first.state.name == "PRUNED" and "training stopped in epoch 1 of 4" in first.user_attrs["stopped"]
    assert first.user_attrs["seconds"] <= 1.1 * limit
    summary = json.loads((Path(first.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["stopped"] and summary["time_limit"] == limit and summary["wall_seconds"] <= 1.1 * limit
    assert "its first epoch alone would take about" in second.user_attrs["rejected"]
    assert "run_dir" not in second.user_attrs  # never built, never trained


def test_report_writes_the_table_fronts_and_a_best_config_train_takes(tmp_path, tiny_space, small_cifar):
    study = search(tmp_path, tiny_space, small_cifar, trials=3)
    r = search_report(study, tmp_path / "report")
    assert len(r["rows"]) == len(study.trials)
    for name in ("trials.csv", "pareto-params.png", "pareto-time.png", "importances.json", "best.toml"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    config = load_config(tmp_path / "report" / "best.toml")
    assert config.model.to_dict() == best.user_attrs["config"]["model"] and config.data.val_size == 100
    # every trial is a run folder that `resbudget report` reads, marked as scored on validation images
    from resbudget.report import build_report

    text = build_report([tmp_path / "s" / "trials"], tmp_path / "runs-report", figures=False).read_text()
    assert f"s-trial-{best.number:04d} ‡" in text and "never read the test set" in text


def test_confirm_retrains_on_every_image_and_reports_test_accuracy(tmp_path, tiny_space, small_cifar):
    from resbudget.search import confirm_search

    study = search(tmp_path, tiny_space, small_cifar, trials=2)
    results = confirm_search(study, tmp_path / "confirm", top=1, seeds=2, with_base=False, data=small_cifar)
    (r,) = results
    assert len(r["runs"]) == 2 and r["test_mean"] is not None
    summary = json.loads((tmp_path / "confirm" / r["label"] / "seed1" / "summary.json").read_text())
    assert summary["config"]["data"]["val_size"] == 0 and summary["seed"] == 1
    assert summary["test_accuracy"] == r["runs"][1]["test_accuracy"]
    assert json.loads((tmp_path / "confirm" / "confirm.json").read_text())[0]["label"] == r["label"]
    # the temperature the trial fitted on its validation split calibrates its confirm runs, reported on test
    trial = study.trials[int(r["label"].removeprefix("trial-"))]
    assert summary["calibration"]["temperature"] == trial.user_attrs["temperature"]
    assert summary["config"]["train"]["temperature"] == trial.user_attrs["temperature"]
    assert {"test_nll", "test_ece", "test_ece_calibrated"} <= set(summary["calibration"])
    assert summary["calibration"]["source"].startswith(f"search {study.study_name!r}, {r['label']}: fitted on that "
                                                       "trial's validation split (")


def test_two_workers_on_one_sqlite_file_give_exactly_the_trials_asked_for(tmp_path, synthetic_dir):
    import subprocess

    from tests.conftest import cli_in_child

    space = tmp_path / "space.toml"
    space.write_text(TINY_SPACE)
    argv = ["search", "lite", "--trials", "4", "--space", str(space), "--val-size", "100", "--out",
            str(tmp_path / "s"), "--data-dir", str(synthetic_dir)]
    workers = [subprocess.Popen(cli_in_child(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    trials = optuna.load_study(study_name="lite", storage=default_storage(tmp_path / "s")).get_trials(deepcopy=False)
    assert sum(trained(t) for t in trials) == 4, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert not any(t.state.name == "RUNNING" for t in trials)


# --- workers sharing one PostgreSQL server ----------------------------------------------------------------------------
def test_workers_share_a_postgresql_search_and_a_killed_workers_trial_is_retried(tmp_path, synthetic_dir,
                                                                                 postgres_url):
    import signal
    import subprocess

    from tests.conftest import cli_in_child

    space = tmp_path / "space.toml"
    space.write_text(TINY_SPACE)

    def worker(folder):
        argv = ["search", "pg", "--storage", postgres_url, "--trials", "10", "--space", str(space), "--val-size",
                "100", "--heartbeat", "2", "--out", str(tmp_path / folder), "--data-dir", str(synthetic_dir)]
        return subprocess.Popen(cli_in_child(argv), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    victim, survivor = worker("machine-a"), worker("machine-b")
    storage = open_storage(postgres_url, 1)
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline:
        try:
            study = optuna.load_study(study_name="pg", storage=storage)
        except KeyError:  # not created yet
            time.sleep(0.2)
            continue
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("pid") == victim.pid and "run_dir" in t.user_attrs:  # training, mid-trial
                victim.send_signal(signal.SIGKILL)
                killed = t.number
                break
        time.sleep(0.1)
    assert killed is not None, "the first worker never started a trial"
    out, _ = survivor.communicate(timeout=300)
    victim.wait(timeout=10)
    assert survivor.returncode == 0, out
    trials = optuna.load_study(study_name="pg", storage=storage).get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))
    # nothing left running: the survivor waited out the dead worker's heartbeat grace, even after its own last trial
    assert all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    assert sum(trained(t) for t in trials) == 10  # exactly the number asked for, over both workers
    assert trials[killed].state.name == "FAIL"  # failed by the other worker, from its silent heartbeat
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].params == trials[killed].params
    assert retries[0].state.name in ("COMPLETE", "PRUNED") and retries[0].user_attrs["pid"] == survivor.pid
    assert {t.user_attrs.get("pid") for t in trials if t.user_attrs.get("pid")} == {victim.pid, survivor.pid}
    assert f"trial {retries[0].number:>3}" in out  # one line per finished trial


# --- the command line ------------------------------------------------------------------------------------------------
def test_search_report_and_confirm_from_the_command_line(tmp_path, synthetic_dir, capsys):
    from resbudget.cli import main

    space = tmp_path / "space.toml"
    space.write_text(TINY_SPACE)
    folder = ["--out", str(tmp_path / "cli")]
    assert main(["search", "cli", "--trials", "2", "--budget", "200k", "--space", str(space), "--val-size", "100",
                 "--data-dir", str(synthetic_dir), *folder]) == 0
    out = capsys.readouterr().out
    assert "under 200,000 parameters" in out and out.count("|  best") == 2
    assert main(["search", "report", "cli", *folder]) == 0
    out = capsys.readouterr().out
    assert "trial  state" in out and "best.toml" in out and (tmp_path / "cli" / "report" / "pareto-time.png").is_file()
    assert main(["search", "confirm", "cli", "--seeds", "1", "--data-dir", str(synthetic_dir), *folder]) == 0
    assert "over 1 seed(s)" in capsys.readouterr().out
    # a worker that joins with other settings is refused, and the stored search is untouched
    assert main(["search", "cli", "--trials", "3", "--budget", "300k", "--data-dir", str(synthetic_dir), *folder]) == 2
    assert "already exists with other settings" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["search", "report", "nope"], "no search 'nope' at"),
    (["search", "confirm", "nope"], "no search 'nope' at"),
    (["search", "x", "--trials", "0"], "argument --trials: must be between 1 and 10,000, got 0"),
    (["search", "x", "--budget", "lots"], "'lots' is not a count"),
    (["search", "x", "--trial-minutes", "-1"], "argument --trial-minutes: must be between 0.01 and 10,080"),
    (["search", "x", "--val-size", "0"], "argument --val-size: must be between 100 and 49,000, got 0"),
    (["search", "x", "--heartbeat", "0"], "argument --heartbeat: must be between 1 and 3,600, got 0"),
    (["search", "x", "--seed", str(2**64)], "argument --seed: must be between 0 and 4,294,967,295"),
    (["search", "x", "--storage", "nosuchdb://x"], "cannot open the search storage"),
])
def test_search_errors_are_one_line_and_leave_nothing_behind(tmp_path, monkeypatch, capsys, argv, message):
    from resbudget.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not list(tmp_path.iterdir()), "nothing is created"


def test_counts_read_with_a_suffix():
    from resbudget.cli import parse_count

    assert [parse_count(t) for t in ("5M", "2.5m", "500k", "5_000_000", "1,000")] == [5_000_000, 2_500_000, 500_000,
                                                                                       5_000_000, 1000]


def test_a_failing_trial_is_one_line_and_the_search_goes_on(tmp_path, tiny_space, small_cifar, monkeypatch, capsys):
    real, calls = engine.train_run, []

    def failing_first(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory\nsecond line")
        return real(*args, **kw)

    monkeypatch.setattr(engine, "train_run", failing_first)
    study = run_search("f", trials=2, out_dir=tmp_path / "f", settings=settings_for(tiny_space), data=small_cifar)
    assert study.trials[0].state.name == "FAIL"
    out = capsys.readouterr()
    assert "trial   0  failed: RuntimeError: out of memory second line" in out.out and "Traceback" not in out.err


def test_jobs_draws_the_trials_with_several_workers_on_this_machine(tmp_path, synthetic_dir):
    import subprocess

    from tests.conftest import cli_in_child

    space = tmp_path / "space.toml"
    space.write_text(TINY_SPACE)
    argv = ["search", "local", "--jobs", "2", "--trials", "4", "--space", str(space), "--val-size", "100",
            "--heartbeat", "1", "--out", str(tmp_path / "s"), "--data-dir", str(synthetic_dir)]
    done = subprocess.run(cli_in_child(argv), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="local", storage=default_storage(tmp_path / "s")).get_trials(deepcopy=False)
    assert sum(trained(t) for t in trials) == 4
    assert len({t.user_attrs.get("pid") for t in trials if t.user_attrs.get("pid")}) == 2  # both workers drew
    assert "trial" in (tmp_path / "s" / "workers" / "worker-2.log").read_text()
