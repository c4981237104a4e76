"""Storage helpers: zarr v3 arrays, OME-Zarr (NGFF 0.5) images, provenance, chunk-aligned writes.

These helpers are shared by the out-of-core capabilities (tiled inference, blockwise
segmentation). Conventions:

- A *path* names a zarr v3 store on the local file system. ``"vol.zarr"`` may be an array or a group;
  an OME-Zarr image is a group whose attribute ``"ome"`` holds NGFF 0.5 ``multiscales`` metadata and
  whose full-resolution array is ``"vol.zarr/0"``.
- Writes are *chunk-aligned*: a region written by one worker covers whole chunks (or reaches the
  array's end), so concurrent writers never touch the same chunk (zarr writes each chunk as one file,
  which the store replaces atomically).
- :class:`BlockLedger` records finished blocks as marker files (written atomically after the block's
  data) so that an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from ._zarr import (
    BlockLedger,
    atomic_write_bytes,
    atomic_write_text,
    check_chunk_aligned,
    create_array,
    create_ome_zarr_image,
    is_zarr_array,
    local_store_path,
    ome_image_metadata,
    open_array,
    provenance_attributes,
    write_region,
)

__all__ = [
    "BlockLedger",
    "atomic_write_text",
    "check_chunk_aligned",
    "create_array",
    "create_ome_zarr_image",
    "is_zarr_array",
    "local_store_path",
    "ome_image_metadata",
    "open_array",
    "provenance_attributes",
    "write_region",
]
