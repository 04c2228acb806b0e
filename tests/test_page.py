"""The page of a run and of a folder of runs: self-contained, its numbers the run's summary and evaluation, and it
renders in headless Chromium without console errors (where Chromium is installed, as CI installs it)."""

import html
import json
import re
import shutil
import subprocess

import pytest

from resbudget.cli import main
from resbudget.report.page import run_page, runs_page
from resbudget.train import evaluate_checkpoint, read_summary, train_run
from tests.conftest import tiny_config


@pytest.fixture
def finished(tmp_path, small_cifar):
    train_run(tiny_config("train.epochs=2", "train.tta=flip"), tmp_path / "runs" / "a" / "seed0", data=small_cifar,
              progress=False)
    return tmp_path / "runs" / "a" / "seed0"


def _self_contained(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing fetched
    assert "http://" not in text and "https://" not in text


def test_a_runs_page_shows_its_summary_and_evaluation_as_they_are(finished, small_cifar):
    path = run_page(finished, data=small_cifar)
    assert path == finished / "page.html"
    text = path.read_text()
    _self_contained(text)
    s = read_summary(finished / "summary.json")
    result = evaluate_checkpoint(finished, data=small_cifar)
    shown = html.unescape(text)
    assert f"{100 * s.test_accuracy:.2f}%" in shown and f"{100 * s.test_accuracy_tta:.2f}%" in shown
    assert f"{s.params:,}" in shown and f"{s.macs:,}" in shown and s.git_commit[:12] in shown
    for c in result["per_class"]:  # every class's row, as eval gives it
        accuracy = "–" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%"
        assert f"<td>{c['class']}</td><td class=n>{c['images']}</td><td>{accuracy}</td>" in text
    assert f"{result['calibration']['test_ece_calibrated']:.4f}" in shown
    assert sum(map(sum, result["confusion"])) == result["images"] == len(small_cifar.test)


def test_a_folder_of_runs_gets_one_page_and_the_cli_names_it(finished, small_cifar, tmp_path, capsys):
    train_run(tiny_config("train.epochs=2", "train.tta=flip", "train.seed=1"), tmp_path / "runs" / "a" / "seed1",
              data=small_cifar, progress=False)
    path = runs_page([tmp_path / "runs"], tmp_path / "runs.html", title="two seeds")
    text = path.read_text()
    _self_contained(text)
    assert "<h1>two seeds</h1>" in text and "1 experiment(s), 2 run(s)" in text
    assert main(["page", str(tmp_path / "runs")]) == 0
    assert f"page written to {tmp_path / 'runs' / 'page.html'}" in capsys.readouterr().out
    assert main(["page", str(finished), "--out", str(tmp_path / "x.txt")]) == 2
    assert "a page is an .html file" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (Debian's chromium)")
def test_the_page_renders_in_headless_chromium_without_console_errors(finished, small_cifar, tmp_path):
    page = run_page(finished, data=small_cifar)
    shot = tmp_path / "page.png"
    done = subprocess.run([_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1280,2400",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, json.dumps(console)


def test_train_writes_its_epochs_as_tensorboard_scalars_equal_to_its_metrics(tmp_path, synthetic_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb-run"
    assert main(["train", "shallow", "--set", "model.stage_widths=[8,16]", "--set", "model.stage_blocks=[1,1]",
                 "--set", "model.stage_strides=[1,2]", "--set", "model.stem_width=8", "--set", "train.epochs=2",
                 "--set", "train.batch_size=64", "--set", "data.train_limit=256", "--data-dir", str(synthetic_dir),
                 "--out", str(run), "--quiet", "--tensorboard", str(tmp_path / "tb")]) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tb-run"))
    events.Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [(e.step, e.value) for e in events.Scalars("loss/train")]
    assert logged == [(r["epoch"], pytest.approx(r["train_loss"])) for r in rows]
    assert [e.step for e in events.Scalars("lr")] == [1, 2]


def test_an_ensembles_folder_gets_its_own_accuracies_then_its_members_and_their_fronts(tmp_path, small_cifar):
    from resbudget.ensemble import train_ensemble
    from resbudget.report.page import page

    summary = train_ensemble(tiny_config("train.epochs=1"), tmp_path / "ens", members=2, budget=200_000,
                             data=small_cifar, progress=False)
    text = page(tmp_path / "ens").read_text()
    _self_contained(text)
    shown = html.unescape(text)
    assert "<h2>The ensemble</h2>" in text and f"{100 * summary['oracle']:.2f}%" in shown
    for rule, accuracy in summary["rules"].items():
        assert f"rule: {rule}</td><td>{100 * accuracy:.2f}%" in shown
    assert "<h2>Fronts: accuracy against size and time</h2>" not in text  # one experiment (two seeds): no front
