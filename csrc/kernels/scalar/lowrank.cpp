// Scalar reference Channel-SPA merge: centre tap += B @ A.
#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {

void lowrank_merge(int out_c, int in_c, int kernel, int rank, const float* a, const float* b,
                   float* w_ohwi) {
  const int c = kernel / 2;
  for (int o = 0; o < out_c; ++o) {
    float* w = w_ohwi + ((static_cast<size_t>(o) * kernel + c) * kernel + c) * in_c;
    for (int i = 0; i < in_c; ++i) {
      float acc = 0.0f;
      for (int r = 0; r < rank; ++r)
        acc += b[static_cast<size_t>(o) * rank + r] * a[static_cast<size_t>(r) * in_c + i];
      w[i] += acc;
    }
  }
}

}  // namespace spaedge::kernels::scalar
