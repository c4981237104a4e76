"""The writers of the pipelines' outputs live in :mod:`xmodal.io` (``write_json``, ``write_csv``,
``provenance_record``, ``atomic_write_bytes`` / ``atomic_write_text``); this module keeps their old
import path working (``provenance`` is :func:`xmodal.io.provenance_record`)."""

from ..io import atomic_write_bytes, atomic_write_text, write_csv, write_json
from ..io import provenance_record as provenance

__all__ = ["atomic_write_bytes", "atomic_write_text", "provenance", "write_csv", "write_json"]
