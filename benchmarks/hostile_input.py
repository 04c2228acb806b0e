"""Hostile input, measured: each case runs `python -m resbudget ...` in a child process and records its exit status,
the first line it printed to stderr, its wall time and its peak memory (the table in docs/RESULTS.md).

    RESBUDGET_DATA_DIR=../shared/cifar10 .venv/bin/python benchmarks/hostile_input.py [--out FILE.md]

A tiny run (1 epoch of 500 images, a 500-image validation split) is trained first for the cases that need a run
folder; every case then gets a fresh copy of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

TINY = ["--set", "model.stem_width=8", "--set", "model.stage_widths=[8, 16]", "--set", "model.stage_blocks=[1, 1]",
        "--set", "model.stage_strides=[1, 2]", "--set", "model.stage_entry=block", "--set", "train.epochs=1",
        "--set", "data.train_limit=500", "--set", "data.test_limit=500", "--set", "data.val_size=500",
        "--set", "train.batch_size=100"]


# the command in this process, then its own peak resident size as the last line of stderr
WRAP = ("import resource, sys\nfrom resbudget.cli import main\ntry:\n    code = main(sys.argv[1:])\nfinally:\n"
        "    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(code)")


def run(argv: list[str], cwd: Path) -> tuple[int, str, float, float]:
    """(exit status, first stderr line, seconds, peak resident MB) of `resbudget ARGV` in a child process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", WRAP, *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _, err = child.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        child.kill()
        _, err = child.communicate()
        err = "TIMED OUT after 180 s\n" + err
    seconds = time.perf_counter() - start
    lines = err.strip().splitlines()
    peak = next((int(line.split()[1]) / 1024 for line in lines if line.startswith("PEAK_KB")), float("nan"))
    said = [line for line in lines if not line.startswith("PEAK_KB")]
    return child.returncode, (said or [""])[0], seconds, peak


