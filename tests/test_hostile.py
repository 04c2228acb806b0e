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
    with pytest.raises(DataError, match="data_batch_2.bin is a loop of symbolic links"):
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


# --- nothing read without a bound ------------------------------------------------------------------------------------
@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "p.png"
    os.mkfifo(path)
    return path


def test_a_base_that_is_a_device_is_refused_without_reading_it(tmp_path, capsys):
    (tmp_path / "z.toml").write_text('base = "/dev/zero"\n')
    one_line_error(capsys, "train", str(tmp_path / "z.toml"), match="/dev/zero is a character device, not a TOML file")


def test_fifos_as_config_base_spec_or_image_are_refused_without_waiting(tmp_path, fifo, capsys):
    fifo_toml = tmp_path / "f.toml"
    os.mkfifo(fifo_toml)
    one_line_error(capsys, "train", str(fifo_toml), match="f.toml is a FIFO (named pipe), not a TOML file")
    (tmp_path / "c.toml").write_text('base = "f.toml"\n')
    one_line_error(capsys, "train", str(tmp_path / "c.toml"), match="f.toml is a FIFO (named pipe), not a TOML file")
    one_line_error(capsys, "arch", str(fifo_toml), match="is a FIFO")
    model = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(TINY).state_dict().items()}, str(model),
              metadata={"format": "resbudget-weights-v1", "spec": json.dumps(TINY.to_dict())})
    one_line_error(capsys, "predict", str(model), str(fifo), match="p.png is a FIFO (named pipe), not an image file")
    os.mkfifo(tmp_path / "w.safetensors")
    one_line_error(capsys, "predict", str(tmp_path / "w.safetensors"), str(fifo), match="is a FIFO")


def test_a_config_over_its_size_bound_or_nested_too_deep_is_refused(tmp_path, capsys):
    (tmp_path / "big.toml").write_text("# " + "x" * (2 << 20) + "\n")
    one_line_error(capsys, "train", str(tmp_path / "big.toml"), match="over the 1.0 MiB a TOML file may be")
    (tmp_path / "deep.toml").write_text("v = " + "[" * 50_000 + "]" * 50_000 + "\n")
    one_line_error(capsys, "train", str(tmp_path / "deep.toml"), match="nests lists or tables more than 32 deep")
    (tmp_path / "tables.toml").write_text("[" + ".".join(["a"] * 5_000) + "]\n")
    one_line_error(capsys, "train", str(tmp_path / "tables.toml"), match="nests lists or tables more than 32 deep")
    one_line_error(capsys, "train", "--set", "optim.betas=" + "[" * 5_000 + "]" * 5_000, match="more than 32 deep")


def test_a_base_that_is_a_loop_of_links_is_refused(tmp_path, capsys):
    os.symlink(tmp_path / "loop-a.toml", tmp_path / "loop-b.toml")
    os.symlink(tmp_path / "loop-b.toml", tmp_path / "loop-a.toml")
    (tmp_path / "c.toml").write_text('base = "loop-a.toml"\n')
    one_line_error(capsys, "train", str(tmp_path / "c.toml"), match="loop-a.toml is a loop of symbolic links")


def test_json_nested_deep_in_a_spec_or_an_ensemble_manifest_is_one_line(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(TINY).state_dict().items()}, str(path),
              metadata={"format": "resbudget-weights-v1", "spec": deep})
    one_line_error(capsys, "eval", str(path), match="over 65,536 characters")
    path = tmp_path / "x.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(TINY).state_dict().items()}, str(path),
              metadata={"format": "resbudget-weights-v1", "spec": "[" * 1000 + "]" * 1000})
    one_line_error(capsys, "eval", str(path), match="nests lists or tables more than 32 deep")
    folder = tmp_path / "ens"
    folder.mkdir()
    (folder / "ensemble.json").write_text(deep)
    one_line_error(capsys, "eval", str(folder), match="nests lists or tables more than 32 deep")


