"""Cell identity against several annotated individuals: atlases of named cells.

- :func:`build_atlas`: group-wise registration of two or more annotated samples (points + names,
  optionally features) to an evolving mean (affine, then a smooth field per sample); per-name mean, covariance, feature statistics,
  presence frequency and partner names that move together; the confidence calibrated by
  leave-one-sample-out;
- :func:`identify`: name the cells of a new sample (pose search, registration to the atlas
  alternating with exact sparse assignment, a smooth field), with a calibrated confidence and top-k candidates;
- :class:`Atlas` (``save`` / ``load``, versioned JSON); :func:`write_atlas_report` (HTML: the
  leave-one-out figures, the reliability curve, training samples whose annotation looks wrong);
- tables: :func:`read_samples`, :func:`read_cells`, :func:`write_identification` (what the
  command line uses).

See ``docs/identity.md``.
"""

from ._build import build_atlas
from ._identify import Identification, identify
from ._model import Atlas
from ._report import write_atlas_report
from ._tables import identification_rows, read_annotated_table, read_cells, read_samples, write_identification

__all__ = ["Atlas", "Identification", "build_atlas", "identify", "read_samples", "read_annotated_table",
           "read_cells", "write_identification", "identification_rows", "write_atlas_report"]
