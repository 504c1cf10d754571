// AVX2 task application: gather + centre-tap merge + BN scale straight into
// the conv panels (16 output channels per panel, packed[panel][k][16]).
//
// The base is tap-major HWIO (base[t][i][o]), so packed row k = (t, i') of a
// panel is 16 floats of one base row (t, in_index[i']) at the panel's
// out_index: one contiguous load when those outputs are consecutive, two
// vgatherdps otherwise. Rows go in blocks of 8 (the 8 base rows stay in L1
// while every panel takes its lanes from them), so the base is read row after
// row and each panel receives 8 consecutive 64-byte rows. The ragged last
// panel uses masked loads/gathers (zeros in the padding lanes); no per-lane
// checks anywhere.
//
// Measured on the development machine (a 2-vCPU Intel Xeon KVM guest;
// ResNet-18 at 30%, one thread): the switch is bound by data movement (kept
// base rows in, packed panels out); replacing the gathers by plain loads
// (wrong values, for timing) saved only ~10%, and vectors built with
// vinsertps from scalar loads were slower than vgatherdps.
#include <algorithm>
#include <cstdint>

#include "kernels/avx2/simd.h"

namespace spaedge::kernels::avx2 {

namespace {
constexpr int kNR = 16;  // must match conv.cpp
constexpr int kRows = 8;  // packed rows per block
}  // namespace

namespace {
// Streaming (non-temporal) stores when the destination is 32-byte aligned:
// the packed weights are written once per switch and read by the next run,
// so they need not be read for ownership first (a third of the traffic).
template <bool kStream>
inline void put(float* p, __m256 v) {
    if (kStream)
        _mm256_stream_ps(p, v);
    else
        _mm256_storeu_ps(p, v);
}
}  // namespace

template <bool kStream>
static void apply_rows(const ApplyArgs& a, int k0, int k1, float* packed) {
    const ConvGeometry& g = a.g;
    const int ic = g.in_c, oc = g.out_c;
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * ic;
    const int rank = std::max(a.rank, 0);
    const size_t ktot = K + (a.fused ? static_cast<size_t>(rank) : 0);
    const int panels = (oc + kNR - 1) / kNR;
    const int centre = (g.kernel / 2) * g.kernel + g.kernel / 2;
    const size_t tap_floats = static_cast<size_t>(a.base_in) * a.base_out;
    const bool merge = rank > 0 && !a.fused;
    const __m256 ones = _mm256_set1_ps(1.0f);

    for (int kb = k0; kb < k1; kb += kRows) {
        const int n = std::min(kRows, k1 - kb);
        const float* src[kRows];
        int col[kRows];   // i' of each row (column of A')
        bool cen[kRows];  // row is at the centre tap and gets B'A'
        for (int r = 0; r < n; ++r) {
            const int k = kb + r, t = k / ic, i = k % ic;
            src[r] = a.base + static_cast<size_t>(t) * tap_floats +
                     static_cast<size_t>(a.in_index[i]) * a.base_out;
            col[r] = i;
            cen[r] = merge && t == centre;
        }
        // The next block's rows, pulled into L1 a panel's window at a time
        // (short rows train the hardware prefetchers too late; ~8% here).
        const float* nxt[kRows];
        const int nn = std::max(0, std::min(kRows, k1 - kb - kRows));
        for (int r = 0; r < nn; ++r) {
            const int k = kb + kRows + r, t = k / ic, i = k % ic;
            nxt[r] = a.base + static_cast<size_t>(t) * tap_floats +
                     static_cast<size_t>(a.in_index[i]) * a.base_out;
        }
        for (int p = 0; p < panels; ++p) {
            const int o0 = p * kNR, nv = std::min(kNR, oc - o0);
            float* dst = packed + (static_cast<size_t>(p) * ktot + kb) * kNR;
            if (nv == kNR) {
                const int32_t* oi = a.out_index + o0;
                const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(oi));
                const __m256i i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(oi + 8));
                const bool contiguous = oi[kNR - 1] - oi[0] == kNR - 1;  // indices strictly increase
                for (int r = 0; r < nn; ++r) {
                    _mm_prefetch(reinterpret_cast<const char*>(nxt[r] + oi[0]), _MM_HINT_T0);
                    _mm_prefetch(reinterpret_cast<const char*>(nxt[r] + oi[kNR - 1]), _MM_HINT_T0);
                }
                const __m256 s0 = a.scale ? _mm256_loadu_ps(a.scale + o0) : ones;
                const __m256 s1 = a.scale ? _mm256_loadu_ps(a.scale + o0 + 8) : ones;
                for (int r = 0; r < n; ++r) {
                    __m256 v0, v1;
                    if (contiguous) {
                        v0 = _mm256_loadu_ps(src[r] + oi[0]);
                        v1 = _mm256_loadu_ps(src[r] + oi[0] + 8);
                    } else {
                        v0 = _mm256_i32gather_ps(src[r], i0, 4);
                        v1 = _mm256_i32gather_ps(src[r], i1, 4);
                    }
                    if (cen[r]) {
                        __m256 d0 = _mm256_setzero_ps(), d1 = d0;
                        for (int q = 0; q < rank; ++q) {
                            const __m256 av = _mm256_broadcast_ss(a.a + static_cast<size_t>(q) * ic + col[r]);
                            const float* bq = a.bt + static_cast<size_t>(q) * oc + o0;
                            d0 = _mm256_fmadd_ps(_mm256_loadu_ps(bq), av, d0);
                            d1 = _mm256_fmadd_ps(_mm256_loadu_ps(bq + 8), av, d1);
                        }
                        v0 = _mm256_add_ps(v0, d0);
                        v1 = _mm256_add_ps(v1, d1);
                    }
                    put<kStream>(dst + r * kNR, _mm256_mul_ps(v0, s0));
                    put<kStream>(dst + r * kNR + 8, _mm256_mul_ps(v1, s1));
                }
            } else {
                // Ragged last panel: lanes >= nv are masked off and come out +0.
                const __m256i m0 = tail_mask(std::min(nv, 8)), m1 = tail_mask(std::max(nv - 8, 0));
                const __m256 f0 = _mm256_castsi256_ps(m0), f1 = _mm256_castsi256_ps(m1);
                const int32_t* oi = a.out_index + o0;
                const __m256i i0 = _mm256_maskload_epi32(oi, m0);
                const __m256i i1 = _mm256_maskload_epi32(oi + 8, m1);
                const __m256 s0 = a.scale ? _mm256_maskload_ps(a.scale + o0, m0) : ones;
                const __m256 s1 = a.scale ? _mm256_maskload_ps(a.scale + o0 + 8, m1) : ones;
                const __m256 z = _mm256_setzero_ps();
                for (int r = 0; r < n; ++r) {
                    __m256 v0 = _mm256_mask_i32gather_ps(z, src[r], i0, f0, 4);
                    __m256 v1 = _mm256_mask_i32gather_ps(z, src[r], i1, f1, 4);
                    if (cen[r]) {
                        __m256 d0 = _mm256_setzero_ps(), d1 = d0;
                        for (int q = 0; q < rank; ++q) {
                            const __m256 av = _mm256_broadcast_ss(a.a + static_cast<size_t>(q) * ic + col[r]);
                            const float* bq = a.bt + static_cast<size_t>(q) * oc + o0;
                            d0 = _mm256_fmadd_ps(_mm256_maskload_ps(bq, m0), av, d0);
                            d1 = _mm256_fmadd_ps(_mm256_maskload_ps(bq + 8, m1), av, d1);
                        }
                        v0 = _mm256_add_ps(v0, d0);
                        v1 = _mm256_add_ps(v1, d1);
                    }
                    put<kStream>(dst + r * kNR, _mm256_mul_ps(v0, s0));
                    put<kStream>(dst + r * kNR + 8, _mm256_mul_ps(v1, s1));
                }
            }
        }
    }

}

void conv_apply(const ApplyArgs& a, int k0, int k1, float* packed) {
    if ((reinterpret_cast<uintptr_t>(packed) & 31) == 0) {
        apply_rows<true>(a, k0, k1, packed);
        _mm_sfence();  // streaming stores are weakly ordered: publish them
    } else {
        apply_rows<false>(a, k0, k1, packed);
    }
    const ConvGeometry& g = a.g;
    const int ic = g.in_c, oc = g.out_c;
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * ic;
    const int rank = std::max(a.rank, 0);
    const size_t ktot = K + (a.fused ? static_cast<size_t>(rank) : 0);
    const int panels = (oc + kNR - 1) / kNR;
    if (a.fused && rank > 0 && static_cast<size_t>(k1) == K) {
        // B' (scaled) rows K..K+rank-1 of every panel, then the A' panels
        // (kNR rank columns, in_c rows): small, plain loops.
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

}  // namespace spaedge::kernels::avx2
