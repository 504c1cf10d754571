// NEON convolution: the shared blocked GEMM (kernels/gemm_conv.h) with an
// 8 x 8 micro-kernel. The C tile lives in 16 q-register accumulators; per four
// k steps the kernel loads four consecutive A values of each of the 8 rows as
// one vector and multiplies them by lane (vfmaq_laneq_f32) into four 8-wide
// rows of the packed weights: 16 loads per 64 FMAs, 26 of the 32 registers.
// Weights are packed in panels of 8 output channels.
#include <algorithm>
#include <cstddef>

#include "kernels/gemm_conv.h"
#include "kernels/neon/simd.h"

namespace spaedge::kernels::neon {

using gemm::TileArgs;

namespace {

constexpr int kNR = 8;

// Copies for the zero-bordered input copy (whole input rows).
inline void copy_floats(float* d, const float* s, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    vst1q_f32(d + i, vld1q_f32(s + i));
    vst1q_f32(d + i + 4, vld1q_f32(s + i + 4));
  }
  for (; i + 4 <= n; i += 4) vst1q_f32(d + i, vld1q_f32(s + i));
  for (; i < n; ++i) d[i] = s[i];
}

inline void zero_floats(float* d, int n) {
  const float32x4_t z = vdupq_n_f32(0.0f);
  int i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(d + i, z);
  for (; i < n; ++i) d[i] = 0.0f;
}

template <int MR>
void micro(const TileArgs& t) {
  float32x4_t c0[MR], c1[MR];
  const int n0 = std::min(t.nr, 4), n1 = std::max(t.nr - 4, 0);

  if (t.accumulate) {
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {
      const float* cr = t.c + r * t.ldc;
      c0[r] = load_n(cr, n0);
      c1[r] = load_n(cr + 4, n1);
    }
  } else {
    float32x4_t b0 = vdupq_n_f32(0.0f), b1 = b0;
    if (t.bias) {
      b0 = load_n(t.bias, n0);
      b1 = load_n(t.bias + 4, n1);
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {
      c0[r] = b0;
      c1[r] = b1;
    }
    if (t.res) {
      _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {
        const float* rr = t.res + r * t.ldc;
        c0[r] = vaddq_f32(c0[r], load_n(rr, n0));
        c1[r] = vaddq_f32(c1[r], load_n(rr + 4, n1));
      }
    }
  }

  // Edge tiles with 1-3 rows would be limited by the FMA chains (4 lane
  // FMAs in a row into one accumulator), so they spread the four lanes over
  // U partial sums.
  constexpr int U = MR == 1 ? 4 : MR <= 3 ? 2 : 1;
  float32x4_t p0[U][MR], p1[U][MR];
  _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {
    p0[0][r] = c0[r];
    p1[0][r] = c1[r];
    _Pragma("GCC unroll 4") for (int u = 1; u < U; ++u) p0[u][r] = p1[u][r] = vdupq_n_f32(0.0f);
  }
  const float* a[MR];
  _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) a[r] = t.a[r];
  const float* b = t.b;
  const float* pf = t.pf;
  for (int s = 0; s < t.nseg; ++s) {
    int k = 0;
    for (; k + 4 <= t.seg; k += 4, b += 4 * kNR, pf += 4 * kNR) {
      __builtin_prefetch(pf);
      __builtin_prefetch(pf + 16);
      float32x4_t av[MR];
      _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) av[r] = vld1q_f32(a[r] + k);
#define SPAEDGE_LANE(j)                                               \
  {                                                                   \
    const float32x4_t b0 = vld1q_f32(b + (j) * kNR);                  \
    const float32x4_t b1 = vld1q_f32(b + (j) * kNR + 4);              \
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {            \
      p0[(j) % U][r] = vfmaq_laneq_f32(p0[(j) % U][r], b0, av[r], j); \
      p1[(j) % U][r] = vfmaq_laneq_f32(p1[(j) % U][r], b1, av[r], j); \
    }                                                                 \
  }
      SPAEDGE_LANE(0)
      SPAEDGE_LANE(1)
      SPAEDGE_LANE(2)
      SPAEDGE_LANE(3)
#undef SPAEDGE_LANE
    }
    for (; k < t.seg; ++k, b += kNR, pf += kNR) {
      const float32x4_t b0 = vld1q_f32(b);
      const float32x4_t b1 = vld1q_f32(b + 4);
      _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {
        const float32x4_t av = vld1q_dup_f32(a[r] + k);
        p0[0][r] = vfmaq_f32(p0[0][r], b0, av);
        p1[0][r] = vfmaq_f32(p1[0][r], b1, av);
      }
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) a[r] += t.seg + t.jump;
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {
    c0[r] = p0[0][r];
    c1[r] = p1[0][r];
    _Pragma("GCC unroll 4") for (int u = 1; u < U; ++u) {
      c0[r] = vaddq_f32(c0[r], p0[u][r]);
      c1[r] = vaddq_f32(c1[r], p1[u][r]);
    }
  }

  if (t.relu) {
    const float32x4_t z = vdupq_n_f32(0.0f);
    _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {
      c0[r] = vmaxq_f32(c0[r], z);
      c1[r] = vmaxq_f32(c1[r], z);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < MR; ++r) {
    float* cr = t.c + r * t.ldc;
    if (t.nr == kNR) {
      vst1q_f32(cr, c0[r]);
      vst1q_f32(cr + 4, c1[r]);
    } else {
      store_n(cr, c0[r], n0);
      store_n(cr + 4, c1[r], n1);
    }
  }
}

struct Neon {
  static constexpr int MR = 8;
  static constexpr int NR = kNR;
  static constexpr int KC_MAX = 256;  // 8 KB B micro-panel in L1
  static constexpr int MC_MAX = 96;   // 96 KB A block in L2
  static constexpr int PANELS_MAX = 16;
  static void copy(float* d, const float* s, int n) { copy_floats(d, s, n); }
  static void zero(float* d, int n) { zero_floats(d, n); }
  static void tile(int rows, const TileArgs& t) {
    switch (rows) {
      case 8:
        micro<8>(t);
        break;
      case 7:
        micro<7>(t);
        break;
      case 6:
        micro<6>(t);
        break;
      case 5:
        micro<5>(t);
        break;
      case 4:
        micro<4>(t);
        break;
      case 3:
        micro<3>(t);
        break;
      case 2:
        micro<2>(t);
        break;
      default:
        micro<1>(t);
        break;
    }
  }
};

}  // namespace

SPAEDGE_GEMM_CONV_KERNELS(Neon)
SPAEDGE_GEMM_PACK_KERNELS(Neon)

}  // namespace spaedge::kernels::neon
