"""One entry for every data set resbudget reads: CIFAR-10 (its official files), image folders or an ``.npz`` archive,
told apart by what the path holds."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .cifar10 import load_cifar10, resolve_data_dir
from .dataset import CLASSES, Dataset, Split
from .folders import held_out, is_image_folders, list_classes, list_image_folders, load_arrays, load_image_folders
from .images import resize_images

CIFAR10_TRAIN_IMAGES = 50_000


def _kind(path: Path) -> str:
    """Which reader the data set at ``path`` needs: "npz", "folders" or "cifar10"."""
    if path.suffix.lower() == ".npz":
        return "npz"
    return "folders" if is_image_folders(path) else "cifar10"


def load_dataset(data: Dataset | str | os.PathLike | None = None, image_size: int = 32) -> Dataset:
    """``data`` itself where it is already loaded, else the data set at that path (None: $RESBUDGET_DATA_DIR, else
    the cache folder), verified: an ``.npz`` file, image folders (a folder holding ``train/``), or CIFAR-10. Its
    images are brought to ``image_size`` (the net's input size) where they are another size."""
    if not isinstance(data, Dataset):
        path = resolve_data_dir(data)
        kind = _kind(path)
        loaded = (load_arrays(path, image_size) if kind == "npz" else load_image_folders(path, image_size)
                  if kind == "folders" else load_cifar10(data))
        data = dataclasses.replace(loaded, path=str(path.resolve()))
    return resized(data, image_size)


def _counts(data: Dataset | str | os.PathLike | None) -> tuple[int, int]:
    """(classes, training images) of the data set at ``data``, found without decoding it (CIFAR-10's without
    looking); where the set holds a test split out of its training images, those are not counted."""
    if isinstance(data, Dataset):
        return len(data.classes), len(data.train)
    path = resolve_data_dir(data)
    kind = _kind(path)
    if kind == "cifar10":
        return len(CLASSES), CIFAR10_TRAIN_IMAGES
    if kind == "npz":
        labels = load_arrays(path, check_only=True)
        classes, images, has_test = len(labels.classes), len(labels.train), labels.test is not None
    else:
        listing = list_image_folders(path)
        classes, images, has_test = len(listing.classes), len(listing.train), listing.test is not None
    return classes, images if has_test else images - held_out(images, classes)


def count_classes(data: Dataset | str | os.PathLike | None = None) -> int:
    """How many classes the data set at ``data`` has, found without decoding it, so that a net's head, and so its
    parameter count, can be checked before the data loads (image folders: their class folders alone are listed)."""
    if not isinstance(data, Dataset) and _kind(path := resolve_data_dir(data)) == "folders":
        return len(list_classes(path))
    return _counts(data)[0]


def count_training_images(data: Dataset | str | os.PathLike | None = None) -> int:
    """How many training images the data set at ``data`` has, found without decoding it: what a time limit's
    prediction scales with."""
    return _counts(data)[1]


def resized(data: Dataset, image_size: int) -> Dataset:
    """The data set with its images brought to ``image_size`` square (itself where they are that size)."""
    if data.image_size == image_size:
        return data

    def split(s: Split | None) -> Split | None:
        if s is None:
            return None
        images = torch.from_numpy(resize_images(s.images.cpu().numpy(), image_size))
        return Split(images.to(s.images.device), s.labels, s.norm)

    return dataclasses.replace(data, train=split(data.train), test=split(data.test))
