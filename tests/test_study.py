import dataclasses
import json
import math
from pathlib import Path

import pytest

from resbudget.models import build_model, count_params
from resbudget.study import StudyError, load_study, run_study, study_configs
from resbudget.train import RunFolderError, scale_epochs, train_run

from .conftest import TINY

PAPER = load_study("paper")


def test_the_paper_study_has_every_experiment():
    names = {n for n, _ in PAPER}
    assert {"arch-resnet18", "arch-narrow", "arch-deeper-plateau", "arch-deeper-const-stride-plateau",
            "shallow-cosine-lr0.1", "shallow-cosine-lr0.01", "shallow-plateau", "arch-narrow-conv3x3",
            "arch-narrow-identity", "arch-narrow-dense", "optim-adam", "plateau-sqrt10", "no-weight-decay",
            "rotation30"} <= names
    for name, config in PAPER:
        assert config.experiment.name == name and config.experiment.description
        assert count_params(build_model(config.model)) <= config.train.budget, name


@pytest.mark.parametrize("name, config", PAPER, ids=[n for n, _ in PAPER])
def test_every_experiment_builds_and_takes_a_training_step(name, config, small_cifar, tmp_path):
    small = dataclasses.replace(
        scale_epochs(config, 1),
        data=dataclasses.replace(config.data, val_size=64 if config.data.val_size else 0, train_limit=64,
                                 test_limit=64),
        train=dataclasses.replace(config.train, epochs=1, batch_size=64, eval_batch_size=64),
    )
    summary = train_run(small, tmp_path / name, data=small_cifar, progress=False)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"])
    assert summary.config["experiment"]["paper_accuracy"] == list(config.experiment.paper_accuracy)


def _tiny_study(folder, names=("a", "b")):
    folder.mkdir()
    for i, name in enumerate(names):
        (folder / f"{name}.toml").write_text(
            f'base = "study"\npreset = "shallow"\n[model]\nstem_width = {TINY.stem_width}\n'
            f'stage_widths = {list(TINY.stage_widths)}\n'
            f"stage_blocks = {list(TINY.stage_blocks)}\nstage_strides = {list(TINY.stage_strides)}\n"
            f'[experiment]\nname = "{name}"\npaper_accuracy = [{90 + i}]\n'
            f"[data]\ntrain_limit = 128\ntest_limit = 64\n"
            f"[train]\nepochs = 100\nbatch_size = 64\n[schedule]\nname = \"step\"\nmilestones = [50]\n")
    return folder


