// Scalar reference convolution: direct loops over OHWI weights. Deliberately
// plain; every other ISA is tested against this.
#include <cstring>

#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {

namespace {

// Output channel o at output pixel (oy, ox), before the epilogue: the
// window's inputs times W[o] (OHWI), taps in the padding skipped.
inline float window_dot(const ConvGeometry& g, const float* w_ohwi, const float* in, int oy, int ox,
                        int o) {
  const int k = g.kernel, ic = g.in_c;
  float acc = 0.0f;
  for (int ky = 0; ky < k; ++ky) {
    const int iy = oy * g.stride - g.pad + ky;
    if (iy < 0 || iy >= g.in_h) continue;
    for (int kx = 0; kx < k; ++kx) {
      const int ix = ox * g.stride - g.pad + kx;
      if (ix < 0 || ix >= g.in_w) continue;
      const float* x = in + (static_cast<size_t>(iy) * g.in_w + ix) * ic;
      const float* w = w_ohwi + ((static_cast<size_t>(o) * k + ky) * k + kx) * ic;
      for (int i = 0; i < ic; ++i) acc += w[i] * x[i];
    }
  }
  return acc;
}

// Output element `at` (channel o) after the epilogue. Reads the residual at
// the same index it writes: in-place safe.
inline void finish(const Epilogue& ep, float acc, int o, size_t at, float* out) {
  if (ep.bias) acc += ep.bias[o];
  if (ep.residual) acc += ep.residual[at];
  if (ep.relu && acc < 0.0f) acc = 0.0f;
  out[at] = acc;
}

}  // namespace

size_t conv_packed_floats(const ConvGeometry& g) {
  return static_cast<size_t>(g.out_c) * g.kernel * g.kernel * g.in_c;
}

void conv_pack(const ConvGeometry& g, const float* w_ohwi, float* packed) {
  std::memcpy(packed, w_ohwi, conv_packed_floats(g) * sizeof(float));
}

size_t conv_scratch_floats(const ConvGeometry&, int) {
  return 0;
}

void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,
          const Epilogue& ep, float* /*scratch*/, const Parallel* par) {
  const int oh = g.out_h(), ow = g.out_w(), oc = g.out_c;
  // Output rows are the items.
  parallel_for(par, oh, [&](int oy, int) {
    for (int ox = 0; ox < ow; ++ox) {
      const size_t opix = (static_cast<size_t>(oy) * ow + ox) * oc;
      for (int o = 0; o < oc; ++o)
        finish(ep, window_dot(g, packed, in, oy, ox, o), o, opix + o, out);
    }
  });
}

// Fused low-rank conv, reference: packed = [W' OHWI][A' rank x in_c][B' out_c x rank].
// Per output element the low-rank term sum_r B'[o][r] * (A'[r] . x_centre) is
// recomputed from scratch: slow, obviously right, no buffers.
size_t conv_lowrank_packed_floats(const ConvGeometry& g, int rank) {
  return conv_packed_floats(g) + static_cast<size_t>(rank) * g.in_c +
         static_cast<size_t>(g.out_c) * rank;
}

void conv_lowrank_pack(const ConvGeometry& g, int rank, const float* w_ohwi, const float* a,
                       const float* b, float* packed) {
  const size_t wn = conv_packed_floats(g), an = static_cast<size_t>(rank) * g.in_c;
  std::memcpy(packed, w_ohwi, wn * sizeof(float));
  if (an) std::memcpy(packed + wn, a, an * sizeof(float));
  if (rank) std::memcpy(packed + wn + an, b, static_cast<size_t>(g.out_c) * rank * sizeof(float));
}

size_t conv_lowrank_scratch_floats(const ConvGeometry&, int, int) {
  return 0;
}

void conv_lowrank(const ConvGeometry& g, int rank, const float* packed, const float* in, float* out,
                  const Epilogue& ep, float* /*scratch*/, const Parallel* par) {
  const int oh = g.out_h(), ow = g.out_w();
  const int ic = g.in_c, oc = g.out_c, c = g.kernel / 2;
  const float* a = packed + conv_packed_floats(g);
  const float* b = a + static_cast<size_t>(rank) * ic;
  // Output rows are the items.
  parallel_for(par, oh, [&](int oy, int) {
    for (int ox = 0; ox < ow; ++ox) {
      const size_t opix = (static_cast<size_t>(oy) * ow + ox) * oc;
      const int cy = oy * g.stride - g.pad + c, cx = ox * g.stride - g.pad + c;
      const bool centre_in = cy >= 0 && cy < g.in_h && cx >= 0 && cx < g.in_w;
      const float* xc = centre_in ? in + (static_cast<size_t>(cy) * g.in_w + cx) * ic : nullptr;
      for (int o = 0; o < oc; ++o) {
        float acc = window_dot(g, packed, in, oy, ox, o);
        if (xc) {
          for (int r = 0; r < rank; ++r) {
            float t = 0.0f;
            for (int i = 0; i < ic; ++i) t += a[static_cast<size_t>(r) * ic + i] * xc[i];
            acc += b[static_cast<size_t>(o) * rank + r] * t;
          }
        }
        finish(ep, acc, o, opix + o, out);
      }
    }
  });
}

}  // namespace spaedge::kernels::scalar
