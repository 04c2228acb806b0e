import dataclasses

import pytest
import torch
import torch.nn.functional as F

from resbudget.ensemble.grouped import GroupedResNet
from resbudget.models import build_model, count_params

from .conftest import TINY

SPECS = [TINY, dataclasses.replace(TINY, shortcut="identity", head_hidden=(12,)),
         dataclasses.replace(TINY, shortcut="conv3x3"), dataclasses.replace(TINY, stage_entry="conv-pool",
                                                                             stage_blocks=(1, 0))]


def members(spec, k=3):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(build_model(spec))
    return out


@pytest.mark.parametrize("spec", SPECS, ids=["conv1x1", "identity+dense", "conv3x3", "conv-pool"])
def test_grouped_forward_equals_each_member(spec):
    ms = members(spec)
    grouped = GroupedResNet.from_members(ms).eval()
    xs = [torch.randn(4, 3, 32, 32) for _ in ms]
    with torch.no_grad():
        out = grouped(torch.cat(xs, 1))
        for k, (m, x) in enumerate(zip(ms, xs)):
            assert torch.allclose(out[:, k], m.eval()(x), atol=1e-5)
    assert count_params(grouped) == sum(count_params(m) for m in ms)


def test_round_trip_through_member_state_dicts():
    ms = members(TINY)
    back = GroupedResNet.from_members(ms).to_members()
    for a, b in zip(ms, back):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name


@pytest.mark.parametrize("spec", SPECS[:2], ids=["conv1x1", "identity+dense"])
def test_training_together_matches_training_one_after_another(spec):
    """A few SGD steps, each member on its own batches: grouped and sequential give the same weights."""
    ms = members(spec)
    grouped = GroupedResNet.from_members(ms)
    batches = [[(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in ms] for _ in range(3)]

    opt = torch.optim.SGD(grouped.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for step in batches:
        x = torch.cat([b[0] for b in step], 1)
        y = torch.stack([b[1] for b in step], 1)  # (N, K)
        logits = grouped(x)  # (N, K, C)
        loss = sum(F.cross_entropy(logits[:, k], y[:, k]) for k in range(len(ms)))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for k, m in enumerate(ms):
        opt_k = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        for step in batches:
            x, y = step[k]
            loss = F.cross_entropy(m(x), y)
            opt_k.zero_grad()
            loss.backward()
            opt_k.step()
    for k, (trained, expected) in enumerate(zip(grouped.to_members(), ms)):
        for (name, a), b in zip(trained.state_dict().items(), expected.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4), (k, name)


def test_members_of_different_specs_are_refused():
    with pytest.raises(ValueError, match="members of one spec"):
        GroupedResNet.from_members([build_model(TINY), build_model(dataclasses.replace(TINY, stem_width=16))])
