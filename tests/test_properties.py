"""Property-based tests (hypothesis): whatever a config override, a checkpoint's spec metadata or an ensemble manifest
holds, the only exceptions are resbudget's own errors, each one line. 1,000 examples per target."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from resbudget.ensemble import load_ensemble, save_ensemble
from resbudget.models import BudgetError, ModelSpec, UnknownPresetError, build_model
from resbudget.train import CheckpointError, ConfigError, config_to_dict, load_config, load_model
from resbudget.train.checkpoint import plain_state_dict

from .conftest import TINY

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
OUR_ERRORS = (ConfigError, UnknownPresetError, CheckpointError, BudgetError)

SECTIONS = config_to_dict(load_config(None))
KEYS = [f"{section}.{key}" for section, table in SECTIONS.items() if isinstance(table, dict) for key in table]
SPEC_KEYS = list(TINY.to_dict())

numbers = st.one_of(st.integers(-3, 70), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12),
                    st.sampled_from(["relu", "gelu", "max", "avg", "basic", "single", "identity", "conv-pool", "sgd",
                                     "muon", "plateau", "flip-shift", "shallow", "airres", "auto", "valid"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def one_line(error: Exception) -> bool:
    return "\n" not in str(error) and str(error).strip() != ""


def _toml_text(value) -> str:
    """A value as an override's right-hand side: TOML where it has a spelling, else its text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
    if isinstance(value, (list, dict, str)) or value is None:
        return json.dumps(value)
    return str(value)


@SETTINGS
@given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS + ["preset", "base"]), st.text(max_size=15)),
                          st.one_of(json_values.map(_toml_text), st.text(max_size=20))), max_size=4))
def test_random_overrides_raise_only_our_one_line_errors(pairs):
    try:
        load_config(None, [f"{key}={value}" for key, value in pairs])
    except OUR_ERRORS as e:
        event(type(e).__name__)
        assert one_line(e), e


@SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(["base", "preset", *SECTIONS]), st.text(max_size=8)),
                       st.one_of(json_values, st.dictionaries(st.sampled_from([k.split(".")[1] for k in KEYS]),
                                                              json_values, max_size=4)), max_size=5))
def test_random_config_tables_raise_only_our_one_line_errors(tables):
    try:
        load_config(tables)
    except OUR_ERRORS as e:
        event(type(e).__name__)
        assert one_line(e), e


def _spec_value(key: str):
    """Values of the right type for ``key`` (often valid, sometimes huge or out of range), or anything at all."""
    sizes = st.one_of(st.integers(1, 64), st.integers(-1, 2**22))
    plausible = {
        "stage_widths": st.lists(sizes, min_size=1, max_size=4),
        "stage_blocks": st.lists(st.integers(0, 3), max_size=4),
        "stage_strides": st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=4),
        "head_hidden": st.lists(sizes, max_size=3), "stem_kernel": st.integers(0, 40), "image_size": sizes,
        "in_channels": sizes, "num_classes": sizes, "stem_width": sizes, "stem_norm": st.booleans(),
        "logit_scale": st.floats(-1, 1e9), "bn_momentum": st.floats(-1, 2), "bn_eps": st.floats(-1, 2),
        "shortcut": st.sampled_from(["conv1x1", "conv3x3", "identity", "none"]),
        "stage_entry": st.sampled_from(["block", "conv-pool", "x"]), "block": st.sampled_from(["basic", "single", "x"]),
        "activation": st.sampled_from(["relu", "gelu", "tanh"]), "global_pool": st.sampled_from(["avg", "max", "x"]),
        "stem_padding": st.sampled_from(["auto", "same", "valid", "full"]),
    }.get(key, json_values)
    return st.one_of(plausible, plausible, plausible, json_values)


def _spec_metadata():
    """Mostly TINY with a few fields changed (to values of their type, or anything), sometimes keys added, sometimes a
    whole random value."""
    changed = st.lists(st.one_of(st.sampled_from([*SPEC_KEYS, "stem_padding"]), st.text(max_size=8)),
                       max_size=4, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: _spec_value(k) for k in keys}))
    mutated = changed.map(lambda c: json.dumps({**TINY.to_dict(), **c}))
    return st.one_of(mutated, mutated, mutated, json_values.map(json.dumps), st.text(max_size=30))


@pytest.fixture(scope="module")
def tiny_tensors():
    torch.manual_seed(0)
    return plain_state_dict(build_model(TINY))


