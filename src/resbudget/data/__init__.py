from .augment import Augment, cutout, normalize, random_crop, random_flip, random_rotate
from .cifar10 import (BINARY, CIFAR10, CLASSES, ENV_VAR, FORMATS, MEAN, PYTHON, STD, DataError, FileCheck, Format,
                      Split, class_counts, default_data_dir, load_cifar10, locate, resolve_data_dir, stratified_split)
from .download import download_cifar10

__all__ = ["Augment", "BINARY", "CIFAR10", "CLASSES", "DataError", "ENV_VAR", "FORMATS", "FileCheck", "Format",
           "MEAN", "PYTHON", "STD", "Split", "class_counts", "cutout", "default_data_dir", "download_cifar10",
           "load_cifar10", "locate", "normalize", "random_crop", "random_flip", "random_rotate", "resolve_data_dir",
           "stratified_split"]
