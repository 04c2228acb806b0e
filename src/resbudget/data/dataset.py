"""A data set in memory: its splits (uint8 images and int64 labels), its class names, and how its pixels are
standardised. CIFAR-10 (data/cifar10.py), image folders and arrays (data/folders.py) all load into this."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's training images, per channel on the 0-1 scale
STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Normalization:
    """The per-channel mean and std (0-1 pixel scale) that standardise a data set's images: CIFAR-10's own by
    default, measured on the training images for any other set, and recorded with every net trained on it."""

    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def tensor(self, which: str, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """``mean`` or ``std`` as a (1, 3, 1, 1) tensor, to broadcast over a batch."""
        return torch.tensor(getattr(self, which), device=device, dtype=dtype).view(1, 3, 1, 1)

    @classmethod
    def of(cls, images: torch.Tensor) -> Normalization:
        """Measured on uint8 images (N, 3, H, W), in chunks (no float copy of the whole set), rounded to 4 digits
        as CIFAR-10's published constants are."""
        total = torch.zeros(3, dtype=torch.float64)
        squares = torch.zeros(3, dtype=torch.float64)
        for chunk in images.split(4096):
            x = chunk.to(torch.float64) / 255.0
            total += x.sum((0, 2, 3))
            squares += (x * x).sum((0, 2, 3))
        count = images.shape[0] * images.shape[2] * images.shape[3]
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
        return cls(tuple(round(float(v), 4) for v in mean), tuple(max(round(float(v), 4), 1e-4) for v in std))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
        if len(mean) != 3 or len(std) != 3 or not all(0 < s for s in std):
            raise ValueError(f"a normalisation needs 3 means and 3 positive stds, got {data}")
        return cls(mean, std)


CIFAR10_NORMALIZATION = Normalization()


@dataclass
class Split:
    """One split held in memory: uint8 images (N, 3, H, W), int64 labels (N,), and the standardisation of its set."""

    images: torch.Tensor
    labels: torch.Tensor
    norm: Normalization = CIFAR10_NORMALIZATION

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.norm)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.norm)


@dataclass
class Dataset:
    """A data set: its training and test splits, where it came from and the checksums it was verified against, its
    class names (label i is ``classes[i]``) and its standardisation (shared by both splits)."""

    train: Split
    test: Split | None  # None: held back from a run that may not see it (a search trial)
    source: str  # where it was read from, for the record
    checksums: dict[str, str] = field(default_factory=dict)  # file -> "algorithm:digest", each verified on loading
    classes: tuple[str, ...] = CLASSES
    path: str | None = None  # the absolute path it was read from (None: made in memory), which a run records

    def __post_init__(self) -> None:
        if self.test is not None and self.test.norm != self.train.norm:
            self.test = dataclasses.replace(self.test, norm=self.train.norm)

    @property
    def norm(self) -> Normalization:
        return self.train.norm

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    def without_test(self) -> Dataset:
        """The same data with its test split held back: what a run that must not see the test set is given."""
        return dataclasses.replace(self, test=None)
