"""Using a trained net: corruptions, calibration, predictions on image files, the ONNX export."""

import json
import math

import numpy as np
import pytest
import torch

from resbudget.cli import main
from resbudget.data import CLASSES, normalize
from resbudget.data.corruptions import CORRUPTIONS, corrupt
from resbudget.models import build_model
from resbudget.train import CheckpointError, calibrate_run, load_model, save_weights, temperature_of, train_run
from resbudget.train.calibration import calibration_metrics, fit_temperature
from resbudget.train.tta import tta_view_logits

from .conftest import TINY, tiny_config


# --- corruptions ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_seeded_and_grows_with_its_severity(name, small_cifar):
    x = small_cifar.test.images[:32]
    out = [corrupt(x, name, s, seed=1) for s in range(1, 6)]
    assert all(o.dtype == torch.uint8 and o.shape == x.shape for o in out)
    assert torch.equal(out[2], corrupt(x, name, 3, seed=1))
    change = [(o.float() - x.float()).abs().mean().item() for o in out]
    assert change[0] > 0 and change[4] > change[0], change  # severity 5 changes the images more than severity 1


def test_gaussian_noise_has_the_stated_sigma():
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    for severity, sigma in zip((1, 5), (0.04, 0.10)):
        noise = (corrupt(x, "gaussian_noise", severity).float() - 128) / 255
        assert noise.std().item() == pytest.approx(sigma, rel=0.05)


def test_a_bad_corruption_request_names_the_problem():
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity must be 1 to 5"):
        corrupt(x, "contrast", 6)


# --- calibration ---------------------------------------------------------------------------------------------------
def test_the_fitted_temperature_undoes_a_known_scaling():
    g = torch.Generator().manual_seed(0)
    true_logits = 3 * torch.randn(20000, 10, generator=g)
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=g).squeeze(1)
    assert fit_temperature(true_logits * 0.25, labels) == pytest.approx(0.25, rel=0.05)  # under-confident by 4x
    calibrated = calibration_metrics(true_logits, labels)
    assert calibrated["ece"] < 0.02  # the labels were drawn from these very probabilities
    assert calibration_metrics(true_logits * 0.25, labels)["ece"] > 0.2


