"""A chain of point transforms, applied in order, JSON round-trippable."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CompositeTransform:
    """Apply ``transforms[0]``, then ``transforms[1]``, ... to points (physical units).

    Each element has ``apply(points)`` and ``to_dict()``; :meth:`from_dict` rebuilds the chain
    with :func:`xmodal.registration.transform_from_dict`.
    """

    transforms: tuple

    kind = "composite"

    @property
    def ndim(self) -> int:
        return self.transforms[0].ndim

    def apply(self, points) -> np.ndarray:
        out = np.asarray(points, dtype=np.float64)
        for t in self.transforms:
            out = t.apply(out)
        return out

    __call__ = apply

    def inverse(self):
        """The inverse chain, when every element has a closed-form inverse."""
        return CompositeTransform(tuple(t.inverse() for t in reversed(self.transforms)))

    def to_dict(self) -> dict:
        return {"type": self.kind, "transforms": [t.to_dict() for t in self.transforms]}

    @classmethod
    def from_dict(cls, d: dict) -> "CompositeTransform":
        from ..registration import transform_from_dict

        if d.get("type") != cls.kind:
            raise ValueError(f"d: expected a dict with type 'composite', got type {d.get('type')!r}")
        return cls(tuple(transform_from_dict(t) if t.get("type") != cls.kind else cls.from_dict(t)
                         for t in d["transforms"]))


def load_transform(d: dict):
    """A transform (single or composite) from its ``to_dict()`` form."""
    if d.get("type") == CompositeTransform.kind:
        return CompositeTransform.from_dict(d)
    from ..registration import transform_from_dict

    return transform_from_dict(d)
