import dataclasses
import json
import math
from pathlib import Path

import pytest

from resbudget.models import get_preset, list_presets
from resbudget.train import (
    Config,
    ConfigError,
    Schedule,
    ScheduleConfig,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    default_config,
    load_config,
)
from resbudget.train.config import BASES_DIR, named_recipes


def test_preset_name_gives_the_study_defaults():
    c = load_config("shallow")
    assert c.preset == "shallow" and c.model.stage_widths == (64, 128, 256)
    assert (c.optim.name, c.optim.lr, c.schedule.name, c.train.epochs) == ("sgd", 0.1, "cosine", 100)


def test_overrides_are_typed():
    c = load_config("shallow", ["optim.lr=0.05", "optim.name=adamw", "model.head_hidden=[128, 64]",
                                "train.channels_last=false", "schedule.factor=0.31622776601683794"])
    assert c.optim.lr == 0.05 and c.optim.name == "adamw" and c.model.head_hidden == (128, 64)
    assert c.train.channels_last is False and math.isclose(c.schedule.factor, 10 ** -0.5)
    assert load_config("shallow", ["optim.lr=1"]).optim.lr == 1.0  # an int is a fine float


@pytest.mark.parametrize("override, message", [
    ("optim.momentun=0.9", "unknown key optim.momentun; allowed in \\[optim\\]: name, lr, momentum"),
    ("optimizer.lr=0.1", "section one of: model, data, optim, schedule, train"),
    ("model.widths=[1]", "unknown key model.widths"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("train.epochs=10.5", "train.epochs: expected an integer"),
    ("schedule.name=onecycle", "'onecycle' is not allowed; choose one of 'cosine', 'plateau'"),
    ("train.channels_last=1", "expected true or false"),
    ("model.stage_strides=[1, 2]", "stage_strides has 2 entries"),
    ("train.epochs=0", "train.epochs must be between 1 and 10,000, got 0"),
    ("optim.lr=-1", "optim.lr must be a positive number"),
    ("nonsense", "must look like section.key=value"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("shallow", [override])


def test_an_unknown_recipe_or_preset_is_an_error_naming_both_lists():
    with pytest.raises(ConfigError, match="unknown recipe or preset 'tiny': recipes are default, best, .*; presets "
                                          "are airres, .*shallow; or give a .toml file"):
        load_config("tiny")
    with pytest.raises(ConfigError, match="unknown recipe or preset 'best-cpu'"):  # old names are gone
        load_config("best-cpu")


def test_toml_file_round_trip(tmp_path):
    c = load_config("deeper", ["schedule.name=plateau", "data.val_size=5000", "train.epochs=7"])
    path = tmp_path / "run.toml"
    path.write_text(config_to_toml(c))
    assert load_config(path) == c


def test_toml_file_with_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('preset = "shallow"\n[train]\nepoch = 3\n')
    with pytest.raises(ConfigError, match="unknown key train.epoch; allowed in \\[train\\]: epochs"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml")


def test_plateau_on_validation_needs_a_validation_split():
    with pytest.raises(ConfigError, match="data.val_size is 0"):
        load_config("shallow", ["schedule.name=plateau"])
    assert load_config("shallow", ["schedule.name=plateau", "schedule.monitor=test"]).schedule.monitor == "test"


def test_default_config_is_within_budget_and_short():
    from resbudget.models import build_model, count_params

    c = default_config()
    assert count_params(build_model(c.model)) <= c.train.budget
    assert load_config(None) == c == Config()


# --- schedules -------------------------------------------------------------------------------------------------------
def test_cosine_runs_from_lr_to_min():
    s = Schedule(ScheduleConfig(name="cosine"), 0.1, epochs=10)
    assert s.lr(0) == pytest.approx(0.1) and s.lr(5) == pytest.approx(0.05) and s.lr(10) == pytest.approx(0.0)


def test_warmup_then_linear_or_cosine_decay():
    lin = Schedule(ScheduleConfig(name="warmup", warmup_epochs=2, decay="linear"), 1.0, epochs=10)
    assert [lin.lr(e) for e in (0, 1, 2, 6, 10)] == pytest.approx([0, 0.5, 1.0, 0.5, 0.0])
    cos = Schedule(ScheduleConfig(name="warmup", warmup_epochs=2, decay="cosine"), 1.0, epochs=10)
    assert cos.lr(6) == pytest.approx(0.5) and cos.lr(4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_step_schedule():
    s = Schedule(ScheduleConfig(name="step", milestones=(3, 6), gamma=0.1), 1.0, epochs=10)
    assert [s.lr(e) for e in (0, 2.9, 3, 6, 9)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])


def test_plateau_drops_after_patience_and_state_round_trips():
    s = Schedule(ScheduleConfig(name="plateau", patience=2, factor=0.1, monitor="test"), 1.0, epochs=10)
    for acc in (0.5, 0.6, 0.6, 0.6):
        s.end_epoch(acc)
    assert s.lr(4) == 1.0  # two epochs without improvement: still within patience
    s.end_epoch(0.6)
    assert s.lr(5) == pytest.approx(0.1)
    t = Schedule(ScheduleConfig(name="plateau", patience=2, monitor="test"), 1.0, epochs=10)
    t.load_state_dict(s.state_dict())
    assert t.lr(5) == pytest.approx(0.1) and t.best == 0.6


def test_config_is_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.epochs = 3  # type: ignore[misc]


def test_shipped_config_files_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert files
    for path in files:
        c = load_config(path)
        assert c.preset and c.train.epochs >= 1


def test_the_package_api_imports():
    import resbudget

    assert callable(resbudget.train_run) and callable(resbudget.load_config)
    assert resbudget.get_preset("shallow") == load_config("shallow").model


def test_scale_epochs_scales_every_schedule_length():
    from resbudget.train import scale_epochs

    c = load_config("shallow", ["schedule.name=step", "schedule.milestones=[50, 75]", "schedule.patience=10",
                                "schedule.warmup_epochs=5", "schedule.t_max=100"])
    s = scale_epochs(c, 10)
    assert s.train.epochs == 10 and s.schedule.milestones == (5, 7.5) and s.schedule.patience == 1
    assert s.schedule.warmup_epochs == 0.5 and s.schedule.t_max == 10
    assert s.model == c.model and s.optim == c.optim
    # The lr curve keeps its shape: at the same fraction of training, the same lr.
    full = Schedule(c.schedule, 0.1, 100)
    short = Schedule(s.schedule, 0.1, 10)
    assert [full.lr(e) for e in (0, 49, 50, 74, 75)] == pytest.approx([short.lr(e / 10) for e in (0, 49, 50, 74, 75)])
    cos = load_config("shallow")
    assert (Schedule(scale_epochs(cos, 4).schedule, 0.1, 4).lr(2)
            == pytest.approx(Schedule(cos.schedule, 0.1, 100).lr(50)))
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        scale_epochs(c, 0)


def test_experiment_section_carries_paper_numbers(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('base = "study"\n[experiment]\nname = "x"\npaper_accuracy = [94.55]\n')
    c = load_config(path)
    assert c.experiment.paper_accuracy == (94.55,) and c.experiment.name == "x"


def test_the_previous_default_recipe_file_loads():
    from pathlib import Path
    c = load_config(Path(__file__).resolve().parents[1] / "configs" / "fast-sgd-15.toml")
    assert (c.preset, c.train.epochs, c.train.batch_size, c.optim.lr, c.optim.nesterov) == ("fast", 15, 256, 0.2, True)
    assert (c.schedule.name, c.schedule.warmup_epochs, c.train.label_smoothing) == ("warmup", 1.0, 0.1)


# --- bases and the files of the repository ---------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(str(p.relative_to(REPO)) for folder in ("experiments/paper", "configs", "benchmarks/recipes")
                      for p in (REPO / folder).glob("*.toml"))
BASE_FILES = sorted(f"src/resbudget/train/bases/{p.name}" for p in BASES_DIR.glob("*.toml"))
# Every config of the tree, resolved at commit 14359eb: those still in the tree under the same name or path resolve
# to the same configs now.
BEFORE = {name: config for name, config in
          json.loads((REPO / "tests" / "fixtures" / "resolved_configs_14359eb.json").read_text()).items()
          if (REPO / name).is_file() or name in named_recipes() or name in list_presets()}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_config_still_in_the_tree_resolves_as_before(name):
    """The same configs, but for the keys added since (compat.ADDED_KEYS), which 14359eb did not have."""
    from resbudget.compat import ADDED_KEYS

    source = str(REPO / name) if name.endswith(".toml") else name
    now = config_to_dict(load_config(source))
    for key in ADDED_KEYS:
        section, _, field_name = key.partition(".")
        del now[section][field_name]
    assert now == BEFORE[name]


def test_a_run_folder_written_before_a_key_was_added_reads_as_what_it_was():
    from resbudget.compat import ADDED_KEYS

    stored = config_to_dict(load_config(None))
    del stored["train"]["temperature"]
    assert ADDED_KEYS["train.temperature"] == 0.0
    assert config_from_dict(stored, stored=True).train.temperature == 0.0  # it had no recipe temperature
    assert load_config(None).train.temperature > 0  # today's default recipe has one


def test_a_temperature_the_user_gives_is_recorded_as_theirs_not_as_the_recipes(tmp_path):
    assert load_config("no-noise").train.temperature_source == ""  # the recipe's own, fitted on validation splits
    given = load_config("no-noise", ["train.temperature=0.5"]).train
    assert (given.temperature, given.temperature_source) == (0.5, "given with --set train.temperature")
    own = tmp_path / "mine.toml"
    own.write_text('base = "no-noise"\n[train]\ntemperature = 0.6\n')
    assert load_config(own).train.temperature_source == f"given in {own.resolve()}"
    # a source given beside it is kept, and a later --set of the value alone is the user's again
    own.write_text('base = "no-noise"\n[train]\ntemperature = 0.6\ntemperature_source = "fitted on my split"\n')
    assert load_config(own).train.temperature_source == "fitted on my split"
    assert load_config(own, ["train.temperature=0.7"]).train.temperature_source == "given with --set train.temperature"
    # a run folder's own config keeps what it recorded
    stored = config_to_dict(load_config("no-noise"))
    assert config_from_dict(stored, stored=True).train.temperature_source == ""


@pytest.mark.parametrize("value", [-1.0, 0.001, 101.0, float("nan")])
def test_a_recipe_temperature_outside_its_range_is_refused(value):
    with pytest.raises(ConfigError, match="train.temperature(: expected a finite| must be 0)"):
        load_config(None, [f"train.temperature={value}"])


def test_every_config_file_in_the_tree_loads_and_no_two_are_the_same_recipe():
    """Named recipes, config files and the study's experiments: each resolves, and no two resolve to one config (a
    second name for a recipe belongs in the compat table, not in a second file)."""
    resolved = {name: config_to_dict(load_config(REPO / name)) for name in [*BASE_FILES, *CONFIG_FILES]}
    resolved["default"] = config_to_dict(load_config(None))
    names = sorted(resolved)
    same = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if resolved[a] == resolved[b]]
    assert not same
    assert set(named_recipes()) == {"default", *(Path(p).stem for p in BASE_FILES)}


@pytest.mark.parametrize("name", [*BASE_FILES, *CONFIG_FILES])
def test_every_recipe_is_at_most_one_base_above_the_defaults(name):
    import tomllib

    base = tomllib.loads((REPO / name).read_text()).get("base", "default")
    if base != "default":
        assert not base.endswith(".toml"), f"{name} builds on another file: name a recipe of train/bases/"
        parent = tomllib.loads((BASES_DIR / f"{base}.toml").read_text())
        assert parent.get("base", "default") == "default", f"{name}: its base {base} has a base of its own"


def _resolved_base(data: dict, path: Path) -> dict:
    from resbudget.train.config import _resolve

    return _resolve({"base": data.get("base", "default")}, path, (path,))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_recipe_files_spell_out_only_their_differences_from_their_base(name):
    import tomllib

    path = REPO / name
    data = tomllib.loads(path.read_text())
    base = _resolved_base(data, path)
    assert "base" in data, "a file in the repository names its base"
    if "preset" in data:
        assert data["preset"] != base["preset"], "preset repeats the base's"
        base["model"] = get_preset(data["preset"]).to_dict()
    for section, table in data.items():
        if isinstance(table, dict):
            same = [k for k, v in table.items() if base[section][k] == v]
            assert not same, f"[{section}] repeats its base: {same}"


def test_a_file_lays_its_keys_over_its_base(tmp_path):
    (tmp_path / "parent.toml").write_text('base = "study"\npreset = "fast"\n[train]\nepochs = 7\n')
    (tmp_path / "child.toml").write_text('base = "parent.toml"\n[optim]\nlr = 0.3\n[model]\nstem_width = 16\n')
    child, study = load_config(tmp_path / "child.toml"), load_config("fast")
    assert (child.train.epochs, child.optim.lr, child.model.stem_width, child.preset) == (7, 0.3, 16, "fast")
    assert child.model.stage_widths == study.model.stage_widths and child.optim.name == "sgd"
    (tmp_path / "bare.toml").write_text("[train]\nepochs = 3\n")  # no base: the default recipe
    assert load_config(tmp_path / "bare.toml") == load_config(None, ["train.epochs=3"])
    # --set preset= replaces the model as a file's preset does; later model keys change it
    c = load_config("fast", ["preset=shallow", "model.stem_width=32"])
    assert c.model == dataclasses.replace(get_preset("shallow"), stem_width=32) and c.preset == "shallow"


@pytest.mark.parametrize("text, message", [
    ('base = "nope"\n', "unknown base 'nope'; use one of default, best, no-noise, study, or a .toml file"),
    ('base = "missing.toml"\n', "missing.toml does not exist"),
    ('base = "loop.toml"\n', "the bases form a loop"),
    ("base = 3\n", "base: expected a base name or a .toml file, got 3"),
    ('preset = ""\n', "preset: expected a preset name"),
    ("train = 3\n", "\\[train\\] must be a table"),
    ("[data]\ndata_dir = 'x'\n", "data.data_dir is no longer part of a config: .* --data-dir"),
    ("[train]\ncompile = true\n", "train.compile was removed .* only its no-op value False"),
    ("[data]\nsmall_crop = 24\n", "data.small_crop was removed"),
    ("[model]\nstem_padding = 'same'\nstem_kernel = 2\n", "stem_padding 'same' was removed"),
])
def test_bad_bases_and_removed_keys_name_the_problem(tmp_path, text, message):
    (tmp_path / "loop.toml").write_text('base = "loop.toml"\n')
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.toml")


def test_removed_knobs_at_their_no_op_values_still_read(tmp_path):
    (tmp_path / "old.toml").write_text("[train]\ncompile = false\ntune_allocator = false\n[data]\nsmall_crop = 0\n"
                                       "[model]\nstem_padding = 'auto'\n")
    assert load_config(tmp_path / "old.toml") == default_config()


def test_named_recipes_load_and_none_is_a_preset_name():
    from resbudget.models import list_presets

    assert load_config("default") == load_config(None)
    assert {"study", "best", "no-noise"} <= set(named_recipes())
    assert not set(named_recipes()) & set(list_presets())  # a bare name must mean one thing
    assert load_config("best").model.stage_widths == (160, 384, 384)


NAMED = ("default", "best", "no-noise", "study")


@pytest.mark.parametrize("name", [*NAMED, *CONFIG_FILES])
def test_every_recipe_and_base_stays_under_its_budget(name):
    from resbudget.models import DEFAULT_BUDGET, check_spec

    config = load_config(name if name in NAMED else REPO / name)
    params = check_spec(config.model, config.train.budget, allow_over_budget=True)
    assert params <= config.train.budget, (name, params)
    # Only the study's 11.2M ResNet-18 reference raises the 5M budget, and says so.
    assert config.train.budget == DEFAULT_BUDGET or name == "experiments/paper/arch-resnet18.toml", name
