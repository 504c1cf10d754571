// NEON int8 convolution with the ARMv8.2 dot product (Cortex-A76,
// Raspberry Pi 5): sdot by lane adds four s8 x s8 products into each int32
// lane, one q register being 4 channels x 4 K rows of a panel group. Tile:
// 4 rows x 16 channels, 16 accumulators; per 4 groups (16 K rows) each row
// loads 16 activations once and the 16 weight vectors are used by lane
// (vdotq_laneq_s32), a tail group at a time. Built with
// -march=armv8.2-a+dotprod (CMakeLists.txt); qconv.cpp runs it only when
// HWCAP_ASIMDDP is set.
#include <cstdint>
#include <cstring>

#include "kernels/neon/qsimd.h"

namespace spaedge::kernels::neon {

namespace {

using qgemm::QTile;

template <int L, int R>
inline void dot_lane(int32x4_t (&c)[R][4], const int8_t* b, const int8x16_t (&x)[R]) {
  const int8x16_t w0 = vld1q_s8(b), w1 = vld1q_s8(b + 16), w2 = vld1q_s8(b + 32),
                  w3 = vld1q_s8(b + 48);
  for (int r = 0; r < R; ++r) {
    c[r][0] = vdotq_laneq_s32(c[r][0], w0, x[r], L);
    c[r][1] = vdotq_laneq_s32(c[r][1], w1, x[r], L);
    c[r][2] = vdotq_laneq_s32(c[r][2], w2, x[r], L);
    c[r][3] = vdotq_laneq_s32(c[r][3], w3, x[r], L);
  }
}

struct QIsa : QNeonBase {
  static constexpr int MR = 4, NT = qgemm::kNR;

  template <int R>
  static void micro(const QTile<Elem>& t) {
    int32x4_t c[R][4];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < 4; ++j) c[r][j] = vdupq_n_s32(0);
    const int8_t* b = t.b;
    constexpr int kStep = qgemm::kNR * qgemm::kGroup;  // bytes per group
    for (int s = 0; s < t.nseg; ++s) {
      const int8_t* p[R];
      for (int r = 0; r < R; ++r) p[r] = t.a[r] + s * t.jump;
      int gi = 0;
      for (; gi + 4 <= t.groups; gi += 4, b += 4 * kStep) {
        int8x16_t x[R];
        for (int r = 0; r < R; ++r) x[r] = vld1q_s8(p[r] + gi * qgemm::kGroup);
        dot_lane<0, R>(c, b, x);
        dot_lane<1, R>(c, b + kStep, x);
        dot_lane<2, R>(c, b + 2 * kStep, x);
        dot_lane<3, R>(c, b + 3 * kStep, x);
      }
      for (; gi < t.groups; ++gi, b += kStep) {
        int8x16_t x[R];
        for (int r = 0; r < R; ++r) {
          int32_t v;
          std::memcpy(&v, p[r] + gi * qgemm::kGroup, sizeof v);
          x[r] = vreinterpretq_s8_s32(vdupq_n_s32(v));
        }
        dot_lane<0, R>(c, b, x);
      }
    }
    for (int r = 0; r < R; ++r) requant16(c[r], t, r);
  }

  static void tile(int rows, const QTile<Elem>& t) {
    switch (rows) {
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

void qconv_dot(const ConvGeometry& g, const void* packed, const uint8_t* in, uint8_t* out,
               const QEpilogue& ep, void* scratch, const Parallel* par) {
  qgemm::run<QIsa>(g, packed, in, out, ep, scratch, par);
}

}  // namespace spaedge::kernels::neon
