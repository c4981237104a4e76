#include "xmodal/stitch.hpp"

#include <algorithm>
#include <string>

#include "xmodal/common.hpp"

namespace xmodal::stitch {
namespace {

void check_shape(const std::int64_t* s, const char* name) {
    for (int i = 0; i < 4; ++i)
        require(s[i] >= 0, std::string(name) + ": negative extent on axis " + std::to_string(i));
}

}  // namespace

void paste(float* out, const std::int64_t* out_shape, const float* tile, const std::int64_t* tile_shape,
           const std::int64_t* src_lo, const std::int64_t* dst_lo, const std::int64_t* extent) {
    check_shape(out_shape, "out");
    check_shape(tile_shape, "tile");
    require(out_shape[0] == tile_shape[0], "paste: out and tile must have the same channel count");
    for (int a = 0; a < 3; ++a) {
        require(extent[a] >= 0 && src_lo[a] >= 0 && dst_lo[a] >= 0, "paste: negative offset or extent");
        require(src_lo[a] + extent[a] <= tile_shape[a + 1], "paste: source region outside the tile");
        require(dst_lo[a] + extent[a] <= out_shape[a + 1], "paste: destination region outside the output");
    }
    const std::int64_t C = out_shape[0], ez = extent[0], ey = extent[1], ex = extent[2];
    if (C == 0 || ez == 0 || ey == 0 || ex == 0) return;
    const std::int64_t OZ = out_shape[1], OY = out_shape[2], OX = out_shape[3];
    const std::int64_t TZ = tile_shape[1], TY = tile_shape[2], TX = tile_shape[3];
    const std::int64_t rows = C * ez;
#pragma omp parallel for schedule(static) num_threads(xmodal::num_threads())
    for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t c = r / ez, z = r % ez;
        for (std::int64_t y = 0; y < ey; ++y) {
            const float* src = tile + ((c * TZ + src_lo[0] + z) * TY + src_lo[1] + y) * TX + src_lo[2];
            float* dst = out + ((c * OZ + dst_lo[0] + z) * OY + dst_lo[1] + y) * OX + dst_lo[2];
            std::copy(src, src + ex, dst);
        }
    }
}

void accumulate(float* out, float* wsum, const std::int64_t* out_shape, const float* tile,
                const std::int64_t* tile_shape, const std::int64_t* offset, const float* wz,
                const float* wy, const float* wx) {
    check_shape(out_shape, "out");
    check_shape(tile_shape, "tile");
    require(out_shape[0] == tile_shape[0], "accumulate: out and tile must have the same channel count");
    std::int64_t lo[3], hi[3];
    for (int a = 0; a < 3; ++a) {
        lo[a] = std::max<std::int64_t>(0, -offset[a]);
        hi[a] = std::min<std::int64_t>(tile_shape[a + 1], out_shape[a + 1] - offset[a]);
        if (hi[a] <= lo[a]) return;  // no overlap with the output
    }
    const std::int64_t C = out_shape[0];
    const std::int64_t OZ = out_shape[1], OY = out_shape[2], OX = out_shape[3];
    const std::int64_t TZ = tile_shape[1], TY = tile_shape[2], TX = tile_shape[3];
    const std::int64_t nz = hi[0] - lo[0];
    // weight sum: rows of (z) in parallel
#pragma omp parallel for schedule(static) num_threads(xmodal::num_threads())
    for (std::int64_t i = 0; i < nz; ++i) {
        const std::int64_t z = lo[0] + i;
        for (std::int64_t y = lo[1]; y < hi[1]; ++y) {
            const float wzy = wz[z] * wy[y];
            float* ws = wsum + ((offset[0] + z) * OY + offset[1] + y) * OX + offset[2];
            for (std::int64_t x = lo[2]; x < hi[2]; ++x) ws[x] += wzy * wx[x];
        }
    }
    const std::int64_t rows = C * nz;
#pragma omp parallel for schedule(static) num_threads(xmodal::num_threads())
    for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t c = r / nz, z = lo[0] + r % nz;
        for (std::int64_t y = lo[1]; y < hi[1]; ++y) {
            const float wzy = wz[z] * wy[y];
            const float* src = tile + ((c * TZ + z) * TY + y) * TX;
            float* dst = out + ((c * OZ + offset[0] + z) * OY + offset[1] + y) * OX + offset[2];
            for (std::int64_t x = lo[2]; x < hi[2]; ++x) dst[x] += (wzy * wx[x]) * src[x];
        }
    }
}

void normalize(float* out, const float* wsum, const std::int64_t* out_shape) {
    check_shape(out_shape, "out");
    const std::int64_t C = out_shape[0];
    const std::int64_t nvox = out_shape[1] * out_shape[2] * out_shape[3];
    const std::int64_t rows = C * out_shape[1];
    const std::int64_t row = out_shape[2] * out_shape[3];
#pragma omp parallel for schedule(static) num_threads(xmodal::num_threads())
    for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t c = r / out_shape[1], z = r % out_shape[1];
        float* o = out + c * nvox + z * row;
        const float* w = wsum + z * row;
        for (std::int64_t i = 0; i < row; ++i)
            if (w[i] > 0.0f) o[i] /= w[i];
    }
}

}  // namespace xmodal::stitch
