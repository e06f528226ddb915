import os

import pytest
import torch

import fastconv  # noqa: F401


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FASTCONV_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set FASTCONV_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
