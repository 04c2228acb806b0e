"""train.drop_easy: from the second epoch on, the images with the lowest last-seen loss are skipped."""

import json

import pytest
import torch

from resbudget.data import Augment
from resbudget.train import load_model, train_run
from resbudget.train.config import ConfigError
from resbudget.train.fit import epoch_order

from .conftest import tiny_config
from .test_train import Interrupt


def test_epoch_order_skips_the_easiest_and_keeps_unseen_images():
    g = torch.Generator().manual_seed(0)
    assert sorted(epoch_order(10, g, None, 0.5).tolist()) == list(range(10))  # first epoch: everything
    loss = torch.tensor([0.1, 5.0, 0.2, float("inf"), 3.0, 0.05, 4.0, float("inf"), 0.3, 2.0])
    order = epoch_order(10, g, loss, 0.4)
    assert sorted(order.tolist()) == [1, 3, 4, 6, 7, 9]  # the 4 lowest losses (5, 0, 2, 8) are out
    assert sorted(epoch_order(10, g, loss, 0.0).tolist()) == list(range(10))


def test_training_skips_a_quarter_after_the_first_epoch(small_cifar, tmp_path, monkeypatch):
    batches = []
    call = Augment.__call__
    monkeypatch.setattr(Augment, "__call__", lambda self, x, g, flips=None: batches.append(len(x)) or call(
        self, x, g, flips))
    config = tiny_config("train.epochs=3", "train.drop_easy=0.25", "train.batch_size=32")
    train_run(config, tmp_path / "run", data=small_cifar, progress=False)
    n = len(small_cifar.train)
    full, kept = n // 32, (n - int(0.25 * n)) // 32
    assert full > kept and len(batches) == full + 2 * kept


def test_resumed_run_with_drop_easy_matches_the_uninterrupted_one(small_cifar, tmp_path):
    # the skipped images depend on the losses seen so far: the state file must carry them
    config = tiny_config("train.epochs=3", "train.precision=fp32", "train.drop_easy=0.5")
    full = train_run(config, tmp_path / "full", data=small_cifar, progress=False)

    def stop_after_two(epoch, _row):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_run(config, tmp_path / "cut", data=small_cifar, progress=False, on_epoch_end=stop_after_two)
    cut = train_run(None, tmp_path / "cut", resume=True, data=small_cifar, progress=False)
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "cut")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name
    assert cut.test_accuracy == full.test_accuracy
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_loss"] == pytest.approx(json.loads(
        (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"])


@pytest.mark.parametrize("value, message", [(1.0, r"\[0, 1\)"), (-0.1, r"\[0, 1\)")])
def test_bad_drop_easy_is_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(f"train.drop_easy={value}")


def test_drop_easy_that_leaves_less_than_a_batch_is_refused_before_anything_is_written(small_cifar, tmp_path):
    config = tiny_config("train.drop_easy=0.99", "train.batch_size=64")
    with pytest.raises(ConfigError, match="fewer than one batch of 64"):
        train_run(config, tmp_path / "run", data=small_cifar, progress=False)
    assert not (tmp_path / "run").exists()
