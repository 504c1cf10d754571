// AVX2 task application: gather + centre-tap merge + BN scale straight into
// the conv panels (16 output channels per panel, packed[panel][k][16]), from
// the base's stored OIHW weights (kernels.h: conv_apply).
//
// A panel's 16 kept outputs are 16 base rows
// base[o][i][t]; for each kept input i' the k^2 taps of all 16 rows sit in
// (usually) one cache line per row, and the 16 rows are read front to back,
// a few inputs ahead prefetched. A full panel takes the taps 8 at a time:
// 8 contiguous floats loaded from each row and transposed in registers (8x8,
// 24 shuffles), so a 3x3 conv needs 2 gathers per input instead of 18; the
// taps left over (k^2 mod 8) and the ragged last panel are gathered, with
// masks (zeros in the padding lanes); no per-lane checks anywhere. Both
// ways read the same floats and do the same arithmetic: the same bits.
//
// The switch is bound by data movement (kept base rows in, packed panels
// out), not by the gathers: plain loads in their place gained little, and
// vectors built with vinsertps from scalar loads lost to vgatherdps
// (docs/benchmarks.md, "Measurements behind the kernel and runtime design"). bench_switch times it
// against the bare data movement.
#include <algorithm>
#include <cstdint>

#include "kernels/apply_panels.h"
#include "kernels/avx2/simd.h"

