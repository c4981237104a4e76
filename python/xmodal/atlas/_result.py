"""The result of :func:`~xmodal.atlas.identify`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Identification:
    """Result of :func:`identify`.

    Attributes
    ----------
    names : (n,) str array
        Atlas name given to each cell ('' = left unnamed: no atlas name fits it better than the
        unmatched cost).
    confidence : (n,) array in [0, 1]
        Calibrated probability that the cell's name is right (for an unnamed cell: that it has no
        atlas name). Over the atlas's own leave-one-sample-out evaluation, cells with confidence
        >= 0.9 were right at least 90 % of the time (see ``Atlas.calibration``).
    top_k_names : (n, k) str array
        The k most probable names of each cell, by decreasing probability ('' pads, and stands for
        "no atlas name" when that outcome is among the k most probable).
    top_k_probabilities : (n, k) array
        Their probabilities.
    index : (n,) int array
        Row of ``names`` in ``atlas.names`` (-1 when unnamed).
    transform : AffineTransform or CompositeTransform
        Maps the sample's points into the atlas frame (``transform.apply(points)``).
    moved : (n, d) array
        The points in the atlas frame.
    reflected : bool
        Whether the chosen pose mirrors the sample (only with ``allow_reflection=True``).
    cost : float
        Objective of the final assignment (negative log-likelihood, nats, up to a constant).
    diagnostics : dict
        Pose search scores, iterations, unmatched cost, temperature, counts, timings (seconds), and
        ``"fit"``: the goodness of fit (median squared Mahalanobis distance of the named cells to
        their names, beside the atlas's leave-one-out samples; ``ok`` False, with a warning, when
        the registration has probably failed: then the names and confidences are not reliable).
    """

    names: np.ndarray
    confidence: np.ndarray
    top_k_names: np.ndarray
    top_k_probabilities: np.ndarray
    index: np.ndarray
    transform: object
    moved: np.ndarray
    reflected: bool
    cost: float
    diagnostics: dict = field(default_factory=dict)

    @property
    def n_named(self) -> int:
        return int((self.index >= 0).sum())

    def __repr__(self) -> str:
        return (f"Identification(cells={len(self.names)}, named={self.n_named}, "
                f"mean_confidence={float(np.mean(self.confidence)) if len(self.confidence) else 0.0:.3f}, "
                f"reflected={self.reflected})")