def bomb_png(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return path


def with_metadata(src: Path, dst: Path, change_tensors=None, **metadata) -> Path:  # noqa: ANN001
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        old = f.metadata()
    tensors = load_file(str(src))
    if change_tensors:
        change_tensors(tensors)
    save_file(tensors, str(dst), metadata={**old, **metadata})
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    data = os.environ.get("RESBUDGET_DATA_DIR")
    if not data:
        sys.exit("set RESBUDGET_DATA_DIR to the CIFAR-10 folder")
    os.environ["RESBUDGET_DATA_DIR"] = str(Path(data).resolve())  # the cases run in a folder of their own
    code, err, _, _ = run(["train", *TINY, "--out", str(root / "run"), "--quiet"], root)
    if code:
        sys.exit(f"the tiny run failed: {err}")
    run_dir, weights = root / "run", root / "run" / "model.safetensors"

    def fresh_run(name: str) -> Path:
        target = root / name
        shutil.copytree(run_dir, target)
        return target

    (root / "z.toml").write_text('base = "/dev/zero"\n')
    os.mkfifo(root / "fifo.toml")
    os.mkfifo(root / "fifo.png")
    bomb_png(root / "bomb.png", 13_000, 13_000)
    (root / "deep.toml").write_text("v = " + "[" * 50_000 + "]" * 50_000 + "\n")
    os.symlink(root / "loop-a.toml", root / "loop-b.toml")
    os.symlink(root / "loop-b.toml", root / "loop-a.toml")
    (root / "loop.toml").write_text('base = "loop-a.toml"\n')
    with_metadata(weights, root / "deep-spec.safetensors", spec="[" * 100_000 + "]" * 100_000)
    (root / "ens").mkdir()
    (root / "ens" / "ensemble.json").write_text("[" * 100_000 + "]" * 100_000)
    with_metadata(weights, root / "hot.safetensors", temperature="1e30")
    with_metadata(weights, root / "cold.safetensors", temperature="1e-300")

    def nan_head(t: dict) -> None:
        t["head.0.weight"] = torch.full_like(t["head.0.weight"], float("nan"))

    def int_head(t: dict) -> None:
        t["head.0.weight"] = t["head.0.weight"].to(torch.int64)

    with_metadata(weights, root / "nan.safetensors", nan_head)
    with_metadata(weights, root / "int.safetensors", int_head)
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint16), (32, 1)) * 257
    Image.fromarray(ramp).save(root / "grey16.png")
    (root / "empty").mkdir()
    (root / "space.toml").write_text('[params]\n"optim.momentum" = "fast"\n')
    unfinished = fresh_run("unfinished")
    (unfinished / "summary.json").unlink()
    bad_summary = fresh_run("bad-summary")
    (bad_summary / "summary.json").write_text("[1, 2]")
    (root / "taken.onnx").write_text("mine")
    (root / "figs").mkdir()
    (root / "used").mkdir()
    (root / "used" / "notes.txt").write_text("mine")
    killed = fresh_run("killed")  # as a kill between two epochs leaves it
    (killed / "summary.json").unlink()
    (root / "slow.toml").write_text('base = "default"\n[params]\n"model.stages" = 3\n'
                                    '"model.stage_widths" = [256, 256, 256]\n"model.stage_blocks" = [1, 1, 1]\n'
                                    '"model.stage_strides" = [1, 2, 2]\n"train.epochs" = 8\n')

    cases = [
        ("a base that is /dev/zero", ["train", "z.toml"]),
        ("a FIFO as the config", ["train", "fifo.toml"]),
        ("a FIFO as an image", ["predict", "run", "fifo.png"]),
        ("a PNG declaring 13000x13000 RGBA (685 bytes)", ["predict", "run", "bomb.png"]),
        ("a TOML nested 50,000 deep", ["train", "deep.toml"]),
        ("a base that is a loop of symbolic links", ["train", "loop.toml"]),
        ("spec JSON nested 100,000 deep in a checkpoint", ["eval", "deep-spec.safetensors"]),
        ("ensemble.json nested 100,000 deep", ["eval", "ens"]),
        ("temperature 1e30 in a checkpoint", ["predict", "hot.safetensors", "grey16.png"]),
        ("temperature 1e-300 in a checkpoint", ["export", "cold.safetensors", "--out", "cold.onnx"]),
        ("NaN weights", ["eval", "nan.safetensors"]),
        ("int64 weights", ["predict", "int.safetensors", "grey16.png"]),
        ("calibrate a run with no summary (killed)", ["calibrate", "unfinished"]),
        ("eval / export / predict of that run", ["export", "unfinished"]),
        ("calibrate with summary.json holding [1, 2]", ["calibrate", "bad-summary"]),
        ("export --opset 13", ["export", "run", "--opset", "13", "--out", "o13.onnx"]),
        ("export over a file another export wrote", ["export", "run", "--out", "taken.onnx"]),
        ("a 16-bit greyscale PNG", ["predict", "run", "grey16.png"]),
        ("an empty folder to predict", ["predict", "run", "empty"]),
        ("eval --corruptions --images 0", ["eval", "run", "--corruptions", "--images", "0"]),
        ("--set data.crop_padding=1000000", ["train", "--set", "data.crop_padding=1000000"]),
        ("--set train.epochs=10^20", ["train", "--set", "train.epochs=100000000000000000000"]),
        ("--set data.cutout=100000", ["train", "--set", "data.cutout=100000"]),
        ("--set schedule.warmup_epochs=-1", ["train", "--set", "schedule.warmup_epochs=-1"]),
        ("--set train.seed=2^64", ["train", "--set", "train.seed=18446744073709551616"]),
        ("search --val-size 0", ["search", "s", "--val-size", "0"]),
        ("search --heartbeat 0", ["search", "s", "--heartbeat", "0"]),
        ('a space file with "optim.momentum" = "fast"', ["search", "s", "--space", "space.toml", "--out", "s"]),
        ("an abbreviated option (--jo 2 for --jobs 2)", ["study", "paper", "--jo", "2", "--out", "st"]),
        ("a run at lr 10^12 (it diverges)", ["train", *TINY, "--set", "optim.name=sgd", "--set", "optim.lr=1e12",
                                             "--out", "diverged", "--quiet"]),
        ("eval of that diverged run", ["eval", "diverged"]),
        ("eval --allow-unfinished of a killed run", ["eval", "killed", "--allow-unfinished"]),
        ("eval --figure FOLDER", ["eval", "run", "--figure", "figs"]),
        ("train --minutes 5 --out a folder in use", ["train", "--minutes", "5", "--out", "used"]),
        ("train --minutes 0.1", ["train", "--minutes", "0.1", "--out", "m01"]),
        ("train --minutes 1.5 (held from outside: 90 s)", ["train", "--minutes", "1.5", "--out", "m15", "--quiet"]),
        ("search of a 256-wide net, --trial-minutes 0.5 (30 s)",
         ["search", "slow", "--space", "slow.toml", "--trials", "1", "--trial-minutes", "0.5", "--out", "slow"]),
    ]
    rows = ["| input | exit | what it says | s | MB |", "|---|---|---|---|---|"]
    for name, argv in cases:
        code, err, seconds, peak = run(argv, root)
        err = err.replace(str(root) + "/", "").replace("|", "\\|")
        rows.append(f"| {name} | {code} | {err[:160]} | {seconds:.1f} | {peak:,.0f} |")
        print(rows[-1], flush=True)
    stored = json.loads((run_dir / "summary.json").read_text())
    print(f"(tiny run: {stored['params']:,} params, torch {stored['torch_version']}, {stored['host_cpu']})")
    if args.out:
        args.out.write_text("\n".join(rows) + "\n")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
