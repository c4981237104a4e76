"""Small real data sets shipped with xmodal (licences and citations in ``xmodal/data/README.md``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = ["Embryo", "celegans_embryos", "isbi2012_slices"]


@dataclass(frozen=True)
class Embryo:
    """Nuclei of one C. elegans embryo at one time point.

    Attributes
    ----------
    name : str
        Embryo identifier (e.g. ``"20241009_JIM767_25_L1"``).
    time : int
        Time-point index in the source movie.
    cells : numpy.ndarray of str, shape (n,)
        Sulston lineage names (unique within an embryo; ground truth across embryos).
    points : numpy.ndarray of float64, shape (n, 3)
        Nucleus centres ``(z, y, x)`` in isotropic xy-pixel units (about 0.087 µm); z is the focal
        plane scaled by ``zpixres``.
    zpixres : float
        z step divided by the xy pixel size.
    size : numpy.ndarray of float64, shape (n,)
        Nucleus diameters in pixels.
    expression : numpy.ndarray of float64, shape (n,)
        Reporter (GFP channel) intensity of each nucleus with local background correction
        (AceTree's ``local`` column; arbitrary units, can be negative). A per-cell feature like
        the colour channels of NeuroPAL; it is lineage-specific, so it helps naming cells.
    """

    name: str
    time: int
    cells: np.ndarray
    points: np.ndarray
    zpixres: float
    size: np.ndarray
    expression: np.ndarray


def celegans_embryos() -> dict[str, Embryo]:
    """The 8 JIM767 C. elegans embryos at their first time point with >= 350 nuclei.

    Returns
    -------
    dict of str to Embryo
        Keyed by embryo name, in sorted order. Any two embryos share 323-348 lineage names, a
        real cross-individual matching problem (the embryos are imaged in different orientations).
    """
    ref = resources.files("xmodal") / "data" / "celegans_jim767_350cells.csv"
    rows: dict[str, list[dict[str, str]]] = {}
    with ref.open("r", newline="") as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(row["embryo"], []).append(row)
    out = {}
    for name in sorted(rows):
        rs = rows[name]
        zpix = float(rs[0]["zpixres"])
        pts = np.array([[float(r["z_plane"]) * zpix, float(r["y_px"]), float(r["x_px"])] for r in rs])
        out[name] = Embryo(
            name=name,
            time=int(rs[0]["time"]),
            cells=np.array([r["cell"] for r in rs]),
            points=pts,
            zpixres=zpix,
            size=np.array([float(r["size_px"]) for r in rs]),
            expression=np.array([float(r["expression_local"]) for r in rs]),
        )
    return out


def isbi2012_slices() -> tuple[np.ndarray, np.ndarray]:
    """Two ISBI 2012 EM slices (training-volume indices 25 and 26) with instance ground truth.

    Returns
    -------
    raw : (2, 512, 512) uint8
        Serial-section TEM, 4 x 4 nm pixels, 50 nm sections.
    instances : (2, 512, 512) int32
        Per slice, the 4-connected components of the cell interior, numbered from 1 without
        repeating ids across slices; 0 = membrane (ignored in evaluations).
    """
    from scipy import ndimage

    ref = resources.files("xmodal") / "data" / "isbi2012_slices_25_26.npz"
    with ref.open("rb") as fh, np.load(fh) as data:
        raw = np.array(data["raw"])
        membrane = np.array(data["membrane_labels"])
    instances = np.zeros(membrane.shape, np.int32)
    offset = 0
    for z in range(membrane.shape[0]):
        lab, n = ndimage.label(membrane[z] > 127)
        instances[z] = np.where(lab > 0, lab + offset, 0)
        offset += n
    return raw, instances