@SETTINGS
@given(spec_text=_spec_metadata())
def test_random_spec_metadata_in_a_checkpoint_raises_only_our_one_line_errors(tmp_path_factory, tiny_tensors,
                                                                            spec_text):
    path = tmp_path_factory.getbasetemp() / "property.safetensors"
    save_file(tiny_tensors, str(path), metadata={"format": "resbudget-weights-v1", "spec": spec_text})
    try:
        model, spec = load_model(path)
    except OUR_ERRORS as e:
        event(type(e).__name__)
        assert one_line(e), e
    else:
        event("loaded")
        assert spec == ModelSpec.from_dict(json.loads(spec_text)) and model(torch.zeros(1, 3, 32, 32)).shape[0] == 1


@pytest.fixture(scope="module")
def ensemble_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("property-ensemble")
    save_ensemble(folder, [build_model(TINY) for _ in range(2)], [TINY] * 2)
    return folder


def _manifests():
    members = st.sampled_from(["member0.safetensors", "member1.safetensors"])
    files = st.one_of(members, members, members, st.sampled_from(["../member0.safetensors", "/etc/passwd", "", ".",
                                                                  "ensemble.json", "member9.safetensors"]),
                      st.text(max_size=20))
    params = st.one_of(st.just(5266), st.integers(-1, 10**7), json_values)
    entry = st.one_of(st.fixed_dictionaries({"file": files}, optional={"params": params}),
                      st.fixed_dictionaries({"file": files}), json_values)
    manifest = st.fixed_dictionaries(
        {"format": st.one_of(st.just("resbudget-ensemble-v1"), st.just("resbudget-ensemble-v1"), json_values),
         "members": st.one_of(st.lists(entry, max_size=4), st.lists(entry, max_size=4), json_values)},
        optional={"member_params": st.one_of(st.just([5266, 5266]), json_values)})
    return st.one_of(manifest, manifest, manifest, json_values)


@SETTINGS
@given(manifest=_manifests())
def test_random_ensemble_manifests_raise_only_our_one_line_errors(ensemble_folder, manifest):
    (ensemble_folder / "ensemble.json").write_text(json.dumps(manifest))
    try:
        ens = load_ensemble(ensemble_folder)
    except OUR_ERRORS as e:
        event(type(e).__name__)
        assert one_line(e), e
    else:
        event("loaded")
        assert ens(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# --- image files given to predict ------------------------------------------------------------------------------------
MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "I", "I;16", "F", "LAB", "HSV", "RGBX", "La"]
FORMATS = {"PNG": ".png", "TIFF": ".tiff", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}


@st.composite
def _image_files(draw):
    """(bytes of a file, its suffix): an image of a random mode, size and format, possibly cut short or bit-flipped,
    or random bytes."""
    import io

    import numpy as np
    from PIL import Image

    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200)), draw(st.sampled_from(list(FORMATS.values())))
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(list(FORMATS)))
    w, h = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = Image.frombytes(mode, (w, h), rng.bytes(len(Image.new(mode, (w, h)).tobytes())))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # a mode this format cannot hold
        return rng.bytes(draw(st.integers(0, 300))), FORMATS[fmt]
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "none", "cut", "flip"]))
    if damage == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(data), FORMATS[fmt]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(image=_image_files())
def test_random_image_files_give_an_rgb_image_or_one_line_error(tmp_path_factory, image):
    from resbudget.deploy.predict import ImageError, load_image

    data, suffix = image
    path = tmp_path_factory.mktemp("img") / f"x{suffix}"
    path.write_bytes(data)
    try:
        array, _ = load_image(path)
    except ImageError as e:
        event("refused")
        assert one_line(e), e
    else:
        event("read")
        assert array.shape == (3, 32, 32) and str(array.dtype) == "uint8"


# --- search space files ----------------------------------------------------------------------------------------------
SPACE_KEYS = ["model.stages", "model.stage_widths", "model.stem_width", "model.block", "train.epochs", "optim.lr",
              "optim.momentum", "train.drop_easy", "train.tta", "train.batch_size", "schedule.warmup_epochs"]
ranges = st.fixed_dictionaries({"low": numbers, "high": numbers},
                               optional={"log": st.one_of(st.booleans(), scalars), "step": numbers})
choices = st.fixed_dictionaries({"choices": st.one_of(st.lists(scalars, max_size=4), json_values)})


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(params=st.dictionaries(st.one_of(st.sampled_from(SPACE_KEYS), st.text(max_size=10)),
                              st.one_of(ranges, choices, json_values), max_size=4))
def test_random_space_files_raise_only_our_one_line_errors(tmp_path_factory, params):
    pytest.importorskip("optuna")
    import tomli_w

    from resbudget.search import SpaceError, load_space

    try:
        text = tomli_w.dumps({"params": params})
    except (TypeError, ValueError):  # None and NaN have no TOML spelling
        return
    path = tmp_path_factory.mktemp("space") / "space.toml"
    path.write_text(text)
    try:
        load_space(path)
    except (SpaceError, *OUR_ERRORS) as e:
        event(type(e).__name__)
        assert one_line(e), e
    else:
        event("loaded")
