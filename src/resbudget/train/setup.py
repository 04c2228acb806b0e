"""What a run has before its first step: the net (built, initialised, on its device), the data and its splits."""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from ..data import Dataset, Split, count_classes, normalize, stratified_split
from ..models import ResNet, build_model, summarize
from ..models.budget import Summary as ModelSummary
from ..models.prepare import prepare_, whiten_stem_
from .config import Config, ConfigError
from .fit import images_kept

WHITEN_IMAGES = 5000  # training images whose patches set the whitening filters


def prepare_splits(config: Config, data: Dataset, device: torch.device) -> tuple[Split, Split | None, Split | None]:
    """(train, validation or None, test or None) on ``device``: the validation split carved from the training set,
    and the smoke-test limits applied. The test split is None where the data came without one (a search trial)."""
    d = config.data
    train, test, val = data.train, data.test, None
    if d.val_size:
        train_idx, val_idx = stratified_split(train.labels, d.val_size, d.val_seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    if d.train_limit:
        train = train.subset(torch.arange(min(d.train_limit, len(train))))
    if d.test_limit and test is not None:
        test = test.subset(torch.arange(min(d.test_limit, len(test))))
    if len(train) < config.train.batch_size:
        raise ConfigError(
            f"train.batch_size ({config.train.batch_size}) is larger than the training set ({len(train)} images)"
        )
    kept = images_kept(len(train), config.train.drop_easy)
    if kept < config.train.batch_size:
        raise ConfigError(f"train.drop_easy = {config.train.drop_easy} leaves {kept} training images per epoch, "
                          f"fewer than one batch of {config.train.batch_size}")
    return train.to(device), (val.to(device) if val is not None else None), (
        test.to(device) if test is not None else None)


def initial_model(config: Config) -> ResNet:
    """The net before training and before its data-dependent start (whitening): built after
    ``torch.manual_seed(train.seed)``, with the recipe's identity init and frozen tensors."""
    torch.manual_seed(config.train.seed)
    model = build_model(config.model)
    t = config.train
    prepare_(model, dirac=t.dirac_init, freeze_bn_weight=t.freeze_bn_weight, freeze_stem=t.freeze_stem)
    return model


@dataclasses.dataclass
class Prepared:
    """A run ready for its first step: its config, the net and its summary (parameters counted from the spec), the
    data and its splits on the device (``test`` None where the run may not see it), and what the whitening took."""

    config: Config
    params: int
    model: ResNet
    model_summary: ModelSummary
    data: Dataset
    train: Split
    val: Split | None
    test: Split | None
    whiten_seconds: float

    @property
    def held_out(self) -> tuple[Split, str]:
        """The split the finished net is scored on, and its name: the test set, else (a search trial) validation."""
        if self.test is not None:
            return self.test, "test"
        assert self.val is not None  # train_run refuses a run with neither
        return self.val, "validation"


def fit_to_data(config: Config, data: Dataset | str | os.PathLike | None) -> Config:
    """The config with its net's head sized for the classes of ``data`` (a data set, or where it is: counted without
    decoding it), which the parameter budget counts."""
    classes = count_classes(data)
    if config.model.num_classes == classes:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=classes))


def prepare_run(config: Config, params: int, data: Dataset, device: torch.device) -> Prepared:
    """Build and initialise the net, put the data's splits on the device, and whiten the stem."""
    t = config.train
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes (the partial batch is dropped): tune once
    model = initial_model(config)
    model_summary = summarize(config.model, model)
    train, val, test = prepare_splits(config, data, device)
    whiten_start = time.perf_counter()
    if t.whiten_init:  # needs the data, so after the budget check; it draws no random numbers
        whiten_stem_(model, normalize(train.images[:WHITEN_IMAGES], train.norm), t.whiten_eps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    whiten_seconds = time.perf_counter() - whiten_start
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Prepared(config, params, model, model_summary, data, train, val, test, whiten_seconds)
