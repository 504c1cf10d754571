// NEON task application: gather + centre-tap merge + BN scale straight into
// the conv panels (8 output channels per panel, packed[panel][k][8]), from
// either layout of the base (kernels.h: conv_apply, conv_apply_oihw).
//
// Tap-major (conv_apply): packed row k = (t, i') of a panel is 8 floats of
// base row (t, in_index[i']) at the panel's out_index, two q-register loads
// when those outputs are consecutive, else lane loads. Rows go in blocks of 8
// (those 8 base rows stay in L1 while every panel takes its lanes), so the
// base is read row after row.
//
// OIHW (conv_apply_oihw): a panel's 8 kept outputs are 8 base rows
// base[o][i][t]; for each kept input i' the k^2 taps of the 8 rows are
// (usually) one cache line per row, so the lane loads of rows (t, i') hit L1.
//
// The ragged last panel is done lane by lane with the same arithmetic (fma,
// add, mul).
#include <algorithm>
#include <cmath>

#include "kernels/neon/simd.h"

namespace spaedge::kernels::neon {

namespace {
constexpr int kNR = 8;    // must match conv.cpp
constexpr int kRows = 8;  // tap-major: packed rows per block

inline float32x4_t gather4(const float* s, const int32_t* idx) {
    float32x4_t v = vdupq_n_f32(0.0f);
    v = vld1q_lane_f32(s + idx[0], v, 0);
    v = vld1q_lane_f32(s + idx[1], v, 1);
    v = vld1q_lane_f32(s + idx[2], v, 2);
    v = vld1q_lane_f32(s + idx[3], v, 3);
    return v;
}

// What both entries derive from the arguments.
struct Shape {
    int ic, oc, rank, panels, full, taps, centre;
    size_t K, ktot;
    bool merge;
    explicit Shape(const ApplyArgs& a)
        : ic(a.g.in_c),
          oc(a.g.out_c),
          rank(std::max(a.rank, 0)),
          panels((a.g.out_c + kNR - 1) / kNR),
          full(a.g.out_c / kNR),
          taps(a.g.kernel * a.g.kernel),
          centre((a.g.kernel / 2) * a.g.kernel + a.g.kernel / 2),
          K(static_cast<size_t>(a.g.kernel) * a.g.kernel * a.g.in_c),
          ktot(K + (a.fused ? static_cast<size_t>(std::max(a.rank, 0)) : 0)),
          merge(a.rank > 0 && !a.fused) {}
};

// A full panel's row: v (8 base values of outputs o0..o0+7) + B'A' at input
// column `col` when `centre`, times the BN scale, stored at dst.
inline void full_row(const ApplyArgs& a, const Shape& s, int o0, int col, bool centre, float32x4_t v0,
                     float32x4_t v1, float* dst) {
    if (centre) {
        float32x4_t d0 = vdupq_n_f32(0.0f), d1 = d0;
        for (int q = 0; q < s.rank; ++q) {
            const float av = a.a[static_cast<size_t>(q) * s.ic + col];
            const float* bq = a.bt + static_cast<size_t>(q) * s.oc + o0;
            d0 = vfmaq_n_f32(d0, vld1q_f32(bq), av);
            d1 = vfmaq_n_f32(d1, vld1q_f32(bq + 4), av);
        }
        v0 = vaddq_f32(v0, d0);
        v1 = vaddq_f32(v1, d1);
    }
    const float32x4_t ones = vdupq_n_f32(1.0f);
    vst1q_f32(dst, vmulq_f32(v0, a.scale ? vld1q_f32(a.scale + o0) : ones));
    vst1q_f32(dst + 4, vmulq_f32(v1, a.scale ? vld1q_f32(a.scale + o0 + 4) : ones));
}

// One lane (output o) of the ragged last panel.
inline float ragged_value(const ApplyArgs& a, const Shape& s, int o, int col, bool centre, float v) {
    if (centre) {
        float d = 0.0f;
        for (int q = 0; q < s.rank; ++q)
            d = std::fma(a.bt[static_cast<size_t>(q) * s.oc + o], a.a[static_cast<size_t>(q) * s.ic + col], d);
        v += d;
    }
    return a.scale ? v * a.scale[o] : v;
}

// Fused mode: B' (scaled) rows K..K+rank-1 of panels [p0, p1).
void fused_b(const ApplyArgs& a, const Shape& s, int p0, int p1, float* packed) {
    for (int p = p0; p < p1; ++p) {
        float* dst = packed + (static_cast<size_t>(p) * s.ktot + s.K) * kNR;
        for (int q = 0; q < s.rank; ++q)
            for (int j = 0; j < kNR; ++j) {
                const int o = p * kNR + j;
                float v = 0.0f;
                if (o < s.oc) {
                    v = a.bt[static_cast<size_t>(q) * s.oc + o];
                    if (a.scale) v *= a.scale[o];
                }
                dst[static_cast<size_t>(q) * kNR + j] = v;
            }
    }
}

// Fused mode: the A' panels (kNR rank columns, in_c rows) after the W' panels.
void fused_a(const ApplyArgs& a, const Shape& s, float* packed) {
    float* ap = packed + static_cast<size_t>(s.panels) * s.ktot * kNR;
    const int rp = (s.rank + kNR - 1) / kNR;
    for (int p = 0; p < rp; ++p)
        for (int i = 0; i < s.ic; ++i)
            for (int j = 0; j < kNR; ++j) {
                const int q = p * kNR + j;
                ap[(static_cast<size_t>(p) * s.ic + i) * kNR + j] =
                    q < s.rank ? a.a[static_cast<size_t>(q) * s.ic + i] : 0.0f;
            }
}

}  // namespace

void conv_apply(const ApplyArgs& a, int k0, int k1, float* packed) {
    const Shape s(a);
    const size_t tap_floats = static_cast<size_t>(a.base_in) * a.base_out;
    for (int kb = k0; kb < k1; kb += kRows) {
        const int n = std::min(kRows, k1 - kb);
        const float* src[kRows];
        int col[kRows];
        bool cen[kRows];
        for (int r = 0; r < n; ++r) {
            const int k = kb + r, t = k / s.ic, i = k % s.ic;
            src[r] = a.base + static_cast<size_t>(t) * tap_floats +
                     static_cast<size_t>(a.in_index[i]) * a.base_out;
            col[r] = i;
            cen[r] = s.merge && t == s.centre;
        }
        for (int p = 0; p < s.full; ++p) {
            const int o0 = p * kNR;
            float* dst = packed + (static_cast<size_t>(p) * s.ktot + kb) * kNR;
            const int32_t* oi = a.out_index + o0;
            const bool contiguous = oi[kNR - 1] - oi[0] == kNR - 1;
            for (int r = 0; r < n; ++r) {
                float32x4_t v0, v1;
                if (contiguous) {
                    v0 = vld1q_f32(src[r] + oi[0]);
                    v1 = vld1q_f32(src[r] + oi[0] + 4);
                } else {
                    v0 = gather4(src[r], oi);
                    v1 = gather4(src[r], oi + 4);
                }
                full_row(a, s, o0, col[r], cen[r], v0, v1, dst + r * kNR);
            }
        }
        if (s.full < s.panels) {
            // Ragged last panel: lanes >= nv are zero.
            const int o0 = s.full * kNR, nv = s.oc - o0;
            float* dst = packed + (static_cast<size_t>(s.full) * s.ktot + kb) * kNR;
            for (int r = 0; r < n; ++r) {
                for (int j = 0; j < kNR; ++j) dst[r * kNR + j] = 0.0f;
                for (int j = 0; j < nv; ++j)
                    dst[r * kNR + j] = ragged_value(a, s, o0 + j, col[r], cen[r], src[r][a.out_index[o0 + j]]);
            }
        }
    }
    if (a.fused && s.rank > 0 && static_cast<size_t>(k1) == s.K) {
        fused_b(a, s, 0, s.panels, packed);
        fused_a(a, s, packed);
    }
}

void conv_apply_oihw(const ApplyArgs& a, int o0, int o1, float* packed) {
    const Shape s(a);
    const int p0 = o0 / kNR, p1 = (o1 + kNR - 1) / kNR;
    const size_t orow = static_cast<size_t>(a.base_in) * s.taps;  // floats per base output row
    for (int p = p0; p < p1; ++p) {
        const int ob = p * kNR, nv = std::min(kNR, s.oc - ob);
        int32_t off[kNR];  // each lane's base row
        for (int j = 0; j < kNR; ++j)
            off[j] = j < nv ? static_cast<int32_t>(static_cast<size_t>(a.out_index[ob + j]) * orow) : 0;
        float* dst = packed + static_cast<size_t>(p) * s.ktot * kNR;
        for (int i = 0; i < s.ic; ++i) {
            const float* src = a.base + static_cast<size_t>(a.in_index[i]) * s.taps;
            for (int t = 0; t < s.taps; ++t) {
                float* d = dst + (static_cast<size_t>(t) * s.ic + i) * kNR;
                const bool centre = s.merge && t == s.centre;
                if (nv == kNR) {
                    full_row(a, s, ob, i, centre, gather4(src + t, off), gather4(src + t, off + 4), d);
                } else {
                    for (int j = 0; j < kNR; ++j) d[j] = 0.0f;
                    for (int j = 0; j < nv; ++j) d[j] = ragged_value(a, s, ob + j, i, centre, src[t + off[j]]);
                }
            }
        }
    }
    if (a.fused && s.rank > 0) {
        fused_b(a, s, p0, p1, packed);
        if (o1 == s.oc) fused_a(a, s, packed);
    }
}

}  // namespace spaedge::kernels::neon