def test_epochs_scales_the_schedules_of_a_study(tmp_path):
    study = _tiny_study(tmp_path / "s")
    runs = study_configs(study, epochs=4, seeds=2)
    assert [(n, s) for n, s, _ in runs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all(c.train.epochs == 4 and c.schedule.milestones == (2.0,) for _, _, c in runs)
    assert [c.train.seed for _, _, c in runs] == [0, 1, 0, 1]
    assert study_configs(study)[0][2].train.epochs == 100


def test_study_runs_skips_finished_runs_and_rejects_unknown_names(tmp_path, small_cifar, capsys):
    study = _tiny_study(tmp_path / "s")
    out = tmp_path / "out"
    first = run_study(study, out, epochs=1, seeds=2, data=small_cifar, progress=False)
    assert [(s.experiment, s.seed) for s in first] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert first[0].summary.test_accuracy is not None
    assert (out / "a" / "seed1" / "summary.json").is_file() and (out / "study.json").is_file()
    again = run_study(study, out, epochs=1, seeds=2, data=small_cifar, progress=False)
    assert [s.summary.date for s in again] == [s.summary.date for s in first]  # nothing retrained
    only = run_study(study, out, only=["b"], epochs=1, data=small_cifar, progress=False)
    assert [s.experiment for s in only] == ["b"]
    with pytest.raises(StudyError, match="unknown experiment 'c'.*available: a, b"):
        run_study(study, out, only=["c"], data=small_cifar, progress=False)
    with pytest.raises(StudyError, match="no study 'nothing-here'"):
        load_study("nothing-here")


def test_study_resumes_an_interrupted_run(tmp_path, small_cifar):
    study = _tiny_study(tmp_path / "s", names=("a",))
    out = tmp_path / "out"
    (_, _, config), = study_configs(study, epochs=2)

    class Stop(Exception):
        pass

    def stop(epoch, _row):
        raise Stop

    with pytest.raises(Stop):
        train_run(config, out / "a" / "seed0", data=small_cifar, progress=False, on_epoch_end=stop)
    (run,) = run_study(study, out, epochs=2, data=small_cifar, progress=False)
    rows = (out / "a" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert run.summary.epochs == 2 and len(rows) == 2
    with pytest.raises(RunFolderError, match="differs from the one stored"):
        run_study(study, out, epochs=3, data=small_cifar, progress=False)


def test_study_from_the_cli(tmp_path, synthetic_dir, capsys):
    from resbudget.cli import main

    study = _tiny_study(tmp_path / "s", names=("a",))
    code = main(["study", str(study), "--epochs", "1", "--out", str(tmp_path / "out"), "--data-dir", str(synthetic_dir),
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "a" in out and "90" in out and "runs in" in out
    assert main(["study", str(study), "--only", "zzz"]) == 2
    assert "unknown experiment 'zzz'" in capsys.readouterr().err


def test_a_shared_study_runs_each_job_once_over_its_workers(tmp_path, synthetic_dir, postgres_url):
    """Two worker processes, each with its own run folder (as on two machines), on one PostgreSQL queue."""
    import subprocess

    from tests.conftest import cli_in_child

    study = _tiny_study(tmp_path / "s", names=("a", "b", "c"))
    argv = ["study", str(study), "--epochs", "1", "--seeds", "2", "--storage", postgres_url, "--heartbeat", "2",
            "--data-dir", str(synthetic_dir), "--quiet"]
    workers = [subprocess.Popen(cli_in_child([*argv, "--out", str(tmp_path / f"w{i}")]),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    done = sorted(p.parent.relative_to(p.parents[2]).as_posix() for p in tmp_path.glob("w*/*/seed*/summary.json"))
    assert done == ["a/seed0", "a/seed1", "b/seed0", "b/seed1", "c/seed0", "c/seed1"]  # each once, over both
    for i in range(2):  # each worker's study.json lists every run, its own and the other's
        listed = json.loads((tmp_path / f"w{i}" / "study.json").read_text())
        assert sorted((r["experiment"], r["seed"]) for r in listed) == [(e, s) for e in "abc" for s in (0, 1)]
    # a worker started after the end has nothing left to do
    again = subprocess.run(cli_in_child([*argv, "--out", str(tmp_path / "w2")]),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and not list((tmp_path / "w2").glob("*/seed*"))


def test_jobs_runs_each_job_once_on_this_machine_and_a_killed_workers_run_is_redone(tmp_path, synthetic_dir):
    """``study --jobs 2``: one command, two workers on one SQLite queue in the study's folder; the second worker is
    killed in the middle of a run, which the first redoes once its heartbeat is silent."""
    import os
    import signal
    import subprocess
    import time

    from tests.conftest import cli_in_child

    study = _tiny_study(tmp_path / "s", names=("a", "b", "c"))
    out = tmp_path / "out"
    # runs of 30 epochs (seconds each): the kill lands inside a run, whose heartbeat then falls silent (a kill between
    # two runs, before a trial's first heartbeat: the next test)
    argv = ["study", str(study), "--epochs", "30", "--seeds", "2", "--jobs", "2", "--heartbeat", "1",
            "--data-dir", str(synthetic_dir), "--out", str(out)]
    command = subprocess.Popen(cli_in_child(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, pid_file = out / "workers" / "worker-2.log", out / "workers" / "worker-2.pid"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and " -> " in log.read_text()):
        time.sleep(0.02)
    taken = log.read_text().split(" -> ")[1].split()[0]  # the run folder the second worker is training
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    stdout, stderr = command.communicate(timeout=300)
    assert command.returncode == 0, stderr
    assert "2 workers on this machine" in stderr and "warning: worker 2 was killed (signal 9)" in stderr
    done = sorted(p.parent.relative_to(out).as_posix() for p in out.glob("*/seed*/summary.json"))
    assert done == ["a/seed0", "a/seed1", "b/seed0", "b/seed1", "c/seed0", "c/seed1"]  # every run, once
    assert (Path(taken) / "summary.json").is_file()  # the killed worker's run, finished by the other
    listed = json.loads((out / "study.json").read_text())
    assert sorted((r["experiment"], r["seed"]) for r in listed) == [(e, s) for e in "abc" for s in (0, 1)]
    assert stdout.count("%") == 6  # the table: one row per run


def test_a_job_whose_worker_died_before_its_first_heartbeat_is_run_again(tmp_path):
    """Optuna opens a trial an instant before it starts the trial's heartbeat; a worker killed in that instant leaves a
    running trial with no heartbeat at all, which optuna itself never fails. The queue fails it after the grace
    period, and runs its job."""
    import time

    import optuna

    from resbudget.search.engine import open_storage
    from resbudget.search.queue import _open_queue, run_queue

    url = f"sqlite:///{tmp_path / 'q.db'}"
    jobs = [{"n": 1}, {"n": 2}]
    keys = [json.dumps(j, sort_keys=True) for j in jobs]
    queue = _open_queue("q", open_storage(url, 1), keys)
    with pytest.warns(UserWarning, match="Heartbeat"):  # optuna's: ask() starts no heartbeat, which is the point
        opened = queue.ask()  # the dead worker's trial: running, never a heartbeat
    assert opened.suggest_categorical("job", keys) == keys[0]
    start = time.monotonic()
    results = run_queue("q", url, jobs, lambda job: job["n"] * 10, heartbeat=1, say=lambda line: None)
    assert results == {keys[0]: 10, keys[1]: 20}
    assert time.monotonic() - start < 30  # the grace is 3 s
    states = {t.number: t.state for t in optuna.load_study(study_name="q", storage=url).get_trials()}
    assert states[opened.number] == optuna.trial.TrialState.FAIL


def test_jobs_needs_a_count_from_one(tmp_path):
    from resbudget.cli import main

    assert main(["study", "paper", "--jobs", "0"]) == 2
    assert main(["search", "x", "--jobs", "100"]) == 2


def test_a_worker_gets_the_command_line_without_jobs_and_with_the_shared_storage():
    from resbudget.search.workers import worker_argv

    assert worker_argv(["study", "paper", "--jobs", "3", "--quiet"], "sqlite:///q.db") == [
        "study", "paper", "--quiet", "--storage", "sqlite:///q.db"]
    assert worker_argv(["search", "x", "--jobs=2", "--storage", "postgresql+psycopg://h/db"], "sqlite:///q.db") == [
        "search", "x", "--storage", "postgresql+psycopg://h/db"]
