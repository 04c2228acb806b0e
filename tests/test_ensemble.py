import dataclasses

import pytest
import torch

from resbudget.ensemble import (
    Ensemble,
    check_ensemble_budget,
    ensemble_metrics,
    load_ensemble,
    majority_vote,
    mean_logits,
    mean_softmax,
    predict,
    save_ensemble,
)
from resbudget.models import BudgetError, build_model, count_params

from .conftest import TINY, tiny_config


def test_mean_softmax_equals_a_hand_computation():
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, torch.log(torch.tensor(3.0))]]])  # member probs (.5,.5), (.25,.75)
    assert torch.allclose(mean_softmax(logits), torch.tensor([[0.375, 0.625]]))
    assert torch.allclose(mean_logits(logits), torch.tensor([[0.0, torch.log(torch.tensor(3.0)) / 2]]))


def test_majority_vote_and_its_tie_break():
    # Three members, one image, three classes: votes 0, 1, 1 -> class 1 wins outright.
    logits = torch.tensor([[[5.0, 0, 0]], [[0, 1.0, 0]], [[0, 1.0, 0]]])
    assert majority_vote(logits).tolist() == [1]
    # Two members disagree (one vote each): the class with the larger summed probability wins.
    tie = torch.tensor([[[3.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    assert majority_vote(tie).tolist() == [0]
    tie_other_way = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 3.0, 0.0]]])
    assert majority_vote(tie_other_way).tolist() == [1]
    # Many confident members cannot outvote by probability alone: 2 weak votes beat 1 sure vote.
    weak = torch.tensor([[[9.0, 0, 0]], [[0, 0.1, 0]], [[0, 0.1, 0]]])
    assert majority_vote(weak).tolist() == [1]


def test_metrics_oracle_and_disagreement():
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[[1.0, 0], [1.0, 0]], [[0, 1.0], [0, 1.0]]])  # member 0 says 0,0; member 1 says 1,1
    m = ensemble_metrics(logits, labels)
    assert m["members"] == [0.5, 0.5] and m["oracle"] == 1.0
    assert m["pairwise_disagreement"] == [[0.0, 1.0], [1.0, 0.0]] and m["mean_disagreement"] == 1.0
    assert set(m["rules"]) == {"mean_softmax", "majority_vote", "mean_logits"}
    with pytest.raises(ValueError, match="unknown combination rule"):
        predict(logits, "median")


def test_budget_per_member_and_total():
    n = count_params(build_model(TINY))
    assert check_ensemble_budget([TINY] * 4, 4 * n) == [n] * 4
    with pytest.raises(BudgetError, match=r"member 0 \(budget/K"):
        check_ensemble_budget([TINY] * 4, 4 * n - 4)
    bigger = dataclasses.replace(TINY, stage_widths=(8, 24))
    with pytest.raises(BudgetError, match="member 1"):
        check_ensemble_budget([TINY, bigger], 2 * n)


def test_saved_ensemble_reloads_with_identical_predictions(tmp_path):
    torch.manual_seed(0)
    members = [build_model(TINY).eval() for _ in range(3)]
    ens = Ensemble(members, [TINY] * 3).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        before = ens(x)
        save_ensemble(tmp_path / "ens", members, [TINY] * 3)
        after = load_ensemble(tmp_path / "ens")(x)
    assert torch.equal(before, after)
    assert torch.allclose(before.exp().sum(-1), torch.ones(8))  # log-probabilities
    assert torch.allclose(before.exp(), mean_softmax(torch.stack([m(x) for m in members]).detach()))


