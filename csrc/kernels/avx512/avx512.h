// AVX-512 kernels (internal; only dispatch.cpp assembles the table). The
// sources of this directory are compiled with -mavx512f -mavx2 -mfma; nothing
// here may be called before dispatch has checked the CPU and the OS (ZMM
// state). Only the convolutions have an AVX-512 version: they use the AVX2
// packed layout (panels of 16 output channels = one zmm), so the table takes
// conv_pack, conv_apply, pools, linear and lowrank_merge from avx2. This header
// is intrinsic-free so dispatch.cpp (built for the baseline ISA) can include it.
#pragma once

#include "kernels/kernels.h"

namespace spaedge::kernels::avx512 {

size_t conv_packed_floats(const ConvGeometry& g);
size_t conv_scratch_floats(const ConvGeometry& g, int threads);
void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,
          const Epilogue& ep, float* scratch, const Parallel* par);

size_t conv_lowrank_packed_floats(const ConvGeometry& g, int rank);
size_t conv_lowrank_scratch_floats(const ConvGeometry& g, int rank, int threads);
void conv_lowrank(const ConvGeometry& g, int rank, const float* packed, const float* in,
                  float* out, const Epilogue& ep, float* scratch, const Parallel* par);

}  // namespace spaedge::kernels::avx512
