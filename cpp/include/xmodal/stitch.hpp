// xmodal: stitching of network tiles into an output volume (halo tiled inference).
//
// Volumes are C-contiguous float32 buffers of shape (C, Z, Y, X); 2-D data uses Z = 1. A tile of
// shape (C, tz, ty, tx) is placed with its voxel (0, 0, 0) at `offset` (z, y, x) of the output;
// parts of the tile outside the output are ignored. All functions parallelise over output rows
// with OpenMP (xmodal::num_threads()); every output element is written by one thread in a fixed
// order, so results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace xmodal::stitch {

// out[c, offset + p] = tile[c, src_lo + p] for p in [0, extent) (crop mode: a plain copy).
// out_shape / tile_shape: 4 values (C, Z, Y, X); src_lo, dst_lo, extent: 3 values (z, y, x).
void paste(float* out, const std::int64_t* out_shape, const float* tile, const std::int64_t* tile_shape,
           const std::int64_t* src_lo, const std::int64_t* dst_lo, const std::int64_t* extent);

// Weighted accumulation (blend modes): for every tile voxel p inside the output,
//   w = wz[pz] * wy[py] * wx[px],  out[c, offset + p] += w * tile[c, p],  wsum[offset + p] += w.
// wz, wy, wx hold tz, ty, tx separable weights; wsum has shape (Z, Y, X).
void accumulate(float* out, float* wsum, const std::int64_t* out_shape, const float* tile,
                const std::int64_t* tile_shape, const std::int64_t* offset, const float* wz,
                const float* wy, const float* wx);

// out[c, v] /= wsum[v] where wsum[v] > 0 (voxels no tile covered stay as they are).
void normalize(float* out, const float* wsum, const std::int64_t* out_shape);

}  // namespace xmodal::stitch
