"""A synthetic CIFAR-10 stand-in: learnable, seeded, any size. For tests and for timing without the dataset; never
for results.

Each class has a smooth random colour pattern; an image is its class's pattern at a random brightness, plus pixel
noise. A small net learns it in a few steps, so tests can assert that training works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cifar10 import CLASSES, Dataset, Split


def synthetic_split(n: int, g: torch.Generator, patterns: torch.Tensor) -> Split:
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    images = patterns[labels] * (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
    images = images + 24 * torch.randn(images.shape, generator=g)
    return Split(images.clamp(0, 255).round().to(torch.uint8), labels)


def synthetic_cifar10(n_train: int = 512, n_test: int = 256, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(len(CLASSES), 3, 4, 4, generator=g)
    patterns = 40 + 175 * F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    return Dataset(synthetic_split(n_train, g, patterns), synthetic_split(n_test, g, patterns),
                   source=f"synthetic (seed {seed}: {n_train} training and {n_test} test images)")