# --- images ----------------------------------------------------------------------------------------------------------
def _png_header_only(path, width, height):
    """A small PNG file whose header declares width x height RGBA (its pixel data is short): a decompression bomb."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return path


def test_an_image_too_large_is_refused_from_its_header_fast_and_small(tmp_path):
    import resource

    from resbudget.deploy.predict import ImageError, load_image

    path = _png_header_only(tmp_path / "bomb.png", 13_000, 13_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ImageError, match="13000x13000 is 169 megapixels, over the 50 read here"):
        load_image(path)
    assert time.perf_counter() - start < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing was decoded


def test_16_bit_and_float_greyscale_are_scaled_and_exif_orientation_is_applied(tmp_path):
    import numpy as np
    from PIL import Image

    from resbudget.deploy.predict import ImageError, load_image

    grey8 = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # a 32x32 ramp
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(grey8.astype(np.float32) / 255).save(tmp_path / "f.tiff")
    for name in ("g16.png", "f.tiff"):
        array, resized = load_image(tmp_path / name)
        assert not resized and np.array_equal(array, np.stack([grey8] * 3)), name
    Image.fromarray(grey8.astype(np.float32)).save(tmp_path / "f255.tiff")  # not 0-1: refused, not read as white
    with pytest.raises(ImageError, match="must hold values in 0-1, this one holds 0 to 248"):
        load_image(tmp_path / "f255.tiff")
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    upright = Image.fromarray(rgb)
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the stored pixels are the upright image turned back
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif)
    assert np.array_equal(load_image(tmp_path / "rotated.png")[0], load_image(tmp_path / "upright.png")[0])


def test_an_empty_folder_given_to_predict_is_an_error(tmp_path, capsys):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(TINY).state_dict().items()}, str(path),
              metadata={"format": "resbudget-weights-v1", "spec": json.dumps(TINY.to_dict())})
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, "predict", str(path), str(tmp_path / "empty"), match="no image files in")


# --- numbers read from outside are range-checked ---------------------------------------------------------------------
def _tiny_weights(path, tensors=None, **metadata):
    tensors = tensors if tensors is not None else {k: v.contiguous() for k, v in build_model(TINY).state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "resbudget-weights-v1", "spec": json.dumps(TINY.to_dict()),
                                            **metadata})
    return path


@pytest.mark.parametrize("temperature", ["1e30", "1e-300", "0", "-1", "nan", "inf"])
def test_a_temperature_outside_its_range_is_refused_by_predict_eval_and_export(tmp_path, capsys, temperature):
    path = _tiny_weights(tmp_path / "t.safetensors", temperature=temperature)
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "cat.png")
    for argv in (["predict", str(path), str(tmp_path / "cat.png")], ["eval", str(path)],
                 ["export", str(path), "--out", str(tmp_path / "t.onnx")]):
        one_line_error(capsys, *argv, match="temperature")
    assert not (tmp_path / "t.onnx").exists()


@pytest.mark.parametrize("change, match", [
    (lambda t: t.__setitem__("head.0.weight", torch.full_like(t["head.0.weight"], float("nan"))),
     "tensor head.0.weight holds NaN or infinite values"),
    (lambda t: t.__setitem__("head.0.weight", t["head.0.weight"].to(torch.int64)),
     "tensor head.0.weight is int64, the net needs float32"),
    (lambda t: t.__setitem__("head.0.weight", t["head.0.weight"].to(torch.uint8)), "is uint8, the net needs float32"),
])
def test_weights_that_are_not_finite_floats_are_refused(tmp_path, capsys, change, match):
    tensors = {k: v.contiguous() for k, v in build_model(TINY).state_dict().items()}
    change(tensors)
    path = _tiny_weights(tmp_path / "w.safetensors", tensors)
    one_line_error(capsys, "eval", str(path), match=match)


@pytest.mark.parametrize("override, match", [
    ("train.epochs=100000000000000000000", "train.epochs must be between 1 and 10,000"),
    ("data.cutout=100000", "data.cutout must be between 0 and 32"),
    ("data.crop_padding=1000000", "data.crop_padding must be between 0 and 16"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs must be between 0 and 10,000"),
    ("train.seed=18446744073709551616", "train.seed must be between 0 and 4,294,967,295"),
    ("data.val_seed=-1", "data.val_seed must be between 0"),
])
def test_out_of_range_config_values_are_refused_before_the_data_loads(tmp_path, capsys, override, match):
    # no data folder exists: the error must come first
    one_line_error(capsys, "train", "--set", override, "--data-dir", str(tmp_path / "none"), "--out",
                   str(tmp_path / "run"), match=match)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, match", [
    (["eval", "x", "--corruptions", "--images", "0"], "argument --images: must be between 1 and 10,000, got 0"),
    (["eval", "x", "--seed", str(2**64)], "argument --seed: must be between 0 and 4,294,967,295"),
    (["ensemble", "train", "shallow", "--members", "2", "--seeds", "1", str(2**64)], "argument --seeds"),
    (["study", "paper", "--heartbeat", "-1"], "argument --heartbeat: must be between 1 and 3,600"),
    (["predict", "x", "y", "--budget", "0"], "argument --budget: must be between 1 and 200,000,000"),
])
def test_out_of_range_arguments_are_one_line(capsys, argv, match):
    one_line_error(capsys, *argv, match=match)


def test_export_refuses_an_opset_it_cannot_write_and_never_replaces_a_file(tmp_path, capsys):
    pytest.importorskip("onnx")
    from resbudget._io import publish_new
    from resbudget.train import CheckpointError

    path = _tiny_weights(tmp_path / "m.safetensors")
    one_line_error(capsys, "export", str(path), "--opset", "13", match="--opset 13 is not supported: the exporter "
                   "writes ONNX opsets 18 to")
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "m.onnx").write_text("mine")
    one_line_error(capsys, "export", str(path), match="m.onnx exists; it is not overwritten")
    assert (tmp_path / "m.onnx").read_text() == "mine"
    # another export that finished first: the name it took is kept, this one is not moved over it
    (tmp_path / "tmp").write_text("late")
    with pytest.raises(CheckpointError, match="appeared while this one was being written"):
        publish_new(tmp_path / "tmp", tmp_path / "m.onnx", CheckpointError)
    assert (tmp_path / "m.onnx").read_text() == "mine"
    publish_new(tmp_path / "tmp", tmp_path / "new.onnx")
    assert (tmp_path / "new.onnx").read_text() == "late" and not (tmp_path / "tmp").exists()


# --- writes into a run folder hold its lock; unfinished runs are said to be ------------------------------------------
@pytest.fixture
def finished_run(tmp_path, synthetic_dir):
    from resbudget.train import train_run

    from .conftest import tiny_config

    train_run(tiny_config("data.val_size=100", "train.epochs=1"), tmp_path / "run", data=synthetic_dir,
              progress=False)
    return tmp_path / "run"


def test_calibrate_holds_the_run_lock_and_refuses_unfinished_runs(finished_run, synthetic_dir, capsys):
    from resbudget.train.folder import lock_run_folder

    weights = (finished_run / "model.safetensors").read_bytes()
    with lock_run_folder(finished_run):  # a run training there, or another command writing
        one_line_error(capsys, "calibrate", str(finished_run), "--data-dir", str(synthetic_dir),
                       match="is in use by another resbudget run or command")
    summary = (finished_run / "summary.json").read_text()
    (finished_run / "summary.json").write_text("[1, 2]")
    one_line_error(capsys, "calibrate", str(finished_run), "--data-dir", str(synthetic_dir),
                   match="summary.json: not a resbudget run summary")
    assert (finished_run / "model.safetensors").read_bytes() == weights  # checked before anything was written
    (finished_run / "summary.json").unlink()
    for argv in (["calibrate", str(finished_run), "--data-dir", str(synthetic_dir)], ["eval", str(finished_run)],
                 ["export", str(finished_run)], ["predict", str(finished_run), str(finished_run)]):
        one_line_error(capsys, *argv, match="the run has not finished (no summary.json)")
    assert main(["calibrate", str(finished_run), "--data-dir", str(synthetic_dir), "--allow-unfinished"]) == 0
    (finished_run / "summary.json").write_text(summary)


# --- search ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, match", [
    ('"optim.momentum" = "fast"', "optim.momentum: expected a number, got 'fast'"),
    ('"train.epochs" = {low = 1.5, high = 4.0}', "train.epochs takes whole numbers"),
    ('"train.epochs" = {low = -3, high = 4}', "train.epochs must be between 1 and 10,000, got -3"),
    ('"train.epochs" = {low = 3, high = 1000000000}', "got 1,000,000,000"),
    ('"model.block" = {low = 1, high = 3}', "a range needs a number key"),
    ('"model.stage_widths" = {choices = ["wide", 64]}', "expected an integer, got 'wide'"),
])
def test_a_space_file_is_type_checked_before_any_data_is_read(tmp_path, capsys, params, match):
    pytest.importorskip("optuna")
    (tmp_path / "space.toml").write_text(f"[params]\n{params}\n")
    start = time.perf_counter()
    one_line_error(capsys, "search", "s", "--space", str(tmp_path / "space.toml"), "--data-dir",
                   str(tmp_path / "none"), "--out", str(tmp_path / "search"), match=match)
    assert time.perf_counter() - start < 5
