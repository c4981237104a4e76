"""Where the benchmarks and scripts find the data sets that are not shipped with xmodal.

One rule for every benchmark file and script: the folder named by the environment variable
``XMODAL_DATA``, else the first existing of ``<repository>/data`` and ``<repository>/../shared/data``
(a ``shared/data`` folder beside the checkout), else ``<repository>/data`` (so that messages name
where the data is expected). Each data set is a sub-folder (``isbi2012_em_membranes``,
``platynereis_6dpf_nuclei``, ...).

Scripts outside this folder import it by path::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _data import data_root
"""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The data folder (see the module docstring); it need not exist."""
    env = os.environ.get("XMODAL_DATA")
    if env:
        return Path(env).expanduser()
    candidates = [REPOSITORY / "data", REPOSITORY.parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def data_path(*parts: str) -> Path:
    """``data_root() / parts``, e.g. ``data_path("isbi2012_em_membranes")``."""
    return data_root().joinpath(*parts)


def missing(path: Path, what: str) -> str:
    """The message of a benchmark that cannot run because ``path`` is absent."""
    return f"{what} not found at {path} (set XMODAL_DATA to the folder holding it; see benchmarks/_data.py)"
