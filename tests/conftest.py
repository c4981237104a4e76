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


# Packages of the test extra (pyproject.toml, [project.optional-dependencies] test, plus the core
# dependencies), by import name. `pip install ".[test]"` installs them all, so a test that skips
# because one of them cannot be imported hides a broken install: it is reported as a failure.
# Skips for what the test extra does not install (cupy, a GPU) stay skips.
_TEST_EXTRA = {"numpy", "scipy", "zarr", "highspy", "threadpoolctl", "pytest", "pytest_benchmark", "hypothesis",
               "torch", "monai", "bioimage_cpp", "mwatershed", "pycpd", "skimage", "PIL", "matplotlib", "tifffile",
               "itk", "dask", "distributed", "tqdm"}


def _missing_test_dependency(report) -> str | None:
    import re

    if not report.skipped:
        return None
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    m = re.search(r"could not import '([\w.]+)'", text)
    if m and m.group(1).split(".")[0] in _TEST_EXTRA:
        return (f"{m.group(1)} is in the test extra (pip install '.[test]'): a missing or broken install fails, "
                f"it does not skip ({text.strip()})")
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    reason = _missing_test_dependency(report)
    if reason:
        report.outcome, report.longrepr = "failed", reason


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()
    reason = _missing_test_dependency(report)
    if reason:
        report.outcome, report.longrepr = "failed", reason
