// Scalar reference kernels (internal; only dispatch.cpp assembles the table).
#pragma once

#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {

size_t conv_packed_floats(const ConvGeometry& g);
void conv_pack(const ConvGeometry& g, const float* w_ohwi, float* packed);
size_t conv_scratch_floats(const ConvGeometry& g, int threads);
void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,
          const Epilogue& ep, float* scratch, const Parallel* par);

size_t conv_lowrank_packed_floats(const ConvGeometry& g, int rank);
void conv_lowrank_pack(const ConvGeometry& g, int rank, const float* w_ohwi, const float* a,
                       const float* b, float* packed);
size_t conv_lowrank_scratch_floats(const ConvGeometry& g, int rank, int threads);
void conv_lowrank(const ConvGeometry& g, int rank, const float* packed, const float* in,
                  float* out, const Epilogue& ep, float* scratch, const Parallel* par);

void maxpool(int in_h, int in_w, int c, int kernel, int stride, int pad, const float* in,
             float* out, const Parallel* par);
void global_avgpool(int h, int w, int c, const float* in, float* out);

void linear(int in_f, int out_f, const float* w, const float* bias, const float* x, float* y);

void lowrank_merge(int out_c, int in_c, int kernel, int rank, const float* a, const float* b,
                   float* w_ohwi);

void conv_apply(const ApplyArgs& a, int k0, int k1, float* packed);
void conv_apply_oihw(const ApplyArgs& a, int o0, int o1, float* packed);

}  // namespace spaedge::kernels::scalar
