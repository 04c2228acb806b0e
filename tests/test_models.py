import dataclasses

import pytest
import torch

from resbudget.models import (
    BudgetError,
    ModelSpec,
    SpecError,
    UnknownPresetError,
    build_model,
    check_budget,
    count_params,
    get_preset,
    list_presets,
    spec_warnings,
    stage_sizes,
    summarize,
)

EXPECTED_PARAMS = {
    "resnet18": 11_173_962, "shallow": 2_777_674, "deeper": 4_997_386, "fast": 2_391_082,
    "narrow": 2_768_490, "narrow-conv3x3": 3_112_554, "narrow-identity": 2_725_610, "narrow-dense": 3_151_786,
    "deeper-const-stride": 4_997_386, "ens5-1m": 981_360, "ens10-500k": 496_513,
    "airres": 1_972_802, "airres-wide": 4_606_530,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_preset_parameter_count(name):
    assert count_params(build_model(get_preset(name))) == EXPECTED_PARAMS[name]


def test_every_preset_has_an_expected_count():
    assert set(list_presets()) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", list_presets())
def test_forward_shape_finite_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(get_preset(name))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_a_stride_over_a_1x1_map_is_dropped_without_changing_the_function():
    """A padded stride-2 convolution of a 1x1 map and the unstrided one give the same output: the builder uses the
    latter there (oneDNN's bf16 weight gradient of the strided one is wrong), and the net stays the spec's."""
    from resbudget.models.builder import unstride_

    spec = get_preset("deeper-const-stride")
    assert stage_sizes(spec)[4:] == [1, 1, 1, 1]
    model = build_model(spec)
    entry = model.stages[6][0]  # input 1x1 (stage 6's), stride 2 in the spec
    assert entry.conv1.stride == (1, 1) and isinstance(entry.shortcut, torch.nn.Sequential)  # still a projection
    assert model.stages[0][0].conv1.stride == (2, 2)  # 32x32 in: the stride stays
    torch.manual_seed(0)
    x = torch.randn(4, entry.conv1.in_channels, 1, 1)
    strided = torch.nn.functional.conv2d(x, entry.conv1.weight, stride=2, padding=1)
    assert torch.equal(entry.conv1(x), strided)
    plain = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
    unstride_(plain)
    assert plain.stride == (1, 1)


def test_one_bf16_step_of_the_net_whose_maps_collapse_has_sound_gradients():
    """One backward pass under bf16 autocast (as training runs) of the 8-stage net with stride 2 on every stage: every
    gradient finite, and in the 3x3 convolutions over 1x1 maps the taps that see only padding get exactly none.
    Repeated, since the wrong kernel left garbage there only sometimes."""
    torch.manual_seed(0)
    model = build_model(get_preset("deeper-const-stride")).to(memory_format=torch.channels_last)
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    over_1x1 = [m.weight for stage in model.stages[5:] for m in stage.modules()
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(over_1x1) == 12
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        for weight in over_1x1:
            padding_taps = weight.grad.clone()
            padding_taps[:, :, 1, 1] = 0
            assert not padding_taps.any()


@pytest.mark.parametrize("name", list_presets())
def test_the_largest_map_from_the_spec_is_the_largest_layer_output(name):
    import math

    from resbudget.models import largest_map, summarize

    spec = get_preset(name)
    assert largest_map(spec) == max(math.prod(r.output_shape) for r in summarize(spec).layers)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UnknownPresetError, match="available presets: airres, airres-wide, deeper, "
                                                 "deeper-const-stride, ens10-500k, ens5-1m, fast, narrow"):
        get_preset("resnet19")


def test_spec_toml_round_trip(tmp_path):
    spec = ModelSpec(stem_width=16, stage_widths=(16, 32), stage_blocks=(1, 2), stage_strides=(1, 2),
                     shortcut="conv3x3", head_hidden=(128, 64))
    path = tmp_path / "spec.toml"
    path.write_text(spec.to_toml())
    assert ModelSpec.from_toml(path) == spec


@pytest.mark.parametrize("change, message", [
    ({"stage_blocks": (2, 2)}, "stage_blocks has 2 entries"),
    ({"stage_strides": (1, 3, 2)}, "stage_strides must be 1 or 2"),
    ({"shortcut": "conv5x5"}, "shortcut must be one of"),
    ({"stage_widths": (64, 0, 256)}, "positive integers"),
])
def test_bad_spec_is_rejected_with_the_reason(change, message):
    with pytest.raises(SpecError, match=message):
        dataclasses.replace(get_preset("shallow"), **change)


def test_unknown_spec_key_is_named():
    with pytest.raises(SpecError, match="unknown key model.widths"):
        ModelSpec.from_dict({"widths": [1, 2]})


def test_shortcut_kinds_change_parameters_as_expected():
    base = get_preset("shallow")
    conv1 = count_params(build_model(base))
    conv3 = count_params(build_model(dataclasses.replace(base, shortcut="conv3x3")))
    ident = count_params(build_model(dataclasses.replace(base, shortcut="identity")))
    # Two projections (64->128, 128->256 at stride 2): 1x1 weights 8,192 + 32,768; 3x3 is 9x that.
    assert conv3 - conv1 == 8 * (64 * 128 + 128 * 256)
    # Identity drops both projections and their BatchNorms (2 * (128 + 256) parameters).
    assert conv1 - ident == 64 * 128 + 128 * 256 + 2 * (128 + 256)


def test_identity_shortcut_projects_only_where_the_width_shrinks():
    from resbudget.models.blocks import IdentityShortcut

    spec = ModelSpec(stem_width=64, stage_widths=(16, 64), stage_blocks=(1, 1), stage_strides=(1, 2),
                     shortcut="identity")
    model = build_model(spec)
    first, second = model.stages[0][0].shortcut, model.stages[1][0].shortcut
    assert isinstance(first[0], torch.nn.Conv2d) and first[0].kernel_size == (1, 1)  # 64 -> 16
    assert isinstance(second, IdentityShortcut)  # 16 -> 64 at stride 2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_identity_shortcut_pads_channels_and_pools():
    from resbudget.models.blocks import IdentityShortcut

    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    y = IdentityShortcut(2, 5, 2)(x)
    assert y.shape == (1, 5, 2, 2)
    assert torch.equal(y[:, 2:], torch.zeros(1, 3, 2, 2))
    assert y[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4


def test_dense_head_adds_hidden_layers():
    base = get_preset("shallow")
    dense = dataclasses.replace(base, head_hidden=(128, 64))
    extra = (256 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10) - (256 * 10 + 10)
    assert count_params(build_model(dense)) - count_params(build_model(base)) == extra


def test_collapse_warning_only_when_a_middle_stage_is_1x1():
    deeper = get_preset("deeper")
    assert stage_sizes(deeper)[-1] == 2
    assert spec_warnings(deeper) == []
    const = dataclasses.replace(deeper, stage_strides=(2,) * 8)
    assert stage_sizes(const) == [16, 8, 4, 2, 1, 1, 1, 1]
    (warning,) = spec_warnings(const)
    assert "1x1 at stage 5 of 8" in warning


def test_summary_counts_match_a_hand_computation():
    spec = ModelSpec(stem_width=4, stage_widths=(8,), stage_blocks=(1,), stage_strides=(2,), image_size=8)
    s = summarize(spec)
    stem = 8 * 8 * 4 * 3 * 9
    conv1 = 4 * 4 * 8 * 4 * 9
    conv2 = 4 * 4 * 8 * 8 * 9
    shortcut = 4 * 4 * 8 * 4
    linear = 8 * 10
    assert s.macs == stem + conv1 + conv2 + shortcut + linear
    assert s.params == count_params(build_model(spec))
    assert sum(r.params for r in s.layers) == s.params
    by_name = {r.name: r for r in s.layers}
    assert by_name["stages.0.0.conv1"].output_shape == (8, 4, 4)


def test_budget_check_names_the_numbers():
    check_budget(4_999_999)
    with pytest.raises(BudgetError, match=r"11,173,962 parameters, 6,173,962 over the budget of 5,000,000"):
        check_budget(11_173_962)


def test_identity_saving_is_the_studys_1_57_percent():
    saved = count_params(build_model(get_preset("narrow"))) - count_params(build_model(get_preset("narrow-identity")))
    assert saved == 42_880
    assert round(100 * saved / EXPECTED_PARAMS["narrow-identity"], 2) == 1.57


def test_const_stride_preset_warns_and_alternating_does_not():
    assert spec_warnings(get_preset("deeper")) == []
    assert len(spec_warnings(get_preset("deeper-const-stride"))) == 1


def test_ensemble_member_presets_fit_their_share_of_the_budget():
    from resbudget.models import DEFAULT_BUDGET
    from resbudget.models.presets import ENSEMBLE_MEMBERS

    for name, k in ENSEMBLE_MEMBERS.items():
        spec = get_preset(name)
        n = count_params(build_model(spec))
        assert n <= DEFAULT_BUDGET // k
        wider = dataclasses.replace(spec, stem_width=spec.stem_width + 1,
                                    stage_widths=tuple(w + 1 for w in spec.stage_widths))
        assert count_params(build_model(wider)) > DEFAULT_BUDGET // k  # the widest of its shape that fits


def test_specs_near_the_studys_ensemble_member_count():
    """What the member search found (docs/STUDY.md): 987,402 exactly only with irregular widths."""
    exact = ModelSpec(stem_width=16, stage_widths=(52, 104, 128), stage_blocks=(2, 2, 2), stage_strides=(1, 2, 2),
                      shortcut="identity")
    nearest_regular = ModelSpec(stem_width=80, stage_widths=(116, 232), stage_blocks=(1, 1), stage_strides=(1, 2),
                                head_hidden=(64,))
    assert count_params(build_model(exact)) == 987_402
    assert count_params(build_model(nearest_regular)) == 987_410


def test_conv_pool_stages_build_the_resnet9_layout():
    """ResNet-9 (Page's DAWNBench net): prep 64, then 128 + residual, 256, 512 + residual: 6,573,120 params + head."""
    spec = ModelSpec(stem_width=64, stage_widths=(128, 256, 512), stage_blocks=(1, 0, 1), stage_strides=(2, 2, 2),
                     stage_entry="conv-pool")
    model = build_model(spec)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and not any(c.stride != (1, 1) for c in convs)  # pooling, not strided convs, downsamples
    assert count_params(model) == 6_573_130
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert [len(s) for s in model.stages] == [2, 1, 2]
    with pytest.raises(SpecError, match="0 blocks need stage_entry"):
        ModelSpec(stem_width=64, stage_widths=(64, 128, 256), stage_blocks=(1, 0, 1), stage_strides=(1, 2, 2))
    with pytest.raises(SpecError, match="stage_entry must be one of"):
        ModelSpec(stem_width=64, stage_widths=(64, 128, 256), stage_blocks=(1, 1, 1), stage_strides=(1, 2, 2),
                  stage_entry="pool-conv")


def test_a_spec_has_no_default_shape_and_says_which_field_is_missing():
    with pytest.raises(SpecError, match="a model spec needs stem_width, stage_widths.*missing: model.stem_width"):
        ModelSpec.from_dict({"stage_blocks": [1, 1], "stage_strides": [1, 2]})
    with pytest.raises(TypeError):
        ModelSpec()  # the default recipe's net is a preset its config names, not the spec's defaults
