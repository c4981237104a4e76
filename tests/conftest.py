import os

import pytest

# Hypothesis profiles: "ci" (fixed seed, the default; replaces hypothesis' built-in "ci") and
# "nightly" (more examples, random seed), chosen with XMODAL_HYPOTHESIS_PROFILE. Keep one copy of
# this block when merging.
try:
    from hypothesis import settings as _hyp
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    _hyp = None
if _hyp is not None:
    _hyp.register_profile("ci", max_examples=60, derandomize=True, deadline=None, print_blob=True, database=None)
    _hyp.register_profile("nightly", max_examples=1000, deadline=None, print_blob=True)
    _hyp.load_profile(os.environ.get("XMODAL_HYPOTHESIS_PROFILE", "ci"))


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
