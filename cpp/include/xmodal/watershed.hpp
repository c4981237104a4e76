// xmodal: seeded watershed (priority flood) on a height map, used to grow superpixels from seeds.
//
// Meyer's flooding: all seed voxels enter a priority queue; the voxel of lowest height is taken
// (ties: first queued first, seeds queued in raster order) and gives its label to every unlabelled
// neighbour (4-neighbourhood in 2D, 6 in 3D) inside the mask, which is queued with its own height.
// Single-threaded and deterministic.
#pragma once

#include <array>
#include <cstdint>

namespace xmodal::watershed {

using Shape = std::array<int64_t, 3>;  // (Z, Y, X); 2D inputs use Z = 1

// `labels` (n voxels) holds the seeds (nonzero) on input and the result on output; voxels outside
// `mask` (may be null: everything inside) keep label 0, and so do voxels that no seed reaches.
// Returns the number of voxels labelled by flooding (seeds excluded). n must be < 2^32.
uint64_t seeded_watershed(const float* height, const Shape& shape, const uint8_t* mask,
                          uint32_t* labels);
uint64_t seeded_watershed(const double* height, const Shape& shape, const uint8_t* mask,
                          uint32_t* labels);

}  // namespace xmodal::watershed
