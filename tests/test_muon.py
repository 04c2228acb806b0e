"""The Muon optimiser and the airbench-style pieces of the builder and the trainer."""


import pytest
import torch
from torch import nn

from resbudget.models import ModelSpec, SpecError, build_model, count_params, get_preset, stage_sizes, summarize
from resbudget.models.prepare import dirac_init_
from resbudget.train import load_config, train_run
from resbudget.train.config import ConfigError
from resbudget.train.muon import MuonSGD, muon_param_groups, orthogonalize
from resbudget.train.optim import make_optimizer, set_lr
from resbudget.train.setup import initial_model

from .conftest import tiny_config

AIRRES = get_preset("airres")


@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (10, 10)])
def test_orthogonalize_gives_singular_values_near_one(shape):
    m, n = shape
    k = min(shape)
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen))
    g = u @ torch.diag(torch.logspace(0, -1.3, k)) @ v.T  # singular values from 1 down to 0.05
    s = torch.linalg.svdvals(orthogonalize(g).float())
    assert s.shape[0] == k
    assert 0.5 < s.min() and s.max() < 1.3  # the quintic iteration is approximate by design


def test_orthogonalize_refuses_a_non_matrix():
    with pytest.raises(ValueError, match="needs a matrix"):
        orthogonalize(torch.ones(2, 3, 4))


def test_muon_step_fixes_the_filter_norm_and_moves_by_an_orthogonal_update():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(16, 8, 3, 3) * 5)
    opt = MuonSGD([w], lr=0.1, momentum=0.0, muon=True)
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt.step()
    normalised = before * 16 ** 0.5 / before.norm()
    update = (normalised - w.detach()).reshape(16, -1) / 0.1
    s = torch.linalg.svdvals(update)
    assert 0.5 < s.min() and s.max() < 1.3
    w.grad = torch.zeros_like(w)  # a zero gradient still renormalises: the norm is sqrt(out channels)
    opt.step()
    assert torch.isclose(w.detach().norm(), torch.tensor(4.0), atol=1e-3)


def test_non_muon_groups_match_torch_sgd():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5, 3))
    b = nn.Parameter(a.detach().clone())
    ours = MuonSGD([a], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.01, muon=False)
    ref = torch.optim.SGD([b], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.01)
    for i in range(4):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(i))
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.equal(a, b)  # the tensor lr gives torch's float-lr updates bit for bit


def test_param_groups_split_filters_classifier_and_the_rest():
    model = build_model(AIRRES)
    model.stem_conv.weight.requires_grad_(False)
    groups = muon_param_groups(model, lr=0.24, momentum=0.6, nesterov=True, bias_lr=100.0, head_lr=1000.0,
                               aux_momentum=0.85, weight_decay=0.004)
    muon, rest, head = groups
    assert muon["muon"] and all(p.dim() == 4 for p in muon["params"])
    assert all(p is not model.stem_conv.weight for p in muon["params"]) and len(muon["params"]) == 6
    assert len(head["params"]) == 1 and head["params"][0] is model.head[0].weight
    assert head["weight_decay"] == pytest.approx(0.004 / 1000)
    assert any(p is model.stem_conv.bias for p in rest["params"]) and rest["lr"] == 100.0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable


def test_set_lr_scales_every_group_by_the_schedule():
    config = load_config("fast", ["optim.name=muon", "optim.lr=0.2", "optim.bias_lr=10.0", "optim.head_lr=40.0"])
    opt = make_optimizer(config, build_model(config.model))
    set_lr(opt, 0.05, config.optim.lr)  # a quarter of the peak
    assert [float(g["lr"]) for g in opt.param_groups] == pytest.approx([0.05, 2.5, 10.0])


def test_muon_needs_its_sgd_lrs():
    with pytest.raises(ConfigError, match="optim.bias_lr must be a positive number"):
        load_config("fast", ["optim.name=muon"])


