// The executor (execute.h).
#include "runtime/execute.h"

#include <cstring>

namespace spaedge {

namespace {

// The int8 executor (docs/int8.md, (d)): the input quantized to u8, each
// conv chain one qconv (residual and ReLU in its epilogue), qmaxpool,
// qglobal_avgpool to float, the float head. Standalone add / relu steps
// never reach here (refused at load, task.cpp).
void execute_int8(Applied& a, const kernels::Parallel* par, const float* input, int batch,
                  float* logits) {
  const Task& t = *a.task;
  const ExecPlan& p = t.exec_plan;
  const kernels::KernelTable& kt = *a.kt;
  auto* arena = reinterpret_cast<uint8_t*>(a.arena.data());
  const auto* packed = reinterpret_cast<const unsigned char*>(a.packed.data());
  float* vec = a.vec.data();
  const size_t H = size_t(t.height), W = size_t(t.width), C = size_t(t.channels);
  const size_t img = H * W * C;
  const size_t classes = size_t(t.classes());
  for (int b = 0; b < batch; ++b) {
    const float* src = input + size_t(b) * img;
    float* x = a.qin.data();
    for (size_t c = 0; c < C; ++c) {
      const float* plane = src + c * H * W;
      for (size_t i = 0; i < H * W; ++i) x[i * C + c] = plane[i];
    }
    kt.quantize(img, x, t.act_scale[0], t.act_zp[0], arena + p.offset[0]);
    for (const Step& s : p.steps) {
      switch (s.kind) {
        case StepKind::Conv: {
          kernels::QEpilogue ep = a.qep[size_t(s.index)];
          ep.residual = s.in2 >= 0 ? arena + p.offset[size_t(s.in2)] : nullptr;
          kt.qconv(s.geom, packed + a.packed_offset[size_t(s.index)],
                   arena + p.offset[size_t(s.in)], arena + p.offset[size_t(s.out)], ep,
                   a.scratch.data(), par);
          break;
        }
        case StepKind::MaxPool:
          kt.qmaxpool(s.h, s.w, s.c, s.pool_k, s.pool_s, s.pool_p, arena + p.offset[size_t(s.in)],
                      arena + p.offset[size_t(s.out)], par);
          break;
        case StepKind::Gap:
          kt.qglobal_avgpool(s.h, s.w, s.c, arena + p.offset[size_t(s.in)],
                             t.act_scale[size_t(s.in)], t.act_zp[size_t(s.in)],
                             vec + a.vec_offset[size_t(s.out)]);
          break;
        case StepKind::Linear: {
          const LinearTask& lt = t.linears[size_t(s.index)];
          kt.linear(lt.in_f, lt.out_f, lt.weight.data(), lt.bias.data(),
                    vec + a.vec_offset[size_t(s.in)], vec + a.vec_offset[size_t(s.out)]);
          break;
        }
        case StepKind::Relu:
        case StepKind::Add:
          break;  // unreachable: an int8 task has none (task.cpp)
      }
    }
    std::memcpy(logits + size_t(b) * classes, vec + a.vec_offset[size_t(p.output)],
                classes * sizeof(float));
  }
}

}  // namespace

void execute(Applied& a, int threads, Workers& pool, const float* input, int batch, float* logits) {
  if (a.int8) {
    const PoolParallel parallel(pool, threads);
    execute_int8(a, parallel.get(), input, batch, logits);
    return;
  }
  const Task& t = *a.task;
  // Convs and pooling share their items with the pool's helpers (claimed
  // as they get a CPU; a helper that never runs costs nothing).
  const PoolParallel parallel(pool, threads);
  const kernels::Parallel* par = parallel.get();
  const ExecPlan& p = t.exec_plan;
  const kernels::KernelTable& kt = *a.kt;
  float* arena = a.arena.data();
  const size_t H = size_t(t.height), W = size_t(t.width), C = size_t(t.channels);
  const size_t img = H * W * C;
  const size_t classes = size_t(t.classes());
  for (int b = 0; b < batch; ++b) {
    const float* src = input + size_t(b) * img;
    float* x = arena + p.offset[0];
    for (size_t c = 0; c < C; ++c) {
      const float* plane = src + c * H * W;
      for (size_t i = 0; i < H * W; ++i) x[i * C + c] = plane[i];
    }
    for (const Step& s : p.steps) {
      const float* in = arena + p.offset[size_t(s.in)];
      float* out = arena + p.offset[size_t(s.out)];
      switch (s.kind) {
        case StepKind::Conv: {
          const ConvTask& ct = t.convs[size_t(s.index)];
          kernels::Epilogue ep;
          ep.bias = ct.bias.data();
          ep.residual = s.in2 >= 0 ? arena + p.offset[size_t(s.in2)] : nullptr;
          ep.relu = s.relu;
          const float* packed = a.packed.data() + a.packed_offset[size_t(s.index)];
          const int r = a.fused_rank[size_t(s.index)];
          if (r > 0)
            kt.conv_lowrank(s.geom, r, packed, in, out, ep, a.scratch.data(), par);
          else
            kt.conv(s.geom, packed, in, out, ep, a.scratch.data(), par);
          break;
        }
        case StepKind::Relu: {
          const size_t n = size_t(s.h) * size_t(s.w) * size_t(s.c);
          for (size_t i = 0; i < n; ++i) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
          break;
        }
        case StepKind::Add: {
          const float* in2 = arena + p.offset[size_t(s.in2)];
          const size_t n = size_t(s.h) * size_t(s.w) * size_t(s.c);
          if (s.relu) {
            for (size_t i = 0; i < n; ++i) {
              float v = in[i] + in2[i];
              out[i] = v > 0.0f ? v : 0.0f;
            }
          } else {
            for (size_t i = 0; i < n; ++i) out[i] = in[i] + in2[i];
          }
          break;
        }
        case StepKind::MaxPool:
          kt.maxpool(s.h, s.w, s.c, s.pool_k, s.pool_s, s.pool_p, in, out, par);
          break;
        case StepKind::Gap:
          kt.global_avgpool(s.h, s.w, s.c, in, out);
          break;
        case StepKind::Linear: {
          const LinearTask& lt = t.linears[size_t(s.index)];
          kt.linear(lt.in_f, lt.out_f, lt.weight.data(), lt.bias.data(), in, out);
          break;
        }
      }
    }
    std::memcpy(logits + size_t(b) * classes, arena + p.offset[size_t(p.output)],
                classes * sizeof(float));
  }
}

}  // namespace spaedge
