"""Intensity registration presets with itk-elastix (optional dependency)."""

import numpy as np
import pytest

itk = pytest.importorskip("itk")

from xmodal.pipelines.elastix import PRESETS, elastix_register, elastix_warp  # noqa: E402


def _blobs(shape=(32, 48, 48)):
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    img = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint16)
    for i, (c, r) in enumerate([((16, 20, 20), 6), ((12, 30, 28), 4), ((20, 24, 34), 5)], start=1):
        d2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
        img += np.exp(-d2 / (2 * r * r))
        labels[d2 < r * r] = i
    return img, labels


def test_rigid_preset_recovers_a_shift_and_warps_labels(tmp_path):
    fixed, fixed_labels = _blobs()
    shift = (2, -3, 1)
    moving = np.roll(fixed, shift, axis=(0, 1, 2))
    moving_labels = np.roll(fixed_labels, shift, axis=(0, 1, 2))
    res = elastix_register(fixed, moving, preset="rigid", parameters={"MaximumNumberOfIterations": 200},
                           out=tmp_path)
    tx = res.transform_parameters()[0][-3:]  # Euler: 3 angles then translation (x, y, z)
    assert np.allclose(tx, shift[::-1], atol=0.25), tx
    assert np.abs(res.warped - fixed).max() < 0.2
    assert (tmp_path / "TransformParameters.0.txt").exists()
    warped_labels = elastix_warp(moving_labels, res, labels=True)
    assert warped_labels.dtype == np.uint16
    inner = (slice(4, -4),) * 3
    assert np.mean(warped_labels[inner] == fixed_labels[inner]) > 0.99


def test_presets_follow_the_thesis_settings():
    vm = PRESETS["view-merging"]
    assert vm[0]["pyramid"] == (64, 32, 8, 4, 1) and vm[0]["NumberOfSpatialSamples"] == 20000
    assert vm[1]["pyramid"] == (16, 8, 4, 2, 1) and vm[1]["NumberOfSpatialSamples"] == 50000
    bs = PRESETS["bspline"][0]
    assert (bs["Metric0Weight"], bs["Metric1Weight"], bs["Metric2Weight"]) == (1.0, 1.0, 100.0)
    assert PRESETS["bspline-landmarks"][0]["Metric1Weight"] == 1000.0


def test_bad_input():
    with pytest.raises(ValueError, match="preset"):
        elastix_register(np.zeros((8, 8)), np.zeros((8, 8)), preset="affine-magic")
    with pytest.raises(ValueError, match="fixed_points, moving_points"):
        elastix_register(np.zeros((8, 8)), np.zeros((8, 8)), preset="bspline-landmarks")
    with pytest.raises(ValueError, match="two 2D or two 3D"):
        elastix_register(np.zeros((8, 8)), np.zeros((8, 8, 8)))


def test_landmark_guided_bspline_pulls_corresponding_points():
    fixed, fixed_labels = _blobs()
    shift = np.array([1, -2, 2])
    moving_labels = np.roll(fixed_labels, tuple(shift), axis=(0, 1, 2))
    centres = np.array([[16, 20, 20], [12, 30, 28], [20, 24, 34]], float)
    res = elastix_register(fixed_labels.astype(np.float32), moving_labels.astype(np.float32),
                           preset="bspline-landmarks", fixed_points=centres, moving_points=centres + shift,
                           parameters={"MaximumNumberOfIterations": 150, "FinalGridSpacingInVoxels": (16, 16, 16)})
    warped = elastix_warp(moving_labels, res, labels=True)
    before = np.mean(moving_labels[fixed_labels > 0] == fixed_labels[fixed_labels > 0])
    after = np.mean(warped[fixed_labels > 0] == fixed_labels[fixed_labels > 0])
    assert after > 0.9 and after > before + 0.2, (before, after)


@pytest.mark.parametrize("preset", ["view-merging", "similarity", "bspline"])
def test_presets_align_a_shifted_volume(preset):
    fixed, _ = _blobs()
    moving = np.roll(fixed, (1, -1, 1), axis=(0, 1, 2))
    res = elastix_register(fixed, moving, preset=preset, parameters={"MaximumNumberOfIterations": 100})
    assert np.abs(res.warped - fixed).mean() < 0.25 * np.abs(moving - fixed).mean()
