"""Layer data of a cell registration, as napari ``(data, kwargs, layer_type)`` tuples.

Pure numpy: nothing here imports napari, so the reader and the widgets share one definition of what
a registration looks like in the viewer, and it can be checked without a display.

Coordinates are physical units (the units of the registration), columns in image axis order
(z, y, x) or (y, x); the layers have the identity transform (scale 1, no translation, rotation,
shear or affine), so images opened with their physical scale line up, and carry the units of the
registration (napari 0.6+ ``units``) when the caller knows them: the fixed layer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Colours (RGBA) of confidence 0 and 1; lines in between are interpolated (red -> green).
LOW, HIGH = np.array([0.90, 0.10, 0.10, 1.0]), np.array([0.10, 0.80, 0.25, 1.0])
#: Colour of a line after review: rejected pairs are grey.
REJECTED = np.array([0.55, 0.55, 0.55, 0.6])
STATUSES = ("unreviewed", "accepted", "rejected", "reassigned")


@dataclass
class MatchTable:
    """The matched pairs of a registration and the cells they join (physical units).

    ``fixed_index`` / ``moving_index`` are rows of ``fixed`` / ``moving``; ``moved`` are the moving
    cells registered into the fixed frame; ``status`` one of :data:`STATUSES` per pair;
    ``regions`` optional (centres (n_moving, d), shape matrices (n_moving, d, d)) of the 95 %
    prediction regions at the moving cells.
    """

    fixed: np.ndarray
    moving: np.ndarray
    moved: np.ndarray
    fixed_index: np.ndarray
    moving_index: np.ndarray
    confidence: np.ndarray
    fixed_ids: np.ndarray | None = None
    moving_ids: np.ndarray | None = None
    status: np.ndarray | None = None
    regions: tuple | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.fixed = np.asarray(self.fixed, dtype=np.float64)
        self.moving = np.asarray(self.moving, dtype=np.float64)
        self.moved = np.asarray(self.moved, dtype=np.float64)
        self.fixed_index = np.asarray(self.fixed_index, dtype=np.int64)
        self.moving_index = np.asarray(self.moving_index, dtype=np.int64)
        k = len(self.fixed_index)
        if len(self.moving_index) != k:
            raise ValueError(f"moving_index: expected {k} entries like fixed_index, got {len(self.moving_index)}")
        self.confidence = (np.full(k, np.nan) if self.confidence is None
                           else np.asarray(self.confidence, dtype=np.float64))
        if self.fixed_ids is None:
            self.fixed_ids = np.arange(len(self.fixed))
        if self.moving_ids is None:
            self.moving_ids = np.arange(len(self.moving))
        if self.status is None:
            self.status = np.array(["unreviewed"] * k, dtype=object)
        self.status = np.asarray(self.status, dtype=object)

    @property
    def distances(self) -> np.ndarray:
        """Distance of each pair in the fixed frame (fixed cell to registered moving cell)."""
        if not len(self.fixed_index):
            return np.zeros(0)
        return np.linalg.norm(self.fixed[self.fixed_index] - self.moved[self.moving_index], axis=1)

    @classmethod
    def from_result(cls, result, source: str = "", fixed_ids=None, moving_ids=None) -> "MatchTable":
        """From a :class:`~xmodal.pipelines.CellRegistration`. ``fixed_ids`` / ``moving_ids``: the
        ids of every cell (e.g. the label values of a Labels layer's objects) when the caller knows
        them; otherwise matched cells get the result's (per-pair) ids and unmatched ones their row
        numbers."""
        regions = None
        if result.errors is not None and "affine" in result.errors:
            r = result.errors["affine"]["region"]
            regions = (np.asarray(r.centers), np.asarray(r.shape_matrices))
        fixed_ids = _all_ids(fixed_ids, len(result.fixed_points), result.fixed_index, result.fixed_ids, "fixed_ids")
        moving_ids = _all_ids(moving_ids, len(result.moving_points), result.moving_index, result.moving_ids,
                              "moving_ids")
        return cls(result.fixed_points, result.moving_points, result.moved, result.fixed_index,
                   result.moving_index, result.confidence, fixed_ids, moving_ids, regions=regions, source=source)


def _all_ids(ids, n: int, index, pair_ids, name: str) -> np.ndarray:
    """Ids of all ``n`` cells: ``ids`` checked, or row numbers with ``pair_ids`` at rows ``index``."""
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise ValueError(f"{name}: expected {n} ids (one per cell), got shape {ids.shape}")
        return ids
    out = np.arange(n).astype(object)  # ids of unmatched cells: row numbers
    out[np.asarray(index, dtype=np.int64)] = np.asarray(pair_ids)  # result ids are per pair
    return out


def confidence_colors(confidence: np.ndarray, status: np.ndarray | None = None) -> np.ndarray:
    """RGBA per pair: red (confidence 0) to green (1), grey for rejected pairs; NaN counts as 0.5."""
    c = np.nan_to_num(np.asarray(confidence, dtype=np.float64), nan=0.5).clip(0, 1)[:, None]
    colors = (1 - c) * LOW + c * HIGH
    if status is not None and len(colors):
        colors[np.asarray(status) == "rejected"] = REJECTED
    return colors


def match_lines(table: MatchTable) -> list[np.ndarray]:
    """One (2, d) line per pair: fixed cell -> registered moving cell."""
    return [np.stack([table.fixed[f], table.moved[m]]) for f, m in zip(table.fixed_index, table.moving_index)]


def match_features(table: MatchTable) -> dict:
    """Per-pair columns shown by napari (layer ``features``)."""
    return {"fixed_index": table.fixed_index, "moving_index": table.moving_index,
            "fixed_id": np.asarray(table.fixed_ids)[table.fixed_index] if len(table.fixed_index) else [],
            "moving_id": np.asarray(table.moving_ids)[table.moving_index] if len(table.moving_index) else [],
            "distance": table.distances, "confidence": table.confidence, "status": table.status}


def ellipse_corners(center: np.ndarray, shape_matrix: np.ndarray) -> np.ndarray:
    """The 4 corners (4, d) of the rectangle bounding the y-x section of an ellipse/ellipsoid
    ``(p - c)ᵀ S⁻¹ (p - c) <= 1`` through its centre (napari's ellipse format; rotated when the
    axes are). In 3D the z of every corner is the centre's: the ellipse drawn on the centre's slice
    is the marginal y-x region."""
    d = len(center)
    sub = np.asarray(shape_matrix)[d - 2:, d - 2:]
    vals, vecs = np.linalg.eigh(0.5 * (sub + sub.T))
    a, b = np.sqrt(np.clip(vals, 0, None))
    u, v = vecs[:, 0] * a, vecs[:, 1] * b
    corners2 = np.array([-u - v, -u + v, u + v, u - v]) + center[d - 2:]
    out = np.repeat(center[None, :], 4, axis=0).astype(np.float64)
    out[:, d - 2:] = corners2
    return out


def registration_layers(table: MatchTable, *, name: str = "registration", units=None) -> list[tuple]:
    """Layers of a registration: fixed cells, moving cells (own frame, hidden), registered moving
    cells, the matches as lines coloured by confidence (shapes, selectable for review), the match
    displacements as vectors coloured by distance (hidden), the 95 % error ellipses (when computed).

    The matches layer carries the whole :class:`MatchTable` in ``metadata["xmodal_matches"]``; the
    review widget works on it.

    Parameters
    ----------
    table : MatchTable
        The registration (physical units: those of the fixed cells, the moving cells converted).
    name : str
        Prefix of the layer names.
    units : sequence, optional
        The units of the coordinates, one per axis (z, y, x) or (y, x): every layer's napari
        ``units`` (napari 0.6 and later; give None for an older napari). None: napari's default.

    Returns
    -------
    list of tuple
        ``(data, kwargs, layer_type)`` per layer, identity transform.
    """
    size = _point_size(table.fixed)
    layers = [
        (table.fixed, {"name": f"{name}: fixed", "face_color": "#3b75ff", "size": size,
                       "features": {"id": np.asarray(table.fixed_ids)}}, "points"),
        (table.moving, {"name": f"{name}: moving (own frame)", "face_color": "#ffa500", "size": size,
                        "visible": False, "features": {"id": np.asarray(table.moving_ids)}}, "points"),
        (table.moved, {"name": f"{name}: moved", "face_color": "#ffa500", "size": size,
                       "features": {"id": np.asarray(table.moving_ids)}}, "points"),
    ]
    if len(table.fixed_index):
        layers.append((match_lines(table), {
            "name": f"{name}: matches", "shape_type": "line", "edge_width": size / 4,
            "edge_color": confidence_colors(table.confidence, table.status), "features": match_features(table),
            "metadata": {"xmodal_matches": table}}, "shapes"))
        start = table.fixed[table.fixed_index]
        vec = np.stack([start, table.moved[table.moving_index] - start], axis=1)
        layers.append((vec, {"name": f"{name}: match distance", "features": {"distance": table.distances},
                             "edge_color": "distance", "edge_colormap": "viridis", "edge_width": size / 4,
                             "visible": False}, "vectors"))
    if table.regions is not None:
        centres, shapes = table.regions
        ellipses = [ellipse_corners(c, s) for c, s in zip(centres, shapes)]
        layers.append((ellipses, {"name": f"{name}: 95% error ellipses", "shape_type": "ellipse",
                                  "edge_color": "#ff4040", "face_color": "transparent",
                                  "edge_width": size / 8, "opacity": 0.7}, "shapes"))
    if units is not None:
        units = tuple(units)
        if table.fixed.ndim == 2 and len(units) != table.fixed.shape[1]:
            raise ValueError(f"units: expected {table.fixed.shape[1]} (one per axis), got {units}")
        for _, kwargs, _ in layers:
            kwargs["units"] = units
    return layers


def _point_size(points: np.ndarray) -> float:
    """A point size of about a third of the median nearest-neighbour distance."""
    if len(points) < 2:
        return 1.0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=2)
    nn = float(np.median(dist[:, 1]))
    return nn / 3 if nn > 0 else 1.0
