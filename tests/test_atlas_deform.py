"""xmodal.atlas: smooth (non-affine) differences between specimens, the deformable group-wise
registration of build_atlas and the smooth field of identify."""

import numpy as np
import pytest

from xmodal.atlas import build_atlas, identify
from xmodal.atlas._deform import SmoothField

from test_atlas import _base_shape, _names, _rotation


def _bent(base, names, rng, *, bend, noise):
    """A specimen bent along its long axis (x2 += c x0^2, x1 += c' x0^2, c ~ bend), jittered,
    rotated and shifted (no shared affine map explains every specimen)."""
    x = base.copy()
    span = np.abs(base[:, 0]).max()
    c = rng.uniform(-bend, bend, size=2) / span ** 2
    x[:, 2] += c[0] * base[:, 0] ** 2
    x[:, 1] += c[1] * base[:, 0] ** 2
    x += rng.normal(scale=noise, size=x.shape)
    pts = x @ _rotation(rng).T + rng.normal(scale=20.0, size=3)
    order = rng.permutation(len(pts))
    return pts[order], names[order]


def test_smooth_field_fits_a_smooth_displacement():
    rng = np.random.default_rng(0)
    y = rng.uniform(-5, 5, size=(200, 3))
    disp = np.c_[0.3 * np.sin(y[:, 1] / 3), 0.2 * np.cos(y[:, 0] / 4), 0.1 * y[:, 0] / 5]
    f = SmoothField(y[rng.choice(200, 40, replace=False)], beta=3.0).fit(y, y + disp, np.ones(200), 1e-3)
    assert np.abs(f.apply(y) - (y + disp)).max() < 0.05
    # strong regularisation: (almost) no field
    f0 = SmoothField(f.c, beta=3.0).fit(y, y + disp, np.ones(200), 1e6)
    assert np.abs(f0.displacement(y)).max() < 1e-3


def test_bent_specimens_are_named_at_low_noise():
    rng = np.random.default_rng(11)
    base, names = _base_shape(80, rng), _names(80)
    bend = 0.7  # the ends of a specimen move by up to 0.7 nearest-neighbour distances
    train = [_bent(base, names, rng, bend=bend, noise=0.03) for _ in range(6)]
    atlas = build_atlas([t[0] for t in train], names=[t[1] for t in train], calibrate=False)
    assert atlas.parameters["deform"] is not None
    rigid_like = build_atlas([t[0] for t in train], names=[t[1] for t in train], calibrate=False, deform=None)
    acc, acc_affine = [], []
    for _ in range(3):
        pts, nm = _bent(base, names, rng, bend=bend, noise=0.03)
        res = identify(pts, atlas)
        acc.append(np.mean(res.names == nm))
        acc_affine.append(np.mean(identify(pts, rigid_like).names == nm))
        assert res.diagnostics["smooth_field"] is True
        # the reported transform includes the field: it maps the cells where they were named
        assert np.allclose(res.transform.apply(pts), res.moved, atol=1e-6)
    assert np.mean(acc) >= 0.99
    # the per-name spread of the deformable atlas is that of the noise, not of the bending
    spread = np.sqrt(np.median(np.trace(atlas.covariances, axis1=1, axis2=2)))
    spread_affine = np.sqrt(np.median(np.trace(rigid_like.covariances, axis1=1, axis2=2)))
    assert spread < 0.7 * spread_affine
    assert np.mean(acc) >= np.mean(acc_affine)


def test_deform_option_is_checked():
    rng = np.random.default_rng(2)
    base, names = _base_shape(30, rng), _names(30)
    train = [_bent(base, names, rng, bend=0.5, noise=0.05) for _ in range(3)]
    with pytest.raises(ValueError, match="deform"):
        build_atlas([t[0] for t in train], names=[t[1] for t in train], calibrate=False, deform={"beta": -1})
    with pytest.raises(TypeError, match="deform"):
        build_atlas([t[0] for t in train], names=[t[1] for t in train], calibrate=False, deform="yes")


def test_smooth_options_save_load_and_off(tmp_path):
    from xmodal.atlas import Atlas

    rng = np.random.default_rng(3)
    base, names = _base_shape(40, rng), _names(40)
    train = [_bent(base, names, rng, bend=0.4, noise=0.03) for _ in range(4)]
    atlas = build_atlas([t[0] for t in train], names=[t[1] for t in train], calibrate=False,
                        deform={"beta": 0.6, "iterations": 2})
    assert atlas.parameters["deform"]["beta"] == 0.6 and atlas.parameters["deform"]["centres"] == 40
    atlas.save(tmp_path / "a.json")
    back = Atlas.load(tmp_path / "a.json")
    assert back.parameters["deform"] == atlas.parameters["deform"]
    pts, nm = _bent(base, names, rng, bend=0.4, noise=0.03)
    on, loaded = identify(pts, atlas), identify(pts, back)
    assert np.array_equal(on.names, loaded.names) and np.allclose(on.confidence, loaded.confidence)
    off = identify(pts, atlas, smooth={"identify_iterations": 0})
    assert off.diagnostics["smooth_field"] is False and on.diagnostics["smooth_field"] is True
    with pytest.raises(TypeError, match="smooth"):
        identify(pts, atlas, smooth="on")
    with pytest.raises(ValueError, match="deform"):
        identify(pts, atlas, smooth={"lambda": 0})
