"""Storage helpers: zarr v3 arrays, OME-Zarr (NGFF 0.5) images and labels, provenance, chunk-aligned
writes, resumable and atomic outputs, and the readers and writers of the files xmodal takes and gives.

These helpers are shared by the out-of-core capabilities (tiled inference, blockwise
segmentation), the pipelines and the command line; each has one home here:

- reading: :func:`read_image` (.npy, TIFF, zarr / OME-Zarr), :func:`read_table` (CSV / TSV /
  Parquet, as a :class:`Table`), :func:`load_points` (points from arrays, centroid tables or label images, as a
  :class:`PointSet` in physical units);
- writing: :func:`atomic_write_bytes` / :func:`atomic_write_text`, :func:`write_json`,
  :func:`write_csv`, :func:`provenance_record` (an output folder's provenance.json),
  :func:`create_array`, :func:`create_ome_zarr_image`, :func:`create_ome_zarr_labels` (an image's
  labels group), :func:`write_region`;
- block iteration: :func:`iter_blocks` (the regions of a block grid over an array).

Conventions:

- A *path* names a zarr store on the local file system. ``"vol.zarr"`` may be an array or a group;
  an OME-Zarr image is a group whose attribute ``"ome"`` holds NGFF 0.5 ``multiscales`` metadata and
  whose full-resolution array is ``"vol.zarr/0"``. xmodal writes zarr v3 / NGFF 0.5; it reads
  NGFF 0.4 too (zarr v2, ``multiscales`` at the top level of the attributes, as ome-zarr-py and
  bioformats2raw write; :mod:`xmodal.io._ngff`).
- Writes are *chunk-aligned*: a region written by one worker covers whole chunks (or reaches the
  array's end), so concurrent writers never touch the same chunk (zarr writes each chunk as one file,
  which the store replaces atomically).
- :class:`BlockLedger` records finished blocks as marker files (written atomically after the block's
  data, with the content digest of the block's input) so that an interrupted run resumes where it
  stopped, and only on the same data.
- Every zarr array xmodal writes carries a completion status (attribute ``"xmodal_output"``);
  :func:`open_array` refuses an unfinished one. Output folders are staged and renamed into place
  (:func:`begin_folder`, :func:`commit_folder`). See :mod:`xmodal.io._resume`.
- Files are written with :func:`atomic_write_bytes` / :func:`atomic_write_text` (temporary file,
  fsync, rename).
"""

from __future__ import annotations

from ._resume import (
    STATUS_KEY,
    IncompleteOutputError,
    begin_folder,
    check_complete,
    check_output_folder,
    combine_digests,
    commit_folder,
    data_digest,
    incomplete_status,
    is_complete,
    job_signature,
    mark_complete,
    mark_incomplete,
    object_token,
    output_status,
    remove_temporaries,
    staging_path,
)
from ._zarr import (
    BlockLedger,
    atomic_write_bytes,
    atomic_write_text,
    create_array,
    create_ome_zarr_image,
    create_ome_zarr_labels,
    is_zarr_array,
    local_store_path,
    ome_image_metadata,
    open_array,
    provenance_attributes,
)
from ._regions import check_chunk_aligned, iter_blocks, write_region
from ._files import Table, jsonable, numeric_column, provenance_record, read_image, read_table, write_csv, write_json
from ._points import PointSet, load_points

__all__ = [
    "STATUS_KEY",
    "IncompleteOutputError",
    "BlockLedger",
    "PointSet",
    "Table",
    "atomic_write_bytes",
    "atomic_write_text",
    "begin_folder",
    "check_chunk_aligned",
    "check_complete",
    "check_output_folder",
    "combine_digests",
    "commit_folder",
    "create_array",
    "create_ome_zarr_image",
    "create_ome_zarr_labels",
    "data_digest",
    "incomplete_status",
    "is_complete",
    "is_zarr_array",
    "iter_blocks",
    "jsonable",
    "job_signature",
    "load_points",
    "local_store_path",
    "mark_complete",
    "mark_incomplete",
    "numeric_column",
    "object_token",
    "ome_image_metadata",
    "open_array",
    "output_status",
    "provenance_attributes",
    "provenance_record",
    "read_image",
    "read_table",
    "remove_temporaries",
    "staging_path",
    "write_csv",
    "write_json",
    "write_region",
]