namespace spaedge::kernels::avx2 {

namespace {

constexpr int kNR = 16;    // must match conv.cpp
constexpr int kAhead = 4;  // inputs prefetched ahead

using Shape = panels::Shape<kNR>;

// One panel's lanes: masks (all set for a full panel) and BN scale.
struct Lanes {
  bool full;
  __m256i m0, m1;
  __m256 f0, f1, s0, s1;
  Lanes(const ApplyArgs& a, const Shape& s, int p) {
    const int o0 = p * kNR, nv = std::min(kNR, s.oc - o0);
    full = nv == kNR;
    m0 = tail_mask(std::min(nv, 8));
    m1 = tail_mask(std::max(nv - 8, 0));
    f0 = _mm256_castsi256_ps(m0);
    f1 = _mm256_castsi256_ps(m1);
    const __m256 ones = _mm256_set1_ps(1.0f);
    if (full) {
      s0 = a.scale ? _mm256_loadu_ps(a.scale + o0) : ones;
      s1 = a.scale ? _mm256_loadu_ps(a.scale + o0 + 8) : ones;
    } else {
      s0 = a.scale ? _mm256_maskload_ps(a.scale + o0, m0) : ones;
      s1 = a.scale ? _mm256_maskload_ps(a.scale + o0 + 8, m1) : ones;
    }
  }
};

// v += B'A' for input column `col` on the panel's lanes (padding lanes add 0).
inline void add_merge(const ApplyArgs& a, const Shape& s, int o0, int col, const Lanes& l,
                      __m256& v0, __m256& v1) {
  __m256 d0 = _mm256_setzero_ps(), d1 = d0;
  for (int q = 0; q < s.rank; ++q) {
    const __m256 av = _mm256_broadcast_ss(a.a + static_cast<size_t>(q) * s.ic + col);
    const float* bq = a.bt + static_cast<size_t>(q) * s.oc + o0;
    const __m256 b0 = l.full ? _mm256_loadu_ps(bq) : _mm256_maskload_ps(bq, l.m0);
    const __m256 b1 = l.full ? _mm256_loadu_ps(bq + 8) : _mm256_maskload_ps(bq + 8, l.m1);
    d0 = _mm256_fmadd_ps(b0, av, d0);
    d1 = _mm256_fmadd_ps(b1, av, d1);
  }
  v0 = _mm256_add_ps(v0, d0);
  v1 = _mm256_add_ps(v1, d1);
}

// v += B'A' for input column `col` on 8 full lanes from output o (B'^T row offset).
inline __m256 add_merge8(const ApplyArgs& a, const Shape& s, int o, int col, __m256 v) {
  __m256 d = _mm256_setzero_ps();
  for (int q = 0; q < s.rank; ++q) {
    const __m256 av = _mm256_broadcast_ss(a.a + static_cast<size_t>(q) * s.ic + col);
    d = _mm256_fmadd_ps(_mm256_loadu_ps(a.bt + static_cast<size_t>(q) * s.oc + o), av, d);
  }
  return _mm256_add_ps(v, d);
}

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

template <bool kStream>
void apply_oihw(const ApplyArgs& a, const Shape& s, int p0, int p1, float* packed) {
  const size_t orow = static_cast<size_t>(a.base_in) * s.taps;  // floats per base output row
  const __m256 z = _mm256_setzero_ps();
  for (int p = p0; p < p1; ++p) {
    const int o0 = p * kNR, nv = std::min(kNR, s.oc - o0);
    const Lanes l(a, s, p);
    alignas(32) int32_t off[kNR];  // each lane's base row; padding lanes are masked off
    for (int j = 0; j < kNR; ++j)
      off[j] = j < nv ? static_cast<int32_t>(static_cast<size_t>(a.out_index[o0 + j]) * orow) : 0;
    const __m256i i0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(off));
    const __m256i i1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(off + 8));
    float* dst = packed + static_cast<size_t>(p) * s.ktot * kNR;
    for (int i = 0; i < s.ic; ++i) {
      const float* src = a.base + static_cast<size_t>(a.in_index[i]) * s.taps;
      if (i + kAhead < s.ic) {
        const float* ahead = a.base + static_cast<size_t>(a.in_index[i + kAhead]) * s.taps;
        for (int j = 0; j < nv; ++j)
          _mm_prefetch(reinterpret_cast<const char*>(ahead + off[j]), _MM_HINT_T0);
      }
      int t = 0;
      if (l.full) {
        // Taps 8 at a time: each half panel's 8 rows loaded and transposed.
        for (; t + 8 <= s.taps; t += 8)
          for (int h = 0; h < 2; ++h) {
            __m256 r[8];
            for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + off[8 * h + j] + t);
            transpose8(r);
            const __m256 sc = h ? l.s1 : l.s0;
            for (int q = 0; q < 8; ++q) {
              __m256 v = r[q];
              if (s.merge && t + q == s.centre) v = add_merge8(a, s, o0 + 8 * h, i, v);
              put<kStream>(dst + (static_cast<size_t>(t + q) * s.ic + i) * kNR + 8 * h,
                           _mm256_mul_ps(v, sc));
            }
          }
      }
      for (; t < s.taps; ++t) {
        __m256 v0, v1;
        if (l.full) {
          v0 = _mm256_i32gather_ps(src + t, i0, 4);
          v1 = _mm256_i32gather_ps(src + t, i1, 4);
        } else {
          v0 = _mm256_mask_i32gather_ps(z, src + t, i0, l.f0, 4);
          v1 = _mm256_mask_i32gather_ps(z, src + t, i1, l.f1, 4);
        }
        if (s.merge && t == s.centre) add_merge(a, s, o0, i, l, v0, v1);
        float* d = dst + (static_cast<size_t>(t) * s.ic + i) * kNR;
        put<kStream>(d, _mm256_mul_ps(v0, l.s0));
        put<kStream>(d + 8, _mm256_mul_ps(v1, l.s1));
      }
    }
  }
}

bool aligned32(const float* p) {
  return (reinterpret_cast<uintptr_t>(p) & 31) == 0;
}

}  // namespace

void conv_apply(const ApplyArgs& a, int o0, int o1, float* packed) {
  const Shape s(a);
  const panels::PanelRange<kNR> r(o0, o1);
  if (aligned32(packed)) {
    apply_oihw<true>(a, s, r.p0, r.p1, packed);
    _mm_sfence();
  } else {
    apply_oihw<false>(a, s, r.p0, r.p1, packed);
  }
  panels::finish_outputs(a, s, r, o1, packed);
}

}  // namespace spaedge::kernels::avx2