def test_eval_cli_loads_an_ensemble(tmp_path, synthetic_dir, capsys):
    import json

    from resbudget.cli import main

    torch.manual_seed(0)
    save_ensemble(tmp_path / "ens", [build_model(TINY) for _ in range(2)], [TINY] * 2)
    assert main(["eval", str(tmp_path / "ens"), "--data-dir", str(synthetic_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 2 * count_params(build_model(TINY)) and 0 <= result["test_accuracy"] <= 1


def test_ensemble_eval_reports_members_rules_oracle(tmp_path, synthetic_dir, capsys):
    import json

    from resbudget.cli import main

    torch.manual_seed(0)
    save_ensemble(tmp_path / "ens", [build_model(TINY) for _ in range(3)], [TINY] * 3)
    assert main(["ensemble", "eval", str(tmp_path / "ens"), "--data-dir", str(synthetic_dir), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["members"]) == 3 and r["images"] == 256
    assert r["oracle"] >= max(r["members"]) and set(r["rules"]) == {"mean_softmax", "majority_vote", "mean_logits"}
    assert r["pairwise_disagreement"][0][0] == 0.0
    assert main(["ensemble", "eval", str(tmp_path / "ens"), "--data-dir", str(synthetic_dir)]) == 0
    assert "oracle" in capsys.readouterr().out
    assert main(["ensemble", "eval", str(tmp_path / "nothing")]) == 2
    assert "not an ensemble folder" in capsys.readouterr().err


def test_widest_member_fits_and_is_the_widest():
    from resbudget.ensemble import widest_member
    from resbudget.models import get_preset

    spec = widest_member(get_preset("shallow"), 1_000_000)
    n = count_params(build_model(spec))
    assert n <= 1_000_000
    wider = dataclasses.replace(spec, stage_widths=tuple(w + 2 for w in spec.stage_widths),
                                stem_width=spec.stem_width + 1)
    assert count_params(build_model(wider)) > 1_000_000
    assert spec.stage_blocks == (2, 2, 2) and spec.stage_widths[1] > spec.stage_widths[0]


def test_train_ensemble_checks_budget_and_saves_a_loadable_folder(tmp_path, small_cifar):
    from resbudget.ensemble import train_ensemble
    from resbudget.models import BudgetError

    config = tiny_config("train.epochs=1", "optim.lr=0.1")
    n = count_params(build_model(TINY))
    with pytest.raises(BudgetError, match="member 0"):
        train_ensemble(config, tmp_path / "e", members=3, budget=3 * n - 3, data=small_cifar, progress=False)
    with pytest.raises(ValueError, match="seeds must differ"):
        train_ensemble(config, tmp_path / "e", members=2, budget=2 * n, seeds=[1, 1], data=small_cifar,
                       progress=False)
    r = train_ensemble(config, tmp_path / "e", members=2, budget=2 * n, data=small_cifar, progress=False)
    assert r["params"] == 2 * n and r["seeds"] == [0, 1] and len(r["members"]) == 2
    ens = load_ensemble(tmp_path / "e")
    w0, w1 = (m.stem_conv.weight for m in ens.members)
    assert not torch.equal(w0, w1)  # own seeds: own initialisation
    again = train_ensemble(config, tmp_path / "e", members=2, budget=2 * n, data=small_cifar, progress=False)
    assert again["rules"] == r["rules"]  # finished members are reused, not retrained
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert load_ensemble(tmp_path / "e")(x).shape == (4, 10)


def test_ensemble_train_cli(tmp_path, synthetic_dir, capsys):
    from resbudget.cli import main

    args = ["ensemble", "train", "shallow", "--members", "2", "--budget", "100000", "--widest",
            "--set", "model.stage_blocks=[1,1,1]", "--set", "model.stage_strides=[2,2,2]", "--set", "train.epochs=1",
            "--set", "data.train_limit=128", "--set", "data.test_limit=200",
            "--set", "train.batch_size=64", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "e"), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2" in out and "mean softmax" in out
    assert main(["ensemble", "train", "resnet18", "--members", "5", "--out", str(tmp_path / "x")]) == 2
    assert "member 0 (budget/K = 5,000,000/5)" in capsys.readouterr().err


def test_ensemble_train_cli_members_default_only_for_ensemble_presets(tmp_path, capsys):
    from resbudget.cli import main

    assert main(["ensemble", "train", "shallow", "--out", str(tmp_path / "a")]) == 2
    assert "--members K is needed" in capsys.readouterr().err
    # ens5-1m means 5 members: at a 1M budget each gets 200,000 and its 981,360-param member is refused
    assert main(["ensemble", "train", "ens5-1m", "--budget", "1000000", "--out", str(tmp_path / "b")]) == 2
    assert "budget/K = 1,000,000/5" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
