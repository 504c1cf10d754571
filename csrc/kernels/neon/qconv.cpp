// NEON int8 convolution without the dot product (ARMv8.0, e.g. Cortex-A72,
// Raspberry Pi 4), and the choice of the dot-product one (qconv_dot.cpp)
// when the CPU has it (getauxval(AT_HWCAP) & HWCAP_ASIMDDP). Both use
// qgemm.h with s8 activations (qsimd.h). Here: smull multiplies 8 s8 pairs
// into exact int16 products (at most 128 * 128), sadalp adds neighbouring
// products into int32 (exact), so each accumulator holds two partial sums
// per channel, added at the end (addp). Tile: 2 rows x 16 channels, 16
// accumulators.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/neon/qsimd.h"
#include "kernels/qapply.h"

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

namespace spaedge::kernels::neon {

namespace {

using qgemm::QTile;

struct QIsa : QNeonBase {
  static constexpr int MR = 2, NT = qgemm::kNR;

  template <int R>
  static void micro(const QTile<Elem>& t) {
    int32x4_t lo[R][4], hi[R][4];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) lo[r][j] = hi[r][j] = vdupq_n_s32(0);
    const int8_t* b = t.b;
    for (int s = 0; s < t.nseg; ++s) {
      const int8_t* p[R];
      for (int r = 0; r < R; ++r) p[r] = t.a[r] + s * t.jump;
      for (int gi = 0; gi < t.groups; ++gi, b += qgemm::kNR * qgemm::kGroup) {
        int8x16_t x[R];
        for (int r = 0; r < R; ++r) {
          int32_t v;
          std::memcpy(&v, p[r] + gi * qgemm::kGroup, sizeof v);
          x[r] = vreinterpretq_s8_s32(vdupq_n_s32(v));
        }
        for (int j = 0; j < 4; ++j) {
          const int8x16_t w = vld1q_s8(b + 16 * j);
          for (int r = 0; r < R; ++r) {
            lo[r][j] = vpadalq_s16(lo[r][j], vmull_s8(vget_low_s8(w), vget_low_s8(x[r])));
            hi[r][j] = vpadalq_s16(hi[r][j], vmull_high_s8(w, x[r]));
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      int32x4_t acc[4];
      for (int j = 0; j < 4; ++j) acc[j] = vpaddq_s32(lo[r][j], hi[r][j]);
      requant16(acc, t, r);
    }
  }

  static void tile(int rows, const QTile<Elem>& t) {
    if (rows == 2)
      micro<2>(t);
    else
      micro<1>(t);
  }
};

bool has_dot() {
#if defined(__linux__)
  static const bool yes = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return yes;
#else
  return false;
#endif
}

// qapply.h's row maximum (max_k |f32(r[k] * s)|, NaN skipped): fmaxnm
// returns the number when one operand is a quiet NaN, and m never is NaN.
struct QApplyOps {
  static float row_max(const float* r, size_t n, float s) {
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0;
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
      m0 = vmaxnmq_f32(vabsq_f32(vmulq_n_f32(vld1q_f32(r + k), s)), m0);
      m1 = vmaxnmq_f32(vabsq_f32(vmulq_n_f32(vld1q_f32(r + k + 4), s)), m1);
    }
    float m = vmaxnmvq_f32(vmaxnmq_f32(m0, m1));
    for (; k < n; ++k) {
      const float a = std::fabs(r[k] * s);
      m = a > m ? a : m;
    }
    return m;
  }
  static int32_t quantize_run(const float* r, int n, int n4, float s, float ws, int8_t* q) {
    return qapply::quantize_run(r, n, n4, s, ws, q);  // GCC vectorises it well here
  }
  static size_t dequant9(const int8_t*, const int32_t*, size_t, float, float*) { return 0; }
};

}  // namespace

#include "kernels/qops.inc"

// qconv_dot.cpp, built with -march=armv8.2-a+dotprod; run only if has_dot().
void qconv_dot(const ConvGeometry& g, const void* packed, const uint8_t* in, uint8_t* out,
               const QEpilogue& ep, void* scratch, const Parallel* par);

void qconv(const ConvGeometry& g, const void* packed, const uint8_t* in, uint8_t* out,
           const QEpilogue& ep, void* scratch, const Parallel* par) {
  if (has_dot())
    qconv_dot(g, packed, in, out, ep, scratch, par);
  else
    qgemm::run<QIsa>(g, packed, in, out, ep, scratch, par);
}

const char* qconv_variant() {
  return has_dot() ? "neondot" : "neon";
}

}  // namespace spaedge::kernels::neon
