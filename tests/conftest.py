import os
from pathlib import Path

import pytest

from resbudget.models import ModelSpec

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    candidates = [os.environ.get("RESBUDGET_DATA_DIR"), REPO.parent / "shared" / "cifar10"]
    for c in candidates:
        if c and (Path(c) / "cifar-10-batches-bin").is_dir():
            return Path(c).resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        message = "CIFAR-10 binary version not found: set RESBUDGET_DATA_DIR to the folder holding cifar-10-batches-bin"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def cifar(data_dir):
    from resbudget.data import load_cifar10

    return load_cifar10(data_dir)


@pytest.fixture(scope="session")
def small_cifar(cifar):
    """512 training and 256 test images of the real data set, for end-to-end tests of a few steps."""
    from resbudget.data import CIFAR10

    return CIFAR10(train=cifar.train.subset(slice(0, 512)), test=cifar.test.subset(slice(0, 256)), source="subset")


TINY = ModelSpec(stem_width=8, stage_widths=(8, 16), stage_blocks=(1, 1), stage_strides=(1, 2))
