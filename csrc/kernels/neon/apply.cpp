// NEON task application: gather + centre-tap merge + BN scale straight into
// the conv panels (8 output channels per panel, packed[panel][k][8]).
//
// The base is tap-major HWIO (base[t][i][o]): packed row k = (t, i') of a
// panel is 8 floats of base row (t, in_index[i']) at the panel's out_index,
// two q-register loads when those outputs are consecutive, else lane loads.
// Rows go in blocks of 8 (those 8 base rows stay in L1 while every panel
// takes its lanes), so the base is read row after row. The ragged last panel
// is done separately, lane by lane with the same arithmetic (fma, add, mul).
#include <algorithm>
#include <cmath>

#include "kernels/neon/simd.h"

namespace spaedge::kernels::neon {

namespace {
constexpr int kNR = 8;    // must match conv.cpp
constexpr int kRows = 8;  // packed rows per block

inline float32x4_t gather4(const float* s, const int32_t* idx) {
    float32x4_t v = vdupq_n_f32(0.0f);
    v = vld1q_lane_f32(s + idx[0], v, 0);
    v = vld1q_lane_f32(s + idx[1], v, 1);
    v = vld1q_lane_f32(s + idx[2], v, 2);
    v = vld1q_lane_f32(s + idx[3], v, 3);
    return v;
}
}  // namespace

void conv_apply(const ApplyArgs& a, int k0, int k1, float* packed) {
    const ConvGeometry& g = a.g;
    const int ic = g.in_c, oc = g.out_c;
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * ic;
    const int rank = std::max(a.rank, 0);
    const size_t ktot = K + (a.fused ? static_cast<size_t>(rank) : 0);
    const int panels = (oc + kNR - 1) / kNR;
    const int full = oc / kNR;
    const int centre = (g.kernel / 2) * g.kernel + g.kernel / 2;
    const size_t tap_floats = static_cast<size_t>(a.base_in) * a.base_out;
    const bool merge = rank > 0 && !a.fused;
    const float32x4_t ones = vdupq_n_f32(1.0f);

    for (int kb = k0; kb < k1; kb += kRows) {
        const int n = std::min(kRows, k1 - kb);
        const float* src[kRows];
        int col[kRows];
        bool cen[kRows];
        for (int r = 0; r < n; ++r) {
            const int k = kb + r, t = k / ic, i = k % ic;
            src[r] = a.base + static_cast<size_t>(t) * tap_floats +
                     static_cast<size_t>(a.in_index[i]) * a.base_out;
            col[r] = i;
            cen[r] = merge && t == centre;
        }
        for (int p = 0; p < full; ++p) {
            const int o0 = p * kNR;
            float* dst = packed + (static_cast<size_t>(p) * ktot + kb) * kNR;
            const int32_t* oi = a.out_index + o0;
            const bool contiguous = oi[kNR - 1] - oi[0] == kNR - 1;
            const float32x4_t s0 = a.scale ? vld1q_f32(a.scale + o0) : ones;
            const float32x4_t s1 = a.scale ? vld1q_f32(a.scale + o0 + 4) : ones;
            for (int r = 0; r < n; ++r) {
                float32x4_t v0, v1;
                if (contiguous) {
                    v0 = vld1q_f32(src[r] + oi[0]);
                    v1 = vld1q_f32(src[r] + oi[0] + 4);
                } else {
                    v0 = gather4(src[r], oi);
                    v1 = gather4(src[r], oi + 4);
                }
                if (cen[r]) {
                    float32x4_t d0 = vdupq_n_f32(0.0f), d1 = d0;
                    for (int q = 0; q < rank; ++q) {
                        const float av = a.a[static_cast<size_t>(q) * ic + col[r]];
                        const float* bq = a.bt + static_cast<size_t>(q) * oc + o0;
                        d0 = vfmaq_n_f32(d0, vld1q_f32(bq), av);
                        d1 = vfmaq_n_f32(d1, vld1q_f32(bq + 4), av);
                    }
                    v0 = vaddq_f32(v0, d0);
                    v1 = vaddq_f32(v1, d1);
                }
                vst1q_f32(dst + r * kNR, vmulq_f32(v0, s0));
                vst1q_f32(dst + r * kNR + 4, vmulq_f32(v1, s1));
            }
        }
        if (full < panels) {
            // Ragged last panel: lanes >= nv are zero.
            const int o0 = full * kNR, nv = oc - o0;
            float* dst = packed + (static_cast<size_t>(full) * ktot + kb) * kNR;
            for (int r = 0; r < n; ++r) {
                for (int j = 0; j < kNR; ++j) dst[r * kNR + j] = 0.0f;
                for (int j = 0; j < nv; ++j) {
                    const int o = o0 + j;
                    float v = src[r][a.out_index[o]];
                    if (cen[r]) {
                        float d = 0.0f;
                        for (int q = 0; q < rank; ++q)
                            d = std::fma(a.bt[static_cast<size_t>(q) * oc + o],
                                         a.a[static_cast<size_t>(q) * ic + col[r]], d);
                        v += d;
                    }
                    dst[r * kNR + j] = a.scale ? v * a.scale[o] : v;
                }
            }
        }
    }

    if (a.fused && rank > 0 && static_cast<size_t>(k1) == K) {
        for (int p = 0; p < panels; ++p) {
            float* dst = packed + (static_cast<size_t>(p) * ktot + K) * kNR;
            for (int q = 0; q < rank; ++q)
                for (int j = 0; j < kNR; ++j) {
                    const int o = p * kNR + j;
                    float v = 0.0f;
                    if (o < oc) {
                        v = a.bt[static_cast<size_t>(q) * oc + o];
                        if (a.scale) v *= a.scale[o];
                    }
                    dst[static_cast<size_t>(q) * kNR + j] = v;
                }
        }
        float* ap = packed + static_cast<size_t>(panels) * ktot * kNR;
        const int rp = (rank + kNR - 1) / kNR;
        for (int p = 0; p < rp; ++p)
            for (int i = 0; i < ic; ++i)
                for (int j = 0; j < kNR; ++j) {
                    const int q = p * kNR + j;
                    ap[(static_cast<size_t>(p) * ic + i) * kNR + j] =
                        q < rank ? a.a[static_cast<size_t>(q) * ic + i] : 0.0f;
                }
    }
}

}  // namespace spaedge::kernels::neon
