import os

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles of the property suites (tests/test_properties_*.py):
#   "ci"      (default): fixed seed (derandomize), no example database, no deadline; the suites'
#             example counts are sized so that all of them together fit in ~3 minutes on 2 cores;
#   "nightly": 20x the examples, random seeds (a failure prints the blob to reproduce it).
# Select with XMODAL_HYPOTHESIS_PROFILE=nightly.
settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("XMODAL_HYPOTHESIS_PROFILE", "ci"))


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
