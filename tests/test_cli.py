import json

import pytest

from resbudget.cli import main

from .conftest import TINY, TINY_SETS, tiny_config

SET_TINY = [a for s in TINY_SETS for a in ("--set", s)]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_presets_lists_names_and_counts(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0
    assert "shallow" in out and "2,777,674" in out and "11,173,962" in out


def test_arch_json_has_params_macs_layers_warnings(capsys):
    code, out, _ = run(capsys, "arch", "deeper", "--set", "model.stage_strides=[2,2,2,2,2,2,2,2]", "--json")
    data = json.loads(out)
    assert code == 0 and data["params"] == 4_997_386 and data["macs"] > 0
    assert data["layers"][0]["name"] == "stem.0" and len(data["warnings"]) == 1


def test_arch_reads_a_spec_file(capsys, tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(TINY.to_toml())
    code, out, _ = run(capsys, "arch", str(path))
    assert code == 0 and "within the budget" in out


@pytest.mark.parametrize("argv, message", [
    (["arch", "resnet19"], "unknown recipe or preset 'resnet19'"),
    (["train", "resnet19"], "unknown recipe or preset 'resnet19'"),
    (["train", "shallow", "--set", "optim.lrate=0.1"], "unknown key optim.lrate"),
    (["train", "resnet18", "--data-dir", "/nonexistent"], "over the budget of 5,000,000"),
    (["train", "shallow", "--data-dir", "/nonexistent"], "CIFAR-10 not found"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--set", "data.data_dir='x'"], "data.data_dir is no longer part of a config: "),
    (["train", "--set", "train.compile=true"], "train.compile was removed"),
    (["eval", "/nonexistent/run"], "no such checkpoint"),
])
def test_errors_exit_nonzero_with_a_message(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_train_then_eval(capsys, tmp_path, synthetic_dir):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "shallow", *SET_TINY, "--set", "train.epochs=1", "--set",
                         "data.train_limit=256", "--set", "train.batch_size=64",
                         "--data-dir", str(synthetic_dir), "--out", str(out_dir), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["epochs"] == 1 and "epoch 1/1" in err
    assert summary["data_source"].startswith(str(synthetic_dir)) and len(summary["data_checksums"]) == 6
    assert "data_dir" not in (out_dir / "config.toml").read_text()  # where the data lies is not the experiment
    code, out, _ = run(capsys, "eval", str(out_dir), "--data-dir", str(synthetic_dir), "--json")
    result = json.loads(out)
    assert code == 0 and {"test_accuracy", "test_loss"} <= set(result) and result["images"] == 256


def test_a_run_folder_from_before_the_removals_resumes(capsys, tmp_path, synthetic_dir, small_cifar):
    """A config.toml written before data_dir left the config and the unpaying knobs were deleted still resumes."""
    from resbudget.train import train_run

    def stop(epoch, _row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(tiny_config(), tmp_path / "run", data=small_cifar, progress=False, on_epoch_end=stop)
    stored = tmp_path / "run" / "config.toml"
    old = stored.read_text().replace("[data]\n", f"[data]\ndata_dir = '{tmp_path / 'moved'}'\nsmall_crop = 0\n")
    old = old.replace("[train]\n", "[train]\ncompile = false\ntune_allocator = false\n")
    old = old.replace("[model]\n", "[model]\nstem_padding = 'auto'\n")
    assert old.count("stem_padding") == old.count("data_dir") == old.count("compile") == 1
    stored.write_text(old)
    code, out, err = run(capsys, "train", "--resume", "--out", str(tmp_path / "run"), "--data-dir",
                         str(synthetic_dir), "--json")
    assert code == 0, err
    assert "resuming" in err and "epoch 2/2" in err and "epoch 1/2" not in err
    assert json.loads(out)["epochs"] == 2
    stored.write_text(old.replace("compile = false", "compile = true"))
    (tmp_path / "run" / "summary.json").unlink()
    code, _, err = run(capsys, "train", "--resume", "--out", str(tmp_path / "run"), "--data-dir", str(synthetic_dir))
    assert code == 2 and "train.compile was removed" in err and str(stored) in err


def test_an_unwritable_run_folder_is_a_clean_error(capsys, tmp_path, synthetic_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, "train", "shallow", *SET_TINY, "--set", "train.epochs=1", "--set",
                       "data.train_limit=128", "--set", "train.batch_size=64", "--data-dir", str(synthetic_dir),
                       "--out", str(blocker / "run"))
    assert code == 2 and "error:" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


def test_train_best_and_no_noise_resolve_before_the_data_is_looked_for(capsys):
    for name in ("best", "no-noise"):
        code, out, err = run(capsys, "train", name, "--data-dir", "/nonexistent")
        assert code == 2 and "CIFAR-10 not found" in err and not out  # the recipe resolved; only the data was missing