def test_airres_counts_and_sizes():
    # airbench94's net (1,972,792 params, no classifier bias) plus our classifier bias; 2x2 stem: 31 -> 15 -> 7 -> 3
    assert count_params(build_model(AIRRES)) == 1_972_802
    assert stage_sizes(AIRRES) == [15, 7, 3]
    assert summarize(AIRRES).macs == 118_147_360
    out = build_model(AIRRES)(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_scaled_logits_start_from_a_unit_std_classifier():
    model = build_model(AIRRES)
    assert model.head[0].weight.std().item() == pytest.approx(1.0, abs=1e-5)
    assert build_model(get_preset("shallow")).head[0].weight.std().item() < 0.2  # torch's default, unchanged


def test_single_block_is_conv_bn_act_plus_the_input():
    model = build_model(AIRRES).eval()
    block = model.stages[0][1]
    x = torch.randn(2, 64, 15, 15)
    expected = torch.nn.functional.gelu(block.bn(block.conv(x))) + x
    assert torch.allclose(block(x), expected)


@pytest.mark.parametrize("change, message", [
    ({"stage_strides": (2, 2, 2, 2, 2)}, "shrinks to nothing"),
    ({"activation": "tanh"}, "model.activation: .tanh. is not allowed"),
    ({"logit_scale": 0.0}, "logit_scale must be a number"),
    ({"block": "bottleneck"}, "model.block: .bottleneck. is not allowed"),
    ({"stem_kernel": 40}, "stem_kernel"),
])
def test_bad_airres_spec_is_rejected(change, message):
    spec = AIRRES.to_dict()
    spec.update(change)
    if "stage_strides" in change:
        spec.update(stage_widths=[8] * 5, stage_blocks=[0] * 5)
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict(spec)


def test_dirac_init_makes_the_first_filters_identities():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    before = conv.weight.detach().clone()
    dirac_init_([conv])
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(conv(x)[:, :4], x, atol=1e-6)
    assert torch.equal(conv.weight[4:], before[4:])


def test_frozen_bn_scales_and_stem_do_not_move_in_training(small_cifar, tmp_path):
    config = tiny_config("train.epochs=1", "train.freeze_bn_weight=true", "train.freeze_stem=true",
                         "train.dirac_init=true", "optim.name=muon", "optim.lr=0.1", "optim.bias_lr=1.0",
                         "optim.head_lr=1.0", "optim.weight_decay=0.001")
    start = initial_model(config)
    assert not start.stem_conv.weight.requires_grad
    s = train_run(config, tmp_path / "run", data=small_cifar, progress=False)
    assert s.test_accuracy is not None
    from resbudget.train import load_model
    trained, _ = load_model(tmp_path / "run")
    assert torch.equal(trained.stem_conv.weight, start.stem_conv.weight)
    bn = [m for m in trained.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bn)
    assert not all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bn)  # their biases did train
    moved = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values())]
    assert any(moved)


def test_stem_bias_trains_only_in_its_first_epochs(small_cifar, tmp_path):
    from resbudget.train.checkpoint import load_state
    config = tiny_config("train.epochs=3", "train.stem_bias_epochs=1", "model.stem_norm=false",
                         "model.stem_kernel=2", "train.freeze_stem=true", "train.whiten_init=true")
    start = initial_model(config).stem_conv.bias.detach().clone()
    biases = []
    train_run(config, tmp_path / "run", data=small_cifar, progress=False,
          on_epoch_end=lambda epoch, row: biases.append(load_state(tmp_path / "run" / "state.safetensors")["model"]
                                                        ["stem.0.bias"].clone()))
    assert not torch.equal(biases[0], start)  # trained in epoch 1
    assert torch.equal(biases[0], biases[1]) and torch.equal(biases[1], biases[2])  # then fixed


def test_stem_bias_epochs_need_a_stem_bias():
    with pytest.raises(ConfigError, match="needs a stem with a bias"):
        load_config("fast", ["train.stem_bias_epochs=2"])


def test_default_schedule_decays_linearly_from_the_first_step_to_zero():
    from resbudget.train import Schedule
    from resbudget.train.config import default_config
    c = default_config()
    s = Schedule(c.schedule, c.optim.lr, c.train.epochs)
    e = c.train.epochs
    assert s.lr(0) == pytest.approx(c.optim.lr)
    assert s.lr(e / 2) == pytest.approx(c.optim.lr / 2)
    assert s.lr(e * 0.9) == pytest.approx(c.optim.lr * 0.1)
    assert s.lr(e) == pytest.approx(0.0, abs=1e-12)


def test_default_recipe_runs_end_to_end_on_a_few_real_images(small_cifar, tmp_path):
    import dataclasses

    from resbudget.train.config import default_config
    c = default_config()
    c = dataclasses.replace(c, train=dataclasses.replace(c.train, epochs=2, batch_size=128, stem_bias_epochs=1))
    s = train_run(c, tmp_path / "run", data=small_cifar, progress=False)
    assert s.preset == "airres" and s.params == 1_972_802
    assert 0.0 <= s.test_accuracy <= 1.0 and 0.0 <= s.test_accuracy_tta <= 1.0
    assert s.test_loss is not None and s.test_loss == s.test_loss  # finite, not NaN


def test_set_lr_writes_into_the_same_lr_tensors_which_survive_a_state_round_trip():
    # a step captured as a CUDA graph reads the lr from the tensor it was captured with: the schedule must write there
    config = load_config("fast", ["optim.name=muon", "optim.lr=0.2", "optim.bias_lr=10.0", "optim.head_lr=40.0"])
    model = build_model(config.model)
    opt = make_optimizer(config, model)
    lrs = [g["lr"] for g in opt.param_groups]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.2, 10.0, 40.0]  # the peaks exactly, not in float32
    set_lr(opt, 0.1, config.optim.lr)
    assert all(g["lr"] is t for g, t in zip(opt.param_groups, lrs))
    assert [float(t) for t in lrs] == pytest.approx([0.1, 5.0, 20.0])
    again = make_optimizer(config, model)
    again.load_state_dict(opt.state_dict())
    assert all(isinstance(g["lr"], torch.Tensor) and g["lr"].dtype == torch.float32 for g in again.param_groups)
    assert [float(g["lr"]) for g in again.param_groups] == pytest.approx([0.1, 5.0, 20.0])
    set_lr(again, 0.2, config.optim.lr)
    assert [float(g["lr"]) for g in again.param_groups] == pytest.approx([0.2, 10.0, 40.0])
