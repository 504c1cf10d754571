// Task application into the panel layout (NR output channels per panel,
// packed[panel][k][NR]), the parts shared by the SIMD paths (internal header:
// include only from <isa>/apply.cpp; everything here has internal linkage).
#pragma once

#include <algorithm>
#include <cstddef>

#include "kernels/kernels.h"

namespace spaedge::kernels::panels {
namespace {

// What conv_apply derives from the arguments.
template <int NR>
struct Shape {
  int ic, oc, rank, panels, full, taps, centre;
  size_t K, ktot;  // W' rows, and rows per panel (W' then, fused, B')
  bool merge;      // B'A' is added into the centre-tap rows
  explicit Shape(const ApplyArgs& a)
      : ic(a.g.in_c),
        oc(a.g.out_c),
        rank(std::max(a.rank, 0)),
        panels((a.g.out_c + NR - 1) / NR),
        full(a.g.out_c / NR),
        taps(a.g.kernel * a.g.kernel),
        centre((a.g.kernel / 2) * a.g.kernel + a.g.kernel / 2),
        K(static_cast<size_t>(a.g.kernel) * a.g.kernel * a.g.in_c),
        ktot(K + (a.fused ? static_cast<size_t>(std::max(a.rank, 0)) : 0)),
        merge(a.rank > 0 && !a.fused) {}
};

// Fused mode: B' (scaled) rows K..K+rank-1 of panels [p0, p1). Small, plain loops.
template <int NR>
void fused_b(const ApplyArgs& a, const Shape<NR>& s, int p0, int p1, float* packed) {
  for (int p = p0; p < p1; ++p) {
    float* dst = packed + (static_cast<size_t>(p) * s.ktot + s.K) * NR;
    for (int q = 0; q < s.rank; ++q)
      for (int j = 0; j < NR; ++j) {
        const int o = p * NR + j;
        float v = 0.0f;
        if (o < s.oc) {
          v = a.bt[static_cast<size_t>(q) * s.oc + o];
          if (a.scale) v *= a.scale[o];
        }
        dst[static_cast<size_t>(q) * NR + j] = v;
      }
  }
}

// Fused mode: the A' panels (NR rank columns, in_c rows) after the W' panels.
template <int NR>
void fused_a(const ApplyArgs& a, const Shape<NR>& s, float* packed) {
  float* ap = packed + static_cast<size_t>(s.panels) * s.ktot * NR;
  const int rp = (s.rank + NR - 1) / NR;
  for (int p = 0; p < rp; ++p)
    for (int i = 0; i < s.ic; ++i)
      for (int j = 0; j < NR; ++j) {
        const int q = p * NR + j;
        ap[(static_cast<size_t>(p) * s.ic + i) * NR + j] =
            q < s.rank ? a.a[static_cast<size_t>(q) * s.ic + i] : 0.0f;
      }
}

// The panels [p0, p1) that hold kept outputs [o0, o1).
template <int NR>
struct PanelRange {
  int p0, p1;
  PanelRange(int o0, int o1) : p0(o0 / NR), p1((o1 + NR - 1) / NR) {}
};

// conv_apply's end: the fused mode's B' rows of panels [p0, p1), and
// A' with the last outputs (o1 == out_c).
template <int NR>
void finish_outputs(const ApplyArgs& a, const Shape<NR>& s, const PanelRange<NR>& r, int o1,
                    float* packed) {
  if (a.fused && s.rank > 0) {
    fused_b(a, s, r.p0, r.p1, packed);
    if (o1 == s.oc) fused_a(a, s, packed);
  }
}

}  // namespace
}  // namespace spaedge::kernels::panels
