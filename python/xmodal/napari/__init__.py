"""napari plugin of xmodal (npe2 manifest ``napari.yaml`` in this folder; ``pip install "xmodal[napari]"``).

- reader: registration folders of ``register_cells`` and xmodal OME-Zarr outputs
  (:mod:`xmodal.napari._reader`);
- widgets: *Register cells*, *Identify with an atlas*, *Segment*, *Review matches*; long runs in
  thread workers with progress and cancel (:mod:`xmodal.napari._jobs`).

Importing this package imports neither napari nor Qt: the widget modules do, when napari loads
them. See ``docs/napari.md``.
"""

from __future__ import annotations

from pathlib import Path

#: The npe2 manifest (the ``napari.manifest`` entry point names it).
MANIFEST = Path(__file__).with_name("napari.yaml")

__all__ = ["MANIFEST"]
