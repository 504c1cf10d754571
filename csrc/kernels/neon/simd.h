// NEON helpers shared by the neon/*.cpp sources.
#pragma once

#include <arm_neon.h>

#include "kernels/kernels.h"

namespace spaedge::kernels::neon {

// Loads n (0..4) floats, zero-filling the rest; never reads past p + n.
inline float32x4_t load_n(const float* p, int n) {
  if (n >= 4) return vld1q_f32(p);
  float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < n; ++i) t[i] = p[i];
  return vld1q_f32(t);
}

// Stores the first n (0..4) lanes of v.
inline void store_n(float* p, float32x4_t v, int n) {
  if (n >= 4) {
    vst1q_f32(p, v);
    return;
  }
  if (n >= 2) {
    vst1_f32(p, vget_low_f32(v));
    if (n == 3) vst1q_lane_f32(p + 2, v, 2);
  } else if (n == 1) {
    vst1q_lane_f32(p, v, 0);
  }
}

}  // namespace spaedge::kernels::neon
