"""The result of :func:`xmodal.cpd`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._device import array_namespace
from .._validation import positive_int


@dataclass
class CPDResult:
    """Result of :func:`cpd`.

    Attributes
    ----------
    moved : array (M, d)
        The moving points after the estimated transform (same kind and dtype as the E-step:
        numpy, or the CUDA array kind of the input).
    transform : RigidTransform | SimilarityTransform | AffineTransform | DeformableTransform
        The estimated transform, in the units of the input (moving -> fixed space).
    sigma2 : float
        Final Gaussian variance, in squared input units.
    iterations : int
        EM iterations run.
    converged : bool
        Whether the relative change of the objective fell below ``tol``, or sigma2 reached its
        floor because the matched points coincide (a step checked before it is accepted; see
        ``info["stop"]``; the warning counts the fixed points left to the outlier term and the
        moving points matched to none, which the fit says nothing about).
    match : ndarray of int64 (M,)
        For each moving point, the fixed point with the largest posterior ``P[m, n]`` in the last
        E-step (-1 when it has none within the truncation radius).
    match_probability : ndarray (M,)
        That posterior probability (in [0, 1]).
    objective : float
        Final negative log-likelihood (up to constants; plus the deformable regulariser).
    history : dict
        Per iteration ``sigma2`` (squared input units) and ``objective``.
    warnings : list of str
        Degenerate situations met (initial sigma2 below the floor, sigma2 collapse, non-finite or
        failed M-step reverted, no support, ...).
    info : dict
        Diagnostics: ``w``, ``normalize_scale``, M-step ``solver``, ``rank``, kernel ``pairs``
        evaluated, ``seconds`` (e-step, m-step, total), ``dtype``, ``device``, ``sigma2_floor``
        (squared input units), ``stop`` (why EM stopped: ``"converged"``, ``"max_iter"``,
        ``"sigma2_collapse"``, ``"sigma2_collapse_rejected"``, ``"m_step_failed"``,
        ``"non_finite_update"``, ``"no_support"``, ``"scale_degenerate"``) and, after a failed
        M-step, ``m_step_error``. Whenever a step is rejected, the transform returned is the
        previous iterate's.
    """

    moved: Any
    transform: Any
    sigma2: float
    iterations: int
    converged: bool
    match: np.ndarray
    match_probability: np.ndarray
    objective: float
    history: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    _posterior: Any = field(default=None, repr=False, compare=False)

    def correspondence_matrix(self, k: int = 5):
        """Sparse ``(M, N)`` posterior ``P[m, n]`` at the final transform and sigma2, restricted to
        the ``k`` nearest fixed points of each moving point (scipy.sparse CSR, float64).

        The denominators are the full (truncated only below ``exp(-cutoff)``) sums, so the stored
        entries are exact posteriors; the entries left out are those of farther points. CPU only.
        """
        k = positive_int(k, "k")
        if self._posterior is None:
            raise NotImplementedError("correspondence_matrix is available for CPU runs only")
        return self._posterior(k)

    def correspondences(self, *, min_probability: float = 0.0):
        """``(moving_idx, fixed_idx, probability)`` of the best matches above ``min_probability``."""
        xp = array_namespace(self.match)
        keep = (self.match >= 0) & (self.match_probability > min_probability)
        idx = xp.flatnonzero(keep)
        return idx, self.match[idx], self.match_probability[idx]
