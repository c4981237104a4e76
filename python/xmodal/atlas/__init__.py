"""Cell identity against several annotated individuals: atlases of named cells.

- :func:`build_atlas`: group-wise registration of two or more annotated samples (points + names,
  optionally features) to an evolving mean; per-name mean, covariance, feature statistics and
  presence frequency; the confidence calibrated by leave-one-sample-out;
- :func:`identify`: name the cells of a new sample (pose search, registration to the atlas
  alternating with exact sparse assignment), with a calibrated confidence and top-k candidates;
- :class:`Atlas` (``save`` / ``load``, versioned JSON).

See ``docs/identity.md``.
"""

from ._build import build_atlas
from ._identify import Identification, identify
from ._model import Atlas

__all__ = ["Atlas", "Identification", "build_atlas", "identify"]
