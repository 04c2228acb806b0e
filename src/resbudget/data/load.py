"""One entry for every data set resbudget reads: CIFAR-10 (its official files), image folders or an ``.npz`` archive,
told apart by what the path holds."""

from __future__ import annotations

import dataclasses
import os

import torch

from .cifar10 import load_cifar10, resolve_data_dir
from .dataset import CLASSES, Dataset, Split
from .folders import HELD_OUT, is_image_folders, list_classes, list_image_folders, load_arrays, load_image_folders
from .images import resize_images

CIFAR10_TRAIN_IMAGES = 50_000


def load_dataset(data: Dataset | str | os.PathLike | None = None, image_size: int = 32) -> Dataset:
    """``data`` itself where it is already loaded, else the data set at that path (None: $RESBUDGET_DATA_DIR, else
    the cache folder), verified: an ``.npz`` file, image folders (a folder holding ``train/``), or CIFAR-10. Its
    images are brought to ``image_size`` (the net's input size) where they are another size."""
    if not isinstance(data, Dataset):
        path = resolve_data_dir(data)
        if path.suffix.lower() == ".npz":
            loaded = load_arrays(path, image_size)
        elif is_image_folders(path):
            loaded = load_image_folders(path, image_size)
        else:
            loaded = load_cifar10(data)
        data = dataclasses.replace(loaded, path=str(path.resolve()))
    return resized(data, image_size)


def count_classes(data: Dataset | str | os.PathLike | None = None) -> int:
    """How many classes the data set at ``data`` has, found without decoding it (CIFAR-10: 10, without looking), so
    that a net's head, and so its parameter count, can be checked before the data loads."""
    if isinstance(data, Dataset):
        return len(data.classes)
    path = resolve_data_dir(data)
    if path.suffix.lower() == ".npz":
        return len(load_arrays(path, check_only=True).classes)
    if is_image_folders(path):
        return len(list_classes(path))
    return len(CLASSES)


def count_training_images(data: Dataset | str | os.PathLike | None = None) -> int:
    """How many training images the data set at ``data`` has (its held-out test share not counted), found without
    decoding it (CIFAR-10: 50,000, without looking): what a time limit's prediction scales with."""
    if isinstance(data, Dataset):
        return len(data.train)
    path = resolve_data_dir(data)
    if path.suffix.lower() == ".npz":
        arrays = load_arrays(path, check_only=True)
        return len(arrays.train) if arrays.test is not None else round(len(arrays.train) * (1 - HELD_OUT))
    if is_image_folders(path):
        listing = list_image_folders(path)
        return len(listing.train) if listing.test is not None else round(len(listing.train) * (1 - HELD_OUT))
    return CIFAR10_TRAIN_IMAGES


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
