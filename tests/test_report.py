import json

import pytest

from resbudget.cli import main
from resbudget.report import ReportError, build_report, find_runs, summarize_runs
from resbudget.train import config_to_dict, load_config


def fake_run(folder, *, name="exp", seed=0, acc=0.9, preset="shallow", paper=(94.55,), watched_test=False,
             epochs=3, overrides=()):
    config = load_config(preset, [f'experiment.name="{name}"', f"experiment.paper_accuracy={list(paper)}",
                                  f"train.epochs={epochs}", f"train.seed={seed}", *overrides])
    folder.mkdir(parents=True)
    summary = {"config": config_to_dict(config), "preset": preset, "params": 2_777_674, "macs": 421_202_432,
               "epochs": epochs, "test_accuracy": acc, "seed": seed, "wall_seconds": 600.0,
               "plateau_watched_test": watched_test}
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [{"epoch": e, "lr": 0.1, "train_loss": 2.0 / e, "train_acc": 0.5 + 0.1 * e, "val_loss": None,
             "val_acc": None, "test_loss": 2.1 / e, "test_acc": acc - 0.05 * (epochs - e), "seconds": 1.0,
             "images_per_s": 100.0} for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_rows_are_mean_and_std_over_seeds(tmp_path):
    fake_run(tmp_path / "a" / "seed0", seed=0, acc=0.90)
    fake_run(tmp_path / "a" / "seed1", seed=1, acc=0.92)
    fake_run(tmp_path / "b" / "seed0", name="other", acc=0.80, paper=())
    (row_a, row_b) = summarize_runs(find_runs([tmp_path]))
    assert row_a.experiment == "exp" and row_a.accuracies == pytest.approx([90.0, 92.0])
    assert row_a.mean == pytest.approx(91.0) and row_a.std == pytest.approx(2 ** 0.5)
    assert row_b.paper_accuracy == [] and row_b.std == 0.0


def test_report_writes_tables_and_figures(tmp_path):
    fake_run(tmp_path / "runs" / "a" / "seed0", acc=0.90)
    fake_run(tmp_path / "runs" / "a" / "seed1", seed=1, acc=0.92)
    fake_run(tmp_path / "runs" / "b" / "seed0", name="plateau-test", acc=0.95, watched_test=True,
             overrides=["schedule.name=plateau", "schedule.monitor=test"])
    fake_run(tmp_path / "runs" / "c" / "seed0", name="deep", preset="deeper-const-stride", acc=0.85, paper=(91.21,))
    report = build_report([tmp_path / "runs"], tmp_path / "out")
    text = report.read_text()
    assert "| 1 | plateau-test † | shallow | 2,777,674 | 95.00 | 94.55 |" in text
    assert ("| exp | shallow | 2,777,674 | 421.2 M | 3 | cosine, lr 0.1 | sgd | 2 | 91.00 ± 1.41 | 10.0 min | 94.55 |"
            in text)
    assert "† the plateau schedule of this run watched test accuracy" in text
    for png in ("comparison.png", "curves/exp.png", "curves/plateau-test.png", "arch/shallow.png",
                "arch/deeper-const-stride.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    csv_lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("experiment,model,params") and len(csv_lines) == 4


def test_report_errors(tmp_path, capsys):
    with pytest.raises(ReportError, match="no finished runs"):
        build_report([tmp_path], tmp_path / "out")
    fake_run(tmp_path / "x" / "one", seed=0)
    fake_run(tmp_path / "x" / "two", seed=0)
    with pytest.raises(ReportError, match="two runs with seed 0"):
        build_report([tmp_path / "x"], tmp_path / "out")
    fake_run(tmp_path / "y" / "one", seed=0)
    fake_run(tmp_path / "y" / "two", seed=1, overrides=["optim.lr=0.5"])
    with pytest.raises(ReportError, match="differ in more than the seed"):
        build_report([tmp_path / "y"], tmp_path / "out")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_cli(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "a", acc=0.9)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-figures", "--print"]) == 0
    out = capsys.readouterr().out
    assert "## Top 3" in out and not (tmp_path / "out" / "comparison.png").exists()


@pytest.mark.parametrize("name", ["airres", "fast", "ens5-1m"])
def test_architecture_diagram_of_presets(name, tmp_path):
    from resbudget.models import get_preset
    from resbudget.report import plot_architecture
    path = plot_architecture(get_preset(name), name, tmp_path / f"{name}.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_the_accuracy_time_curve_is_drawn_and_refuses_nothing_to_draw(tmp_path):
    from resbudget.report import plot_accuracy_time

    points = [{"curve": c, "label": f"{e} ep", "seconds": 10.0 * e, "accuracy": a + e / 10}
              for c, a in (("no TTA", 90.0), ("TTA", 91.0)) for e in (1, 2, 4)]
    path = plot_accuracy_time(points, {"the study": 94.55}, tmp_path / "fig" / "curve.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no points"):
        plot_accuracy_time([], {}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
