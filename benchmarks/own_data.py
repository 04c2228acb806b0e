"""CIFAR-10 written out as your own data would come: PNG image folders and an .npz archive, each read back and checked
image for image against the binary files' pixels; and two other tasks made from those pixels as image folders:
vehicles against animals (2 classes) and a 5-class subset (airplane, automobile, bird, cat, deer).

Writes, under OUT: ``png/`` (train/CLASS/*.png, test/CLASS/*.png), ``cifar10.npz``, ``vehicles/`` and ``five/``, and
prints the decode times and the check. Train on them with (one seed shown):

    resbudget train --data-dir OUT/png --set train.seed=0 --out runs/own-png-0
    resbudget train --data-dir OUT/cifar10.npz --set train.seed=0 --out runs/own-npz-0
    resbudget train --data-dir OUT/vehicles --set train.seed=0 --out runs/own-vehicles-0
    resbudget train --data-dir OUT/five --set model.image_size=64 --set train.seed=0 --out runs/own-five64-0

Usage: python benchmarks/own_data.py --data-dir ../shared/cifar10 --out /tmp/own
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resbudget.data import CLASSES, load_arrays, load_cifar10, load_image_folders

VEHICLES = {"airplane", "automobile", "ship", "truck"}
FIVE = ("airplane", "automobile", "bird", "cat", "deer")


def write_folders(root: Path, split: str, images: np.ndarray, names: list[str]) -> None:
    """One PNG per image, ``root/split/NAME/NNNNN.png`` (the index keeps the binary files' order within a class)."""
    for name in set(names):
        (root / split / name).mkdir(parents=True, exist_ok=True)

    def save(i: int) -> None:
        Image.fromarray(images[i].transpose(1, 2, 0)).save(root / split / names[i] / f"{i:05d}.png")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(save, range(len(images))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    data = load_cifar10(a.data_dir)
    splits = {"train": data.train, "test": data.test}
    arrays = {s: (v.images.numpy(), v.labels.numpy()) for s, v in splits.items()}

    for split, (x, y) in arrays.items():
        write_folders(a.out / "png", split, x, [CLASSES[c] for c in y])
        write_folders(a.out / "vehicles", split, x, ["vehicle" if CLASSES[c] in VEHICLES else "animal" for c in y])
        keep = np.isin(y, [CLASSES.index(c) for c in FIVE])
        write_folders(a.out / "five", split, x[keep], [CLASSES[c] for c in y[keep]])
    np.savez(a.out / "cifar10.npz", x_train=arrays["train"][0].transpose(0, 2, 3, 1), y_train=arrays["train"][1],
             x_test=arrays["test"][0].transpose(0, 2, 3, 1), y_test=arrays["test"][1], classes=np.array(CLASSES))

    start = time.perf_counter()
    folders = load_image_folders(a.out / "png")
    first = time.perf_counter() - start
    start = time.perf_counter()
    load_image_folders(a.out / "png")
    cached = time.perf_counter() - start
    npz = load_arrays(a.out / "cifar10.npz")
    print(f"png folders: decoded in {first:.1f} s, from the cache (checksums checked) in {cached:.1f} s")
    for name, own in (("png folders", folders), ("npz", npz)):
        for split, ref in splits.items():
            mine = getattr(own, split)
            # folders are read class by class, in file-name order: put the binary files' order back
            order = torch.argsort(ref.labels * len(ref) + torch.arange(len(ref)), stable=True)
            ref_images, ref_labels = (ref.images[order], ref.labels[order]) if name == "png folders" else (
                ref.images, ref.labels)
            same = torch.equal(mine.images, ref_images) and torch.equal(mine.labels, ref_labels)
            print(f"{name} {split}: {len(mine):,} images, identical to the binary files' pixels and labels: {same}")
        print(f"{name}: classes {', '.join(own.classes)}; normalisation mean {own.norm.mean} std {own.norm.std}")


if __name__ == "__main__":
    main()
