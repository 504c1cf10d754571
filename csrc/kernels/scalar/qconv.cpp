// Scalar reference int8 convolution (qgemm.h): plain loops over the packed
// panels, one output pixel x 16 channels per tile, requantized by
// qgemm::requant (QEpilogue's formula). Every ISA is tested against it.
#include <cstdint>

#include "kernels/qapply.h"
#include "kernels/qgemm.h"

namespace spaedge::kernels::scalar {

namespace {

using qgemm::QTile;

struct QIsa {
  using Elem = uint8_t;
  static Elem load(uint8_t q) { return q; }
  static int zp_corr(int in_zp) { return in_zp; }
  static constexpr int MR = 1, NT = qgemm::kNR;

  static void tile(int rows, const QTile<Elem>& t) {
    for (int r = 0; r < rows; ++r) {
      int32_t acc[qgemm::kNR] = {};
      const int8_t* b = t.b;
      for (int s = 0; s < t.nseg; ++s) {
        const uint8_t* a = t.a[r] + s * t.jump;
        for (int gi = 0; gi < t.groups; ++gi, b += qgemm::kNR * qgemm::kGroup)
          for (int j = 0; j < t.nr; ++j)
            for (int q = 0; q < qgemm::kGroup; ++q)
              acc[j] += static_cast<int32_t>(b[j * qgemm::kGroup + q]) * a[gi * qgemm::kGroup + q];
      }
      qgemm::requant_row(acc, t.nr, t.wsum, t.zp, t.mul, t.add, t.res ? t.res + r * t.ldc : nullptr,
                         *t.ep, t.c + r * t.ldc);
    }
  }
};

using QApplyOps = qapply::PlainOps;

}  // namespace

#include "kernels/qops.inc"

void qconv(const ConvGeometry& g, const void* packed, const uint8_t* in, uint8_t* out,
           const QEpilogue& ep, void* scratch, const Parallel* par) {
  qgemm::run<QIsa>(g, packed, in, out, ep, scratch, par);
}

const char* qconv_variant() {
  return "scalar";
}

}  // namespace spaedge::kernels::scalar
