"""Training augmentation for 2D EM affinity models (numpy / scipy only, private).

Everything is drawn from a :class:`numpy.random.Generator`, so a training run is reproducible from
its seed. Geometry (the 8 symmetries of the square, a rotation by any angle, isotropic scaling,
elastic deformation) is one map from output pixels to source coordinates that is applied to the
raw image *and* to the instance labels, so the two stay aligned; affinity targets are computed from
the warped labels afterwards, so every offset keeps its meaning. Intensity changes and simulated
section artefacts touch the raw image only (a missing patch also removes its pixels from the loss).

Conventions: images are ``(H, W)``; raw is already normalised to about [0, 1]
(:func:`xmodal.models.em.normalize_em`); labels are int32 instances, ``0`` = membrane / boundary
(in no object) and ``-1`` = unknown (outside the slice or inside a simulated missing patch: pairs
touching it carry no target).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["EMAugmentation", "sample_geometry", "warp_pair", "augment_intensity",
           "affinity_targets_ignore", "augmented_sample"]

IGNORE = -1


@dataclass(frozen=True)
class EMAugmentation:
    """Ranges and probabilities of the EM augmentations (all lengths in pixels of the source).

    Geometry: a random symmetry of the square (``dihedral``), a rotation by a uniform angle with
    probability ``rotate_prob``, an isotropic scale factor drawn log-uniformly in ``scale_range``
    (> 1 magnifies), and with probability ``elastic_prob`` a smooth random displacement (cubic
    interpolation of N(0, ``elastic_alpha``²) displacements on a grid of ``elastic_spacing`` px).

    Intensity (raw only, on the [0, 1]-normalised image, in this order): a smooth local contrast /
    brightness field (``local_contrast_prob``, relative amplitude ``local_contrast``), global
    contrast and brightness, gamma (log-uniform in ``gamma_range``, on the image clipped to
    [0, 1]), Gaussian blur (``blur_prob``, sigma in ``blur_sigma``), Gaussian noise (``noise_prob``,
    standard deviation in ``noise_std``).

    Section artefacts of serial-section EM that a 2D model can see: a thin dark or bright straight
    line across the crop like a fold or knife mark (``defect_line_prob``; labels unchanged, the
    network should look through it) and a missing / damaged patch (``missing_patch_prob``): a
    rectangle replaced by flat grey plus noise whose pixels leave the loss.

    Context sections (models that see the neighbouring sections of a stack as extra input
    channels, :func:`augmented_sample` with a ``(K, H, W)`` raw): each neighbour is read through
    the same geometry shifted by N(0, ``section_shift``²) px per axis (residual misalignment),
    gets its own intensity changes and artefacts (sections differ), and with probability
    ``missing_section_prob`` is replaced by flat grey plus noise (a lost section). Only the
    central section's missing patch leaves the loss.
    """

    dihedral: bool = True
    rotate_prob: float = 0.5
    scale_range: tuple = (0.8, 1.2)
    elastic_prob: float = 0.5
    elastic_alpha: float = 3.0
    elastic_spacing: float = 32.0
    local_contrast_prob: float = 0.3
    local_contrast: float = 0.3
    contrast_range: tuple = (0.6, 1.4)
    brightness_range: tuple = (-0.15, 0.15)
    gamma_range: tuple = (0.6, 1.6)
    blur_prob: float = 0.3
    blur_sigma: tuple = (0.3, 1.5)
    noise_prob: float = 0.5
    noise_std: tuple = (0.0, 0.08)
    defect_line_prob: float = 0.1
    missing_patch_prob: float = 0.05
    section_shift: float = 1.5
    missing_section_prob: float = 0.05

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable) for the model metadata."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def none(cls) -> "EMAugmentation":
        """No augmentation at all (identity geometry and intensity)."""
        return cls(dihedral=False, rotate_prob=0.0, scale_range=(1.0, 1.0), elastic_prob=0.0,
                   local_contrast_prob=0.0, contrast_range=(1.0, 1.0), brightness_range=(0.0, 0.0),
                   gamma_range=(1.0, 1.0), blur_prob=0.0, noise_prob=0.0, defect_line_prob=0.0,
                   missing_patch_prob=0.0, section_shift=0.0, missing_section_prob=0.0)

    @classmethod
    def geometry_only(cls) -> "EMAugmentation":
        """Geometry of the defaults (section misalignment included), no intensity change and no
        artefacts."""
        return cls(local_contrast_prob=0.0, contrast_range=(1.0, 1.0), brightness_range=(0.0, 0.0),
                   gamma_range=(1.0, 1.0), blur_prob=0.0, noise_prob=0.0, defect_line_prob=0.0,
                   missing_patch_prob=0.0, missing_section_prob=0.0)


def _log_uniform(rng, lo: float, hi: float) -> float:
    lo, hi = float(lo), float(hi)
    if lo == hi:
        return lo
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_geometry(rng, window: int, src_shape, aug: EMAugmentation, *, center=None):
    """Source coordinates ``(2, window, window)`` (float64, row / column) of a random geometric
    transform of a ``window`` x ``window`` output patch taken from an image of ``src_shape``.

    The output centre maps to ``center`` (default: uniform over the positions whose
    transformed window stays inside the source when possible). Pixel (i, j) of the output reads
    the source at ``center + A @ ((i, j) - c_out) + d(i, j)`` with ``A`` the symmetry, rotation and
    ``1 / scale`` and ``d`` the elastic displacement.
    """
    h, w = int(src_shape[0]), int(src_shape[1])
    c_out = (window - 1) / 2.0
    a = np.eye(2)
    if aug.dihedral:
        k = int(rng.integers(8))
        q = np.array([[0.0, -1.0], [1.0, 0.0]])  # a quarter turn in (row, col)
        a = np.linalg.matrix_power(q, k % 4)
        if k >= 4:
            a = a @ np.diag([1.0, -1.0])
    if aug.rotate_prob > 0 and rng.random() < aug.rotate_prob:
        t = rng.uniform(0.0, 2.0 * np.pi)
        a = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ a
    s = _log_uniform(rng, *aug.scale_range)
    a = a / s
    # half extent of the transformed window (plus the elastic amplitude) in the source
    ext = np.abs(a).sum(axis=1) * c_out + (3.0 * aug.elastic_alpha if aug.elastic_prob > 0 else 0.0)
    if center is None:
        cy = rng.uniform(min(ext[0], (h - 1) / 2), max(h - 1 - ext[0], (h - 1) / 2))
        cx = rng.uniform(min(ext[1], (w - 1) / 2), max(w - 1 - ext[1], (w - 1) / 2))
    else:
        cy, cx = float(center[0]), float(center[1])
    g = np.arange(window, dtype=np.float64) - c_out
    coords = np.empty((2, window, window), dtype=np.float64)
    coords[0] = cy + a[0, 0] * g[:, None] + a[0, 1] * g[None, :]
    coords[1] = cx + a[1, 0] * g[:, None] + a[1, 1] * g[None, :]
    if aug.elastic_prob > 0 and rng.random() < aug.elastic_prob and aug.elastic_alpha > 0:
        from scipy.ndimage import map_coordinates

        n = int(np.ceil((window - 1) / aug.elastic_spacing)) + 4
        pos = (np.arange(window, dtype=np.float64) / aug.elastic_spacing + 1.5)
        grid = np.stack(np.meshgrid(pos, pos, indexing="ij"))
        for d in range(2):
            coarse = rng.normal(0.0, aug.elastic_alpha, size=(n, n))
            coords[d] += map_coordinates(coarse, grid, order=3, mode="nearest") / s
    return coords


def warp_pair(raw, labels, coords, *, raw_order: int = 1, crop=None):
    """Apply one coordinate map to a raw image and its labels.

    Parameters
    ----------
    raw : (H, W) float array
    labels : (H, W) int array (instances, 0 = boundary)
    coords : (2, h, w) source coordinates from :func:`sample_geometry`
    raw_order : spline order for raw (1 = bilinear; 0 = nearest, as the labels)
    crop : int, optional
        Warp raw only in the central ``crop`` x ``crop`` part of the window (the network input);
        labels are warped over the whole window (the margin gives long offsets their partners).

    Returns
    -------
    raw_out : float32 (crop x crop, or h x w); source pixels outside the image are mirrored
    labels_out : int32 (h x w); ``-1`` where the source lies outside the image
    """
    from scipy.ndimage import map_coordinates

    h, w = coords.shape[1:]
    if crop is None:
        rc = coords
    else:
        m0, m1 = (h - crop) // 2, (w - crop) // 2
        rc = coords[:, m0:m0 + crop, m1:m1 + crop]
    raw_out = map_coordinates(np.asarray(raw, dtype=np.float32), rc, order=raw_order, mode="mirror",
                              output=np.float32)
    lab = np.asarray(labels)
    # nearest neighbour, computed here so the rounding is explicit (labels are never blended)
    iy = np.floor(coords[0] + 0.5).astype(np.int64)
    ix = np.floor(coords[1] + 0.5).astype(np.int64)
    inside = (iy >= 0) & (iy < lab.shape[0]) & (ix >= 0) & (ix < lab.shape[1])
    lab_out = np.full((h, w), IGNORE, dtype=np.int32)
    lab_out[inside] = lab[iy[inside], ix[inside]]
    return raw_out, lab_out


def _smooth_field(rng, shape, spacing: float, amplitude: float):
    from scipy.ndimage import map_coordinates

    n0 = int(np.ceil((shape[0] - 1) / spacing)) + 4
    n1 = int(np.ceil((shape[1] - 1) / spacing)) + 4
    coarse = rng.normal(0.0, amplitude, size=(n0, n1))
    g0 = np.arange(shape[0], dtype=np.float64) / spacing + 1.5
    g1 = np.arange(shape[1], dtype=np.float64) / spacing + 1.5
    grid = np.stack(np.meshgrid(g0, g1, indexing="ij"))
    return map_coordinates(coarse, grid, order=3, mode="nearest").astype(np.float32)


def augment_intensity(rng, x, aug: EMAugmentation):
    """Intensity changes and section artefacts of one normalised raw crop.

    Returns
    -------
    x : float32 array, same shape
    missing : bool array, same shape; True inside a simulated missing patch (no targets there)
    """
    from scipy.ndimage import gaussian_filter

    x = np.array(x, dtype=np.float32, copy=True)
    missing = np.zeros(x.shape, dtype=bool)
    if aug.local_contrast_prob > 0 and rng.random() < aug.local_contrast_prob:
        spacing = float(rng.uniform(24.0, 64.0))
        gain = np.exp(_smooth_field(rng, x.shape, spacing, aug.local_contrast))
        offset = _smooth_field(rng, x.shape, spacing, aug.local_contrast / 3.0)
        m = float(x.mean())
        x = (x - m) * gain + m + offset
    c = _log_uniform(rng, *aug.contrast_range)
    b = float(rng.uniform(*aug.brightness_range))
    x = (x - 0.5) * c + 0.5 + b
    g = _log_uniform(rng, *aug.gamma_range)
    if g != 1.0:
        x = np.clip(x, 0.0, 1.0) ** np.float32(g)
    if aug.blur_prob > 0 and rng.random() < aug.blur_prob:
        x = gaussian_filter(x, float(rng.uniform(*aug.blur_sigma)), mode="mirror")
    if aug.noise_prob > 0 and rng.random() < aug.noise_prob:
        x = x + rng.normal(0.0, float(rng.uniform(*aug.noise_std)), size=x.shape).astype(np.float32)
    h, w = x.shape
    if aug.defect_line_prob > 0 and rng.random() < aug.defect_line_prob:
        # a straight line through a random point at a random angle, 1-3 px wide
        t = rng.uniform(0.0, np.pi)
        py, px = rng.uniform(0, h), rng.uniform(0, w)
        yy, xx = np.mgrid[0:h, 0:w]
        dist = np.abs((yy - py) * np.cos(t) - (xx - px) * np.sin(t))
        width = float(rng.uniform(0.5, 1.5))
        value = float(rng.choice([rng.uniform(-0.1, 0.15), rng.uniform(0.85, 1.1)]))
        weight = np.clip(1.0 + width - dist, 0.0, 1.0).astype(np.float32)
        x = x * (1.0 - weight) + value * weight
    if aug.missing_patch_prob > 0 and rng.random() < aug.missing_patch_prob:
        ph = int(rng.integers(h // 8, h // 2 + 1))
        pw = int(rng.integers(w // 8, w // 2 + 1))
        y0 = int(rng.integers(0, h - ph + 1))
        x0 = int(rng.integers(0, w - pw + 1))
        fill = float(rng.uniform(0.2, 0.8))
        x[y0:y0 + ph, x0:x0 + pw] = fill + rng.normal(0.0, 0.03, size=(ph, pw)).astype(np.float32)
        missing[y0:y0 + ph, x0:x0 + pw] = True
    return x.astype(np.float32, copy=False), missing


def affinity_targets_ignore(labels, offsets, *, background: int = 0, ignore: int = IGNORE):
    """Merge targets and loss mask of a label window that may hold unknown pixels.

    Target of channel c at p: 1 when ``labels[p] == labels[p + offsets[c]] != background``.
    Mask: 1 when the partner lies in the window and neither ``p`` nor the partner is ``ignore``.

    Returns ``targets, mask``, both ``(C, H, W)`` uint8.
    """
    lab = np.asarray(labels)
    offsets = np.asarray(offsets, dtype=np.int64)
    if lab.ndim != 2 or offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(f"labels, offsets: expected (H, W) labels and (C, 2) offsets, got shapes "
                         f"{lab.shape} and {offsets.shape}")
    h, w = lab.shape
    t = np.zeros((len(offsets), h, w), dtype=np.uint8)
    m = np.zeros_like(t)
    for c, (dy, dx) in enumerate(offsets):
        dy, dx = int(dy), int(dx)
        if abs(dy) >= h or abs(dx) >= w:
            continue
        src = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
        dst = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
        a, b = lab[src], lab[dst]
        t[(c, *src)] = (a == b) & (a != background)
        m[(c, *src)] = (a != ignore) & (b != ignore)
    return t, m


def _context_sections(rng, raw, labels, coords, crop: int, aug: EMAugmentation):
    """Warp a ``(K, H, W)`` raw stack (centre ``K // 2``) and the centre's labels; see
    :class:`EMAugmentation` for what the neighbouring sections get."""
    from scipy.ndimage import map_coordinates

    k = raw.shape[0]
    c = k // 2
    h, w = coords.shape[1:]
    m0, m1 = (h - crop) // 2, (w - crop) // 2
    rc = coords[:, m0:m0 + crop, m1:m1 + crop]
    xc, lab = warp_pair(raw[c], labels, coords, crop=crop)
    xc, missing = augment_intensity(rng, xc, aug)
    out = np.empty((k, crop, crop), dtype=np.float32)
    out[c] = xc
    for j in range(k):
        if j == c:
            continue
        shift = rng.normal(0.0, float(aug.section_shift), size=2) if aug.section_shift > 0 else np.zeros(2)
        xj = map_coordinates(np.asarray(raw[j], dtype=np.float32), rc + shift[:, None, None], order=1,
                             mode="mirror", output=np.float32)
        out[j] = augment_intensity(rng, xj, aug)[0]
        if aug.missing_section_prob > 0 and rng.random() < aug.missing_section_prob:
            out[j] = float(rng.uniform(0.2, 0.8)) + rng.normal(0.0, 0.03, size=(crop, crop)).astype(np.float32)
    return out, lab, missing


def augmented_sample(rng, raw, labels, *, crop: int, offsets, aug: EMAugmentation, center=None):
    """One training sample: raw crop, targets and mask after joint augmentation.

    Parameters
    ----------
    raw : (H, W) float32, normalised to about [0, 1]; or (K, H, W), the section to label at
        ``K // 2`` with its neighbours (context input, see :class:`EMAugmentation`)
    labels : (H, W) int instances (0 = boundary) of the (central) section
    crop : int
        Side of the network input.
    offsets : (C, 2) int

    Returns
    -------
    x : (crop, crop) float32, or (K, crop, crop) for a context stack
    targets, mask : (C, crop, crop) uint8
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    margin = int(np.abs(offsets).max()) if offsets.size else 0
    window = crop + 2 * margin
    raw = np.asarray(raw)
    coords = sample_geometry(rng, window, raw.shape[-2:], aug, center=center)
    if raw.ndim == 3:
        x, lab, missing = _context_sections(rng, raw, labels, coords, crop, aug)
    else:
        x, lab = warp_pair(raw, labels, coords, crop=crop)
        x, missing = augment_intensity(rng, x, aug)
    if missing.any():
        lab[margin:margin + crop, margin:margin + crop][missing] = IGNORE
    t, m = affinity_targets_ignore(lab, offsets)
    sl = (slice(None), slice(margin, margin + crop), slice(margin, margin + crop))
    return x, t[sl], m[sl]