def test_ece_by_hand():
    logits = torch.tensor([[math.log(9.0), 0.0], [math.log(9.0), 0.0], [0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    labels = torch.tensor([0, 1, 1, 1])  # confidences 0.9, 0.9 (one right), 0.75, 0.75 (both right)
    m = calibration_metrics(logits, labels, bins=10)
    assert m["ece"] == pytest.approx(0.5 * abs(0.9 - 0.5) + 0.5 * abs(0.75 - 1.0))
    assert m["accuracy"] == 0.75


def test_a_run_with_a_validation_split_is_calibrated_and_eval_reports_both(tmp_path, synthetic_dir, capsys):
    summary = train_run(tiny_config("data.val_size=100"), tmp_path / "run", data=synthetic_dir, progress=False)
    c = summary.calibration
    assert c["val_images"] == 100 and c["val_nll_calibrated"] <= c["val_nll"] + 1e-9
    assert temperature_of(tmp_path / "run") == pytest.approx(c["temperature"])
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(synthetic_dir), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["calibration"]
    assert r["temperature"] == pytest.approx(c["temperature"])
    assert {"test_nll", "test_ece", "test_nll_calibrated", "test_ece_calibrated"} <= set(r)
    # calibrate again from the command line: the same split, the same temperature
    assert main(["calibrate", str(tmp_path / "run"), "--data-dir", str(synthetic_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["temperature"] == pytest.approx(c["temperature"], rel=1e-4)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["calibration"]["temperature"] == \
        pytest.approx(c["temperature"], rel=1e-4)


def test_a_run_without_held_out_images_is_not_calibrated_on_the_test_set(tmp_path, small_cifar, capsys):
    summary = train_run(tiny_config("train.epochs=1"), tmp_path / "run", data=small_cifar, progress=False)
    assert summary.calibration is None and temperature_of(tmp_path / "run") == 1.0
    with pytest.raises(CheckpointError, match="no held-out images are left.*--temperature T"):
        calibrate_run(tmp_path / "run", data=small_cifar)
    # its recipe's temperature, given by hand, is stored where predict, eval and export read it
    weights_before = (tmp_path / "run" / "model.safetensors").read_bytes()
    for bad in ("0.001", "200", "nan"):
        assert main(["calibrate", str(tmp_path / "run"), "--temperature", bad]) == 2
        assert "--temperature must be between 0.01 and 100" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights_before
    assert main(["calibrate", str(tmp_path / "run"), "--temperature", "0.5"]) == 0
    assert "temperature 0.5 stored" in capsys.readouterr().out
    assert temperature_of(tmp_path / "run") == 0.5
    c = json.loads((tmp_path / "run" / "summary.json").read_text())["calibration"]
    assert c == {"temperature": 0.5, "source": "given (resbudget calibrate --temperature)"}


def test_a_run_without_a_split_takes_its_recipes_temperature_and_reports_it_on_test(tmp_path, small_cifar):
    summary = train_run(tiny_config("train.epochs=1", "train.tta=flip", "train.temperature=0.5"), tmp_path / "run",
                        data=small_cifar, progress=False)
    c = summary.calibration
    assert c["temperature"] == 0.5 and "train.temperature" in c["source"] and "val_images" not in c
    assert temperature_of(tmp_path / "run") == 0.5
    # the test numbers are reported, never fitted on: eval recomputes them from the same weights and views
    from resbudget.train import evaluate_checkpoint

    r = evaluate_checkpoint(tmp_path / "run", data=small_cifar)
    assert r["test_accuracy"] == summary.test_accuracy and r["test_accuracy_tta"] == summary.test_accuracy_tta
    assert r["test_loss"] == pytest.approx(summary.test_loss, abs=1e-12)
    for key in ("test_nll", "test_ece", "test_nll_calibrated", "test_ece_calibrated"):
        assert r["calibration"][key] == pytest.approx(c[key], abs=1e-12), key


# --- predict -------------------------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY)
    path = tmp_path / "tiny.safetensors"
    save_weights(model, TINY, path, extra={"temperature": "2.0"})
    return path


def test_predict_agrees_with_the_model_and_skips_broken_files(tmp_path, checkpoint, small_cifar, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    images = small_cifar.test.images[:20]
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    (folder / "broken.png").write_bytes((folder / "00.png").read_bytes()[:40])
    (folder / "text.png").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    code = main(["predict", str(checkpoint), str(folder), "--top-k", "3", "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 3 and all(n in err for n in ("broken.png", "text.png", "empty.png"))
    predictions = json.loads(out)["predictions"]
    assert [p["file"] for p in predictions] == [str(folder / f"{i:02d}.png") for i in range(20)]
    model, _ = load_model(checkpoint)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # scored as the default recipe scores
        logits = tta_view_logits(model, normalize(images).contiguous(memory_format=torch.channels_last),
                                 "flip-shift4").float().mean(0)
    probs = (logits / 2.0).softmax(-1)  # the mean over the 4 views, then the stored temperature
    for p, row in zip(predictions, probs):
        assert p["top"][0]["class"] == CLASSES[int(row.argmax())] and not p["resized"]
        assert p["top"][0]["probability"] == pytest.approx(float(row.max()), abs=1e-5)
        assert len(p["top"]) == 3 and p["top"][0]["probability"] >= p["top"][1]["probability"]


def test_predict_reads_any_mode_and_size_and_says_how_it_resized(tmp_path, checkpoint, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.jpg")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    code = main(["predict", str(checkpoint), str(tmp_path / "rgba.png"), str(tmp_path / "grey.jpg"),
                 str(tmp_path / "palette.gif")])
    out, err = capsys.readouterr()
    assert code == 0 and len(out.splitlines()) == 3 and err.count("central square crop") == 1  # said once
    assert main(["predict", str(checkpoint), str(tmp_path / "rgba.png"), "--top-k", "11"]) == 2


# --- export --------------------------------------------------------------------------------------------------------
def test_the_onnx_export_matches_pytorch_with_any_batch(tmp_path, checkpoint, small_cifar, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES) and json.loads(meta["spec"]) == TINY.to_dict()
    assert float(meta["temperature"]) == 2.0
    # outside a run folder a checkpoint is scored as the default recipe scores: its 4 TTA views, in the graph
    assert (meta["tta"], meta["views"]) == ("flip-shift4", "4")
    one = tmp_path / "one.onnx"
    assert main(["export", str(checkpoint), "--out", str(one), "--views", "1"]) == 0
    assert {p.key: p.value for p in onnx.load(str(one)).metadata_props}["views"] == "1"
    model, _ = load_model(checkpoint)
    for path, tta in ((out, "flip-shift4"), (one, "none")):
        session = ort.InferenceSession(str(path))
        for n in (1, 7):
            x = small_cifar.test.images[:n]
            logits, probs = session.run(None, {"images": (x.float() / 255).numpy()})
            with torch.no_grad():
                ref = tta_view_logits(model, normalize(x), tta).mean(0) / 2.0
            assert np.abs(logits - ref.numpy()).max() < 1e-4
            assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    assert "is not overwritten" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.onnx"), "--views", "3"]) == 2


def test_predict_scores_the_runs_views_unless_told_and_marks_unsure_images(tmp_path, checkpoint, capsys):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # its views differ
    Image.fromarray(pixels).save(tmp_path / "a.png")
    probabilities = {}
    for views in ("1", "4"):
        assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--views", views, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["tta"] == {"1": "none", "4": "flip-shift4"}[views] and out["temperature"] == 2.0
        probabilities[views] = out["predictions"][0]["top"][0]["probability"]
    assert probabilities["1"] != probabilities["4"]
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--json"]) == 0  # the default recipe's 4
    assert json.loads(capsys.readouterr().out)["predictions"][0]["top"][0]["probability"] == probabilities["4"]
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--min-confidence", "0.99"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(unsure)")
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--min-confidence", "0"]) == 0
    assert "(unsure)" not in capsys.readouterr().out
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--views", "3"]) == 2


def test_eval_gives_accuracy_at_coverage_and_draws_the_reliability_diagram(tmp_path, checkpoint, small_cifar,
                                                                           capsys):
    from resbudget.train import evaluate_checkpoint
    from resbudget.train.calibration import accuracy_at_coverage, reliability

    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.1]])
    labels = torch.tensor([0, 0, 0, 1])
    # most confident first: right (5.0), right (2.0), wrong (1.0), right (0.1)
    assert accuracy_at_coverage(logits, labels, (0.5, 0.75, 1.0)) == {"0.5": 1.0, "0.75": 2 / 3, "1": 0.75}
    bins = reliability(logits, labels)
    assert sum(b["count"] for b in bins) == 4 and all(b["low"] < b["confidence"] <= b["high"] for b in bins)
    result = evaluate_checkpoint(checkpoint, data=small_cifar)
    c = result["calibration"]
    assert set(c["accuracy_at_coverage"]) == {"0.5", "0.8", "0.9"}
    assert sum(b["count"] for b in c["reliability"]) == len(small_cifar.test)
    assert result["test_accuracy_tta"] is not None and c["views"] == 4
    from resbudget.report import plot_reliability

    path = plot_reliability(c, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- evaluation in passes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tta", ["none", "flip-shift4", "flip-shift"])
def test_a_pass_holds_at_most_the_eval_batch_views_included_and_gives_the_same_logits(tta, small_cifar):
    """A pass of batch × views images would hold gigabytes of activations at once for the recipes' batch of 1,000;
    the passes are cut so each holds at most the batch, and each image's logits are those of one pass of it alone."""
    from resbudget.train.evaluate import evaluate, images_per_pass, view_logits

    model = build_model(TINY).eval()
    passes = []
    model.register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    test = small_cifar.test
    views = view_logits(model, test, tta=tta, batch_size=60)
    assert max(passes) <= 60 and sum(passes) == views.shape[0] * len(test)
    assert images_per_pass(60, tta) == 60 // views.shape[0] and images_per_pass(3, "flip-shift") == 1
    alone = torch.cat([view_logits(model, test.subset(torch.arange(i, i + 1)), tta=tta, batch_size=6)
                       for i in range(0, len(test), 37)], dim=1)
    assert torch.allclose(views[:, ::37], alone, atol=1e-5)
    passes.clear()
    scored = evaluate(model, test, tta=tta, batch_size=60, precision="fp32")
    assert max(passes) <= 60
    assert scored["accuracy"] == pytest.approx(float((views[0].argmax(1) == test.labels).double().mean()))
