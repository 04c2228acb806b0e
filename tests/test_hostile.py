"""Hostile but fair input: one run per folder, untrusted checkpoints and ensemble manifests, damaged files. Every
failure ends in one line naming the file and the problem, and exit status 2; nothing the user had is changed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from resbudget.cli import main
from resbudget.ensemble import load_ensemble, save_ensemble
from resbudget.models import build_model

from .conftest import REPO, TINY, TINY_SETS, cli_in_child

SET_TINY = [a for s in TINY_SETS for a in ("--set", s)]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *argv, match: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert match in err, err
    return err


# --- one run per folder ----------------------------------------------------------------------------------------------
def _child(*argv):
    """``resbudget ARGV`` in a child process (on the synthetic set: the fixture's manifest is in the environment)."""
    return subprocess.Popen(cli_in_child(list(argv)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_runs_into_one_folder_one_proceeds_and_the_other_is_refused(tmp_path, synthetic_dir, small_cifar):
    out = tmp_path / "x"
    args = ["train", "shallow", *SET_TINY, "--set", "train.epochs=4", "--set", "train.batch_size=64", "--quiet",
            "--data-dir", str(synthetic_dir), "--out", str(out), "--set"]
    first = _child(*args, "train.seed=1")
    second = _child(*args, "train.seed=2")
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = 1 if results[0][0] == 0 else 2
    refused = results[1][1] if winner == 1 else results[0][1]
    assert "in use by another resbudget run" in refused or "is not empty" in refused, refused
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == winner and f"seed = {winner}" in (out / "config.toml").read_text()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_killed_run_leaves_no_lock_and_its_temporary_files_go_on_resume(tmp_path, synthetic_dir, small_cifar,
                                                                         capsys):
    out = tmp_path / "run"
    child = _child("train", "shallow", *SET_TINY, "--set", "train.epochs=30", "--set",
                   "train.batch_size=64", "--quiet", "--data-dir", str(synthetic_dir), "--out", str(out))
    deadline = time.time() + 120
    while not (out / "state.safetensors").is_file() and time.time() < deadline:
        time.sleep(0.05)
    assert (out / "state.safetensors").is_file(), child.stderr.read() if child.poll() is not None else "no epoch"
    (out / ".model.safetensors.abc123.tmp").write_bytes(b"half a file")  # as an atomic write cut short leaves it
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    code, _, err = run(capsys, "train", "--resume", "--out", str(out), "--data-dir", str(synthetic_dir), "--quiet",
                       "--set", "train.epochs=30")
    assert code == 2 and "differs from the one stored" in err  # a changed config is still refused ...
    code, _, err = run(capsys, "train", "--resume", "--out", str(out), "--data-dir", str(synthetic_dir), "--quiet")
    assert code == 0, err  # ... and the lock died with its process
    assert not list(out.glob(".*.tmp")) and (out / "summary.json").is_file()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors too: no file of the run is private


def test_a_resume_while_the_run_goes_on_is_refused(tmp_path, synthetic_dir, small_cifar, capsys):
    out = tmp_path / "run"
    child = _child("train", "shallow", *SET_TINY, "--set", "train.epochs=200", "--set",
                   "train.batch_size=64", "--quiet", "--data-dir", str(synthetic_dir), "--out", str(out))
    try:
        deadline = time.time() + 120
        while not (out / "config.toml").is_file() and time.time() < deadline:
            time.sleep(0.05)
        before = sorted(p.name for p in out.iterdir())
        one_line_error(capsys, "train", "--resume", "--out", str(out), "--data-dir", str(synthetic_dir),
                       match="in use by another resbudget run")
        assert set(before) <= {p.name for p in out.iterdir()}
    finally:
        child.kill()
        child.wait()


def test_an_unwritable_or_uncreatable_out_is_refused_before_the_data_is_loaded(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # no data anywhere: the folder is what the error names, so it was checked first
    one_line_error(capsys, "train", "shallow", "--data-dir", str(tmp_path / "no-data"), "--out", str(blocker / "run"),
                   match="cannot create the run folder")
    one_line_error(capsys, "train", "shallow", "--data-dir", str(tmp_path / "no-data"), "--out", str(blocker),
                   match="is not a folder")
    assert blocker.read_text() == "not a folder"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(capsys, "train", "shallow", "--data-dir", str(tmp_path / "no-data"), "--out",
                       str(locked / "run"), match="cannot create the run folder")
    err = one_line_error(capsys, "train", "shallow", "--data-dir", str(tmp_path / "no-data"), "--out",
                         str(tmp_path / "new"), match="CIFAR-10 not found")
    assert not (tmp_path / "new").exists()  # the folder the failed run created is gone again
    assert err


# --- untrusted checkpoints -------------------------------------------------------------------------------------------
def _checkpoint(tmp_path, spec=TINY, name="model.safetensors"):
    torch.manual_seed(0)
    from resbudget.train import save_weights

    path = tmp_path / name
    save_weights(build_model(spec), spec, path)
    return path


def _with_metadata(path, spec_text):
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"format": "resbudget-weights-v1", "spec": spec_text})
    return path


@pytest.mark.parametrize("spec_text, match", [
    (json.dumps({**TINY.to_dict(), "stage_widths": [20000, 20000]}), "over the budget of 5,000,000"),
    (json.dumps({**TINY.to_dict(), "stage_widths": [100000, 100000]}), "over the budget of 5,000,000"),
    (json.dumps({**TINY.to_dict(), "stage_blocks": [100000, 1]}), "layers; at most"),
    (json.dumps({**TINY.to_dict(), "image_size": 100000}), "inputs, larger than any CIFAR net's"),
    ("[1, 2]", "the model spec in its metadata is not a JSON object"),
    ("{not json", "the model spec in its metadata is not valid JSON"),
    (json.dumps({**TINY.to_dict(), "stage_widths": "wide"}), "model.stage_widths: expected a list of int"),
    (json.dumps({**TINY.to_dict(), "stem_kernel": 5}),
     "tensor stem.0.weight has shape [8, 3, 3, 3], the spec needs [8, 3, 5, 5]"),
    (json.dumps({**TINY.to_dict(), "num_classes": 11}), "has shape [10"),
    (json.dumps({**TINY.to_dict(), "head_hidden": [4]}), "weights do not fit the spec"),
])
def test_a_checkpoint_is_checked_before_anything_is_built(tmp_path, capsys, spec_text, match):
    path = _with_metadata(_checkpoint(tmp_path), spec_text)
    err = one_line_error(capsys, "eval", str(path), "--data-dir", str(tmp_path / "no-data"), match=match)
    assert str(path) in err


def test_the_budget_of_a_checkpoint_can_be_lifted_but_not_its_ceiling(tmp_path, capsys):
    path = _with_metadata(_checkpoint(tmp_path), json.dumps({**TINY.to_dict(), "stage_widths": [100000, 100000]}))
    one_line_error(capsys, "eval", str(path), "--allow-over-budget", match="hard ceiling of 200,000,000")
    small = _checkpoint(tmp_path, name="small.safetensors")
    one_line_error(capsys, "eval", str(small), "--budget", "1000", "--data-dir", str(tmp_path / "no-data"),
                   match="over the budget of 1,000")
    one_line_error(capsys, "eval", str(small), "--budget", "1000", "--allow-over-budget", "--data-dir",
                   str(tmp_path / "no-data"), match="CIFAR-10 not found")  # allowed: it got as far as the data


# --- untrusted ensembles ---------------------------------------------------------------------------------------------
def _ensemble(tmp_path, k=2):
    torch.manual_seed(0)
    folder = tmp_path / "ens"
    save_ensemble(folder, [build_model(TINY) for _ in range(k)], [TINY] * k)
    return folder


@pytest.mark.parametrize("change, match", [
    (lambda m, f: m["members"][0].update(file="../../other/model.safetensors"), "must be a plain .safetensors file"),
    (lambda m, f: m["members"][0].update(file=str(f / "member1.safetensors")), "must be a plain .safetensors file"),
    (lambda m, f: m["members"][0].update(file="../../../../etc/passwd"), "must be a plain .safetensors file"),
    (lambda m, f: m["members"][0].update(params=12), "says 12 parameters, its weights have"),
    (lambda m, f: m["members"][0].pop("file"), 'must be an object with a "file" name'),
    (lambda m, f: m.update(members="member0.safetensors"), "members must be a list of 1 to 64 members"),
    (lambda m, f: m.update(members=[]), "members must be a list of 1 to 64 members"),
    (lambda m, f: m["members"].append(None), 'members[2] must be an object with a "file" name'),
    (lambda m, f: m["members"][0].update(params=True), "params must be an integer"),
    (lambda m, f: m.update(member_params=[1, 2]), "member_params [1, 2] differs"),
    (lambda m, f: m.update(format="other"), "not a resbudget ensemble manifest"),
])
def test_a_manifest_is_checked_as_a_schema(tmp_path, capsys, change, match):
    folder = _ensemble(tmp_path)
    manifest = json.loads((folder / "ensemble.json").read_text())
    change(manifest, folder)
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    err = one_line_error(capsys, "ensemble", "eval", str(folder), "--data-dir", str(tmp_path / "no-data"),
                         match=match)
    assert "ensemble.json" in err or str(folder) in err


def test_a_manifest_that_is_a_list_or_a_member_that_links_out_is_refused(tmp_path, capsys):
    folder = _ensemble(tmp_path)
    (folder / "ensemble.json").write_text("[]")
    one_line_error(capsys, "eval", str(folder), match="not a resbudget ensemble manifest")
    folder = _ensemble(tmp_path / "b")
    outside = _checkpoint(tmp_path, name="outside.safetensors")
    (folder / "member1.safetensors").unlink()
    (folder / "member1.safetensors").symlink_to(outside)
    one_line_error(capsys, "eval", str(folder), match="is a symbolic link")


def test_an_ensemble_over_the_budget_is_refused_unless_allowed(tmp_path, capsys):
    folder = _ensemble(tmp_path, k=3)
    one_line_error(capsys, "eval", str(folder), "--budget", "3000", match="budget/K = 3,000/3")
    assert load_ensemble(folder, budget=3000, allow_over_budget=True).specs == [TINY] * 3
    member = _with_metadata(folder / "member0.safetensors", json.dumps({**TINY.to_dict(), "stem_kernel": 5}))
    one_line_error(capsys, "eval", str(folder), match="members[0] says 5,266 parameters, its weights have 5,650")
    manifest = json.loads((folder / "ensemble.json").read_text())
    for entry in manifest["members"]:
        del entry["params"]  # the counts are optional: the weights are still checked against their spec
    (folder / "ensemble.json").write_text(json.dumps(manifest))
    one_line_error(capsys, "eval", str(folder), match=f"{member}: tensor stem.0.weight has shape")


# --- damaged files ---------------------------------------------------------------------------------------------------
def test_a_non_utf8_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[train]\nepochs = 3 # \xff\xfe\n")
    one_line_error(capsys, "train", str(path), match=f"{path} is not UTF-8 text")


def test_a_batch_file_that_is_a_folder_or_a_link_loop_is_called_so(tmp_path, small_cifar):
    from resbudget.data import DataError, load_cifar10

    from .conftest import synthetic_manifest, write_binary_version

    root = tmp_path / "data"
    write_binary_version(small_cifar, root / "cifar-10-batches-bin")
    limits = {"manifest": synthetic_manifest(root, 510, 256)}
    batch = root / "cifar-10-batches-bin" / "data_batch_2.bin"
    batch.unlink()
    batch.mkdir()
    with pytest.raises(DataError, match="data_batch_2.bin is a folder, not a batch file"):
        load_cifar10(root, **limits)
    batch.rmdir()
    loop = root / "cifar-10-batches-bin" / "loop"
    loop.symlink_to(batch)
    batch.symlink_to(loop)
    with pytest.raises(DataError, match="data_batch_2.bin: cannot be read"):
        load_cifar10(root, **limits)


def test_a_failed_download_leaves_no_folder_it_created(tmp_path):
    from resbudget.data import DataError, download_cifar10

    target = tmp_path / "new" / "deeper"
    with pytest.raises(DataError, match="nothing was written"):
        download_cifar10(target, url="http://127.0.0.1:9/none.tar.gz", expected_md5="0" * 32, timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_module_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "resbudget", "eval", str(tmp_path / "nothing")], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no such checkpoint" in done.stderr
