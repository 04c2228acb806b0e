import io

from resbudget.train.metrics import MetricsLog, Progress

ROW = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": None, "val_acc": None,
       "test_loss": 0.9, "test_acc": 0.6, "seconds": 3.0, "images_per_s": 100.0}


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_pipe_prints_plain_epoch_lines_only():
    stream = io.StringIO()
    p = Progress(3, stream=stream)
    for step in range(1, 11):
        p.step(1, step, 10, 0.5)
    p.epoch(ROW)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text == "epoch 1/3  lr 0.1  train 1.0000 50.00%  val -  test 60.00%  3.0s  100 img/s\n"


def test_progress_in_a_terminal_redraws_one_line(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    stream = FakeTTY()
    p = Progress(3, stream=stream)
    p.step(1, 10, 10, 0.5)
    p.epoch(ROW)
    text = stream.getvalue()
    assert text.startswith("\r\x1b[2Kepoch 1/3 [") and "10/10 loss 0.5000" in text and text.endswith("100 img/s\n")


def test_progress_in_a_terminal_estimates_the_epochs_end_from_its_steps(monkeypatch):
    from resbudget.train import metrics

    monkeypatch.setenv("TERM", "xterm")
    clock = iter([100.0, 102.0, 104.0])  # the first step ends at 100 s, then a step takes 2 s
    monkeypatch.setattr(metrics, "monotonic", lambda: next(clock))
    stream = FakeTTY()
    p = Progress(3, stream=stream)
    for step in (1, 2, 3):
        p.step(1, step, 10, 0.5)
    assert stream.getvalue().endswith("3/10 loss 0.5000  ~14 s left")  # 7 steps of 2 s


def test_progress_disabled_prints_nothing():
    stream = FakeTTY()
    p = Progress(3, stream=stream, enabled=False)
    p.step(1, 10, 10, 0.5)
    p.epoch(ROW)
    p.message("hello")
    assert stream.getvalue() == ""


def test_metrics_log_keeps_rows_up_to_the_resumed_epoch(tmp_path):
    log = MetricsLog(tmp_path)
    for e in (1, 2, 3):
        log.append({**ROW, "epoch": e})
    resumed = MetricsLog(tmp_path, keep_until_epoch=2)
    assert [r["epoch"] for r in resumed.rows] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4
