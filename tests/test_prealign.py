"""Input checks of the pre-alignment helpers (xmodal.pipelines.prealign / principal_axes)."""

import numpy as np
import pytest

from xmodal.pipelines import prealign, principal_axes, proper_signed_permutations


def test_principal_axes_and_prealign_name_the_argument_for_too_few_or_bad_points():
    """One point or NaN coordinates gave numpy's 'Eigenvalues did not converge'; prealign with one
    moving point named principal_axes' argument instead of its own."""
    A = np.random.default_rng(0).random((30, 3))
    with pytest.raises(ValueError, match=r"^points: expected at least 2 points, got 1"):
        principal_axes(A[:1])
    with pytest.raises(ValueError, match=r"^points: coordinates must be finite"):
        principal_axes(np.where(A > 0.95, np.nan, A))
    for n in (1, 3):
        with pytest.raises(ValueError, match=rf"^moving: expected at least d \+ 1 = 4 points, got {n}"):
            prealign(A[:n], A)
    with pytest.raises(ValueError, match=r"^fixed: expected at least d \+ 1 = 4 points, got 2"):
        prealign(A, A[:2])
    with pytest.raises(ValueError, match=r"^d: expected an integer >= 1, got 0"):
        proper_signed_permutations(0)
    c, axes, var = principal_axes(A[:2].tolist())
    assert np.isclose(np.linalg.det(axes), 1.0) and var[0] > 0
