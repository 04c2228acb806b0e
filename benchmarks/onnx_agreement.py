"""The ONNX export of a run against PyTorch on the 10,000 test images: argmax agreement, the largest logit difference
(both over the run's TTA views, with its temperature, PyTorch in fp32 as the graph is) and the export's test accuracy.
Needs the deploy extra.

Usage: python benchmarks/onnx_agreement.py RUN_DIR --data-dir ../shared/cifar10 [--out FILE.onnx]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from resbudget.data import load_cifar10, normalize
from resbudget.deploy import export_onnx
from resbudget.train import load_model, temperature_of, tta_mode
from resbudget.train.tta import tta_logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--data-dir")
    p.add_argument("--out", type=Path, help="where to write the ONNX file (default: a temporary folder)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(a.run, a.out or Path(tmp) / "model.onnx")
        test = load_cifar10(a.data_dir).test
        model, _ = load_model(a.run)
        temperature, tta = temperature_of(a.run), tta_mode(a.run)
        session = ort.InferenceSession(str(path))
        agree, right, largest = 0, 0, 0.0
        for start in range(0, len(test), 1000):
            x = test.images[start:start + 1000]
            with torch.no_grad():
                ref = (tta_logits(model, normalize(x), tta) / temperature).numpy()
            logits = session.run(["logits"], {"images": (x.float() / 255).numpy()})[0]
            agree += int((ref.argmax(1) == logits.argmax(1)).sum())
            right += int((logits.argmax(1) == test.labels[start:start + 1000].numpy()).sum())
            largest = max(largest, float(np.abs(ref - logits).max()))
    print(f"{a.run}: argmax agreement {agree:,}/{len(test):,}; largest |logit difference| {largest:.3g}; the "
          f"export's test accuracy {100 * right / len(test):.2f}% ({tta} TTA, temperature {temperature:g}, "
          f"onnxruntime {ort.__version__})")


if __name__ == "__main__":
    main()
