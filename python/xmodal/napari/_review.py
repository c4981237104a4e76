"""Review decisions on a :class:`~xmodal.napari._layers.MatchTable` (no napari needed): accept,
reject, reassign a pair, and export the reviewed table that ``register_cells(reviewed=...)`` and
``xmodal.atlas.read_samples`` read back (format: :mod:`xmodal.pipelines._reviewed`)."""

from __future__ import annotations

import numpy as np

from ._layers import MatchTable


def _pair(table: MatchTable, pair: int) -> int:
    k = len(table.fixed_index)
    if not isinstance(pair, (int, np.integer)) or not 0 <= int(pair) < k:
        raise ValueError(f"pair: expected an index in [0, {k}), got {pair!r}")
    return int(pair)


def accept(table: MatchTable, pair: int) -> None:
    table.status[_pair(table, pair)] = "accepted"


def reject(table: MatchTable, pair: int) -> None:
    table.status[_pair(table, pair)] = "rejected"


def reassign(table: MatchTable, pair: int, fixed_index: int) -> list[int]:
    """Give pair ``pair`` the fixed partner ``fixed_index`` (status "reassigned"); a pair that had
    that fixed cell loses it (status "rejected": one-to-one). Returns the pairs whose status changed
    besides ``pair``."""
    i = _pair(table, pair)
    n = len(table.fixed)
    if not isinstance(fixed_index, (int, np.integer)) or not 0 <= int(fixed_index) < n:
        raise ValueError(f"fixed_index: expected a fixed cell in [0, {n}), got {fixed_index!r}")
    others = [int(j) for j in np.flatnonzero(table.fixed_index == int(fixed_index)) if j != i
              and table.status[j] != "rejected"]
    for j in others:
        table.status[j] = "rejected"
    table.fixed_index[i] = int(fixed_index)
    table.confidence[i] = np.nan  # the model's confidence was for the old partner
    table.status[i] = "reassigned"
    return others


def export_csv(table: MatchTable, path):
    """Write the reviewed table; returns its path."""
    from ..pipelines._reviewed import write_reviewed_matches

    return write_reviewed_matches(path, fixed=table.fixed, moving=table.moving, fixed_index=table.fixed_index,
                                  moving_index=table.moving_index, fixed_ids=table.fixed_ids,
                                  moving_ids=table.moving_ids, distance=table.distances,
                                  confidence=table.confidence, status=table.status)
