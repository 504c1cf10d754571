// AVX-512 convolution: the shared blocked GEMM (kernels/gemm_conv.h) with an
// 8 x 32 micro-kernel over two adjacent 16-channel panels (the AVX2 packed
// layout, one zmm per panel row). The C tile lives in 16 zmm accumulators; per
// k the kernel loads one row of each panel and broadcasts 8 A values (10 loads
// per 16 FMAs, so the two FMA ports, not the load ports, are the limit). A
// lone panel (odd panel count in a group, the low-rank T panels) runs the
// same kernel 8 x 16.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>

#include "kernels/gemm_conv.h"
#include "kernels/kernels.h"

namespace spaedge::kernels::avx512 {

using gemm::TileArgs;

namespace {

constexpr int kNR = 16;

inline void copy_floats(float* d, const float* s, int n) {
  int i = 0;
  for (; i + 64 <= n; i += 64) {
    _mm512_storeu_ps(d + i, _mm512_loadu_ps(s + i));
    _mm512_storeu_ps(d + i + 16, _mm512_loadu_ps(s + i + 16));
    _mm512_storeu_ps(d + i + 32, _mm512_loadu_ps(s + i + 32));
    _mm512_storeu_ps(d + i + 48, _mm512_loadu_ps(s + i + 48));
  }
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_loadu_ps(s + i));
  for (; i < n; ++i) d[i] = s[i];
}

inline void zero_floats(float* d, int n) {
  const __m512 z = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, z);
  for (; i < n; ++i) d[i] = 0.0f;
}

inline __mmask16 lanes(int n) {
  return n >= 16  ? static_cast<__mmask16>(0xFFFF)
         : n <= 0 ? static_cast<__mmask16>(0)
                  : static_cast<__mmask16>((1u << n) - 1u);
}

// MR x (16 * P) micro-kernel, P = 1 or 2 panels; the second panel's B rows
// are `bstride` floats after the first's. Columns beyond t.nr are masked in
// every C, bias and residual access (the packed B is zero-padded).
template <int MR, int P>
void micro(const TileArgs& t, size_t bstride) {
  __m512 acc[P][MR];
  __mmask16 m[P];
  for (int h = 0; h < P; ++h) m[h] = lanes(t.nr - 16 * h);

  if (t.accumulate) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < P; ++h) acc[h][r] = _mm512_maskz_loadu_ps(m[h], t.c + r * t.ldc + 16 * h);
  } else {
    __m512 bv[P];
#pragma GCC unroll 2
    for (int h = 0; h < P; ++h)
      bv[h] = t.bias ? _mm512_maskz_loadu_ps(m[h], t.bias + 16 * h) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < P; ++h) {
        acc[h][r] = bv[h];
        if (t.res)
          acc[h][r] =
              _mm512_add_ps(acc[h][r], _mm512_maskz_loadu_ps(m[h], t.res + r * t.ldc + 16 * h));
      }
  }

  const float* a[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) a[r] = t.a[r];
  const float* b = t.b;
  const float* pf = t.pf;
  const ptrdiff_t adv = static_cast<ptrdiff_t>(t.seg) + t.jump;
  for (int s = 0; s < t.nseg; ++s) {
    const int seg = t.seg;
    for (int k = 0; k < seg; ++k) {
      _mm_prefetch(reinterpret_cast<const char*>(pf + k * kNR), _MM_HINT_T0);
      __m512 bv[P];
#pragma GCC unroll 2
      for (int h = 0; h < P; ++h) bv[h] = _mm512_loadu_ps(b + k * kNR + h * bstride);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[r][k]);
#pragma GCC unroll 2
        for (int h = 0; h < P; ++h) acc[h][r] = _mm512_fmadd_ps(av, bv[h], acc[h][r]);
      }
    }
    b += seg * kNR;
    pf += seg * kNR;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) a[r] += adv;
  }

  if (t.relu) {
    const __m512 z = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < P; ++h) acc[h][r] = _mm512_max_ps(acc[h][r], z);
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < P; ++h) {
      float* cr = t.c + r * t.ldc + 16 * h;
      if (m[h] == 0xFFFF)
        _mm512_storeu_ps(cr, acc[h][r]);
      else
        _mm512_mask_storeu_ps(cr, m[h], acc[h][r]);
    }
}

template <int P>
void tile_rows(int rows, const TileArgs& t, size_t bstride) {
  switch (rows) {
    case 8:
      micro<8, P>(t, bstride);
      break;
    case 7:
      micro<7, P>(t, bstride);
      break;
    case 6:
      micro<6, P>(t, bstride);
      break;
    case 5:
      micro<5, P>(t, bstride);
      break;
    case 4:
      micro<4, P>(t, bstride);
      break;
    case 3:
      micro<3, P>(t, bstride);
      break;
    case 2:
      micro<2, P>(t, bstride);
      break;
    default:
      micro<1, P>(t, bstride);
      break;
  }
}

struct Avx512 {
  static constexpr int MR = 8;
  static constexpr int NR = kNR;
  static constexpr bool PAIRS = true;  // tile2: two adjacent panels per call
#ifndef SPAEDGE_AVX512_KC              // tuning hooks for the benchmark; not configuration
#define SPAEDGE_AVX512_KC 1600
#endif
#ifndef SPAEDGE_AVX512_MC
#define SPAEDGE_AVX512_MC 120
#endif
#ifndef SPAEDGE_AVX512_NP
#define SPAEDGE_AVX512_NP 8
#endif
  static constexpr int KC_MAX = SPAEDGE_AVX512_KC;
  static constexpr int MC_MAX = SPAEDGE_AVX512_MC;
  static constexpr int PANELS_MAX = SPAEDGE_AVX512_NP;
  static void copy(float* d, const float* s, int n) { copy_floats(d, s, n); }
  static void zero(float* d, int n) { zero_floats(d, n); }
  static void tile(int rows, const TileArgs& t) { tile_rows<1>(rows, t, 0); }
  // Two panels: t.nr in (16, 32], the second panel's B `bstride` floats on.
  static void tile2(int rows, const TileArgs& t, size_t bstride) { tile_rows<2>(rows, t, bstride); }
};

}  // namespace

SPAEDGE_GEMM_CONV_KERNELS(Avx512)

}  // namespace spaedge::kernels::avx512
