import os

import pytest


def _cuda_usable() -> bool:
    try:
        from xmodal._device import cuda_available
    except ImportError:
        return False
    return cuda_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and xmodal._cuda")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_dir():
    return os.path.join(os.path.dirname(__file__), "data")
