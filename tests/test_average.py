"""The weight average (train.ema): the formula, that evaluation and the result use it, and that it resumes."""


import pytest
import torch
from torch import nn

from resbudget.train import ConfigError, load_model, train_run
from resbudget.train.average import WeightAverage, ema_decay

from .conftest import tiny_config


def test_the_average_follows_its_formula_with_the_warm_up():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(net, decay=0.9)
    expected = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    torch.manual_seed(0)
    for step in range(1, 31):
        (net(torch.randn(8, 3)) - torch.ones(2)).square().mean().backward()  # train mode: the BN statistics move too
        opt.step()
        opt.zero_grad()
        average.update()
        d = min(0.9, (1 + step) / (10 + step))
        assert ema_decay(0.9, step) == d
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v
    live = {k: v.clone() for k, v in net.state_dict().items()}
    with average.applied():
        for k, v in net.state_dict().items():
            if k in expected:
                assert torch.allclose(v, expected[k], atol=1e-6), k
            else:  # the batch counter is copied, not averaged
                assert torch.equal(v, live[k])
        assert not torch.equal(net[0].weight, live["0.weight"])
    for k, v in net.state_dict().items():  # the live weights are back
        assert torch.equal(v, live[k]), k
    average.copy_to_model()
    assert torch.allclose(net[0].weight, expected["0.weight"], atol=1e-6)


def test_a_decay_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(nn.Linear(2, 2), 1.0)
    with pytest.raises(ConfigError, match="train.ema"):
        tiny_config("train.ema=1.5")


def test_a_run_with_ema_is_scored_and_saved_as_its_average_and_resumes_to_the_same_weights(small_cifar, tmp_path):
    config = tiny_config("train.epochs=3", "train.precision=fp32", "train.ema=0.9")
    plain = train_run(tiny_config("train.epochs=3", "train.precision=fp32"), tmp_path / "plain", data=small_cifar,
                      progress=False)
    full = train_run(config, tmp_path / "full", data=small_cifar, progress=False)
    # The same seed and steps: only the averaging differs, so the saved weights must differ from the plain run's.
    a, _ = load_model(tmp_path / "plain")
    b, _ = load_model(tmp_path / "full")
    assert not torch.allclose(a.classifier.weight, b.classifier.weight)
    assert full.test_accuracy != plain.test_accuracy or full.test_loss != plain.test_loss

    class Stop(Exception):
        pass

    def stop_after_two(epoch, _row):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train_run(config, tmp_path / "cut", data=small_cifar, progress=False, on_epoch_end=stop_after_two)
    resumed = train_run(None, tmp_path / "cut", resume=True, data=small_cifar, progress=False)
    c, _ = load_model(tmp_path / "cut")
    for (name, x), y in zip(b.state_dict().items(), c.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name
    assert resumed.test_accuracy == full.test_accuracy
    # The stored result scores what the run reported: the averaged net, not the live one.
    from resbudget.train import evaluate_checkpoint

    result = evaluate_checkpoint(tmp_path / "full", data=small_cifar, precision="fp32")
    assert result["test_accuracy"] == pytest.approx(full.test_accuracy, abs=1e-9)
