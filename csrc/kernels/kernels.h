// spaedge kernels: pure functions over raw buffers, one table per ISA.
//
// Conventions
// - Batch 1, activations NHWC fp32: element (y, x, c) of an H x W x C tensor is
//   at index (y * W + x) * C + c.
// - Conv weights enter packing in OHWI order: w[o][ky][kx][i].
// - The kernels are listed once in kernels.inc, the instruction sets (ISAs)
//   in isas.inc. Every ISA has the same table; only dispatch.cpp chooses
//   which one runs.
// - No allocation inside a kernel call: callers pass scratch sized by
//   `conv_scratch_floats`.
// - Kernels create no threads. A call that may run in parallel takes a
//   `const Parallel*` from its caller (below); null means serial.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace spaedge::kernels {

// Work sharing lent to a kernel by its caller. A kernel cuts its work into
// items whose outputs do not overlap and hands them to `run`; the caller
// decides who runs them (the runtime: its own thread plus helper threads that
// claim items one at a time as they get a CPU, csrc/runtime/workers.h).
//
// run(ctx, n, fn, arg) calls fn(arg, item, worker) exactly once for every
// item in [0, n), in any order and possibly concurrently, and returns when all
// calls have returned (their writes visible to the caller). `worker` is in
// [0, threads) and two calls with the same worker never overlap, so a kernel
// may give each worker its own scratch. fn does not throw.
//
// A null Parallel, a null run or threads <= 1 means serial (items in order on
// the calling thread, worker 0). Results never depend on the split: every
// output element is computed by one item, the same way for any thread count.
//
// Work below `min_work` multiply-adds (or comparable simple operations) per
// call is done by the caller alone: handing a helper a job has a fixed cost
// (publishing, claiming, the uneven end) that a small job cannot earn back,
// so the default (2M) keeps the digits task's tiny convs serial, where
// sharing them made 2 threads slower than 1; and on a busy machine a small
// job is not worth the risk of waiting for a helper preempted mid-item (the
// figures: docs/benchmarks.md, "Measurements behind the kernel and runtime design"). Tests set 0 to
// share everything.
#ifndef SPAEDGE_MIN_SHARED_WORK
#define SPAEDGE_MIN_SHARED_WORK 2097152.0
#endif
constexpr double kMinSharedWork = SPAEDGE_MIN_SHARED_WORK;

struct Parallel {
  int threads = 1;  // workers (>= 1); at most what scratch was sized for
  void* ctx = nullptr;
  void (*run)(void* ctx, int n, void (*fn)(void* arg, int item, int worker), void* arg) = nullptr;
  double min_work = kMinSharedWork;
};

// Workers a call may use through `par` (1 when serial).
inline int parallel_threads(const Parallel* par) {
  return par && par->run && par->threads > 1 ? par->threads : 1;
}

// f(item, worker) for every item in [0, n), through `par`.
template <class F>
void parallel_for(const Parallel* par, int n, F&& f) {
  if (n <= 0) return;
  if (n == 1 || parallel_threads(par) == 1) {
    for (int i = 0; i < n; ++i) f(i, 0);
    return;
  }
  using Fn = typename std::remove_reference<F>::type;
  par->run(
      par->ctx, n, [](void* arg, int item, int worker) { (*static_cast<Fn*>(arg))(item, worker); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

// Whether `work` is worth sharing through `par`.
inline bool worth_sharing(const Parallel* par, double work) {
  return parallel_threads(par) > 1 && work >= par->min_work;
}

// f(begin, end, worker) over [0, n) cut into bands of consecutive units, each
// band at least `min_band_work` (units cost `unit_work` each; a band per unit
// when min_work is 0); serial when the whole is not worth sharing.
template <class F>
void parallel_for_bands(const Parallel* par, int n, double unit_work, double min_band_work, F&& f) {
  if (n <= 0) return;
  const double total = unit_work * n;
  int bands = 1;
  if (worth_sharing(par, total))
    bands = par->min_work > 0.0 && min_band_work > 0.0
                ? static_cast<int>(std::min<double>(n, total / min_band_work))
                : n;
  bands = std::max(bands, 1);
  const int per = (n + bands - 1) / bands;
  bands = (n + per - 1) / per;
  parallel_for(bands > 1 ? par : nullptr, bands,
               [&](int b, int worker) { f(b * per, std::min(n, (b + 1) * per), worker); });
}

// f(oy0, oy1, worker) over maxpool's output rows [0, oh) in bands of at least
// 256K units; a comparison counts as 4 multiply-adds against min_work (the
// pool is memory-bound and its vectors are half as wide as the conv's FMAs).
template <class F>
void maxpool_row_bands(const Parallel* par, int oh, int ow, int c, int kernel, F&& f) {
  constexpr double kBandWork = 262144.0;
  parallel_for_bands(par, oh, 4.0 * ow * c * kernel * kernel, kBandWork, f);
}

// f(o, y0, y1, x0, x1) for every output pixel of a max pool (in row bands,
// as maxpool_row_bands): o is the pixel's c outputs in `out`, rows [y0, y1)
// and columns [x0, x1) its window clipped to the input (the padding is
// -infinity: it never wins). T is the element type (float, or int8's u8).
template <class T, class F>
void maxpool_windows(const Parallel* par, int in_h, int in_w, int c, int kernel, int stride,
                     int pad, T* out, F&& f) {
  const int oh = (in_h + 2 * pad - kernel) / stride + 1;
  const int ow = (in_w + 2 * pad - kernel) / stride + 1;
  maxpool_row_bands(par, oh, ow, c, kernel, [&](int oy0, int oy1, int) {
    for (int oy = oy0; oy < oy1; ++oy) {
      const int y0 = std::max(oy * stride - pad, 0),
                y1 = std::min(oy * stride - pad + kernel, in_h);
      for (int ox = 0; ox < ow; ++ox) {
        const int x0 = std::max(ox * stride - pad, 0);
        const int x1 = std::min(ox * stride - pad + kernel, in_w);
        f(out + (static_cast<size_t>(oy) * ow + ox) * c, y0, y1, x0, x1);
      }
    }
  });
}

struct ConvGeometry {
  int in_h = 0, in_w = 0, in_c = 0;
  int out_c = 0;
  int kernel = 1;  // square kernel size (1, 3, 7, ...)
  int stride = 1;  // same in H and W
  int pad = 0;     // same on all sides
  int out_h() const { return (in_h + 2 * pad - kernel) / stride + 1; }
  int out_w() const { return (in_w + 2 * pad - kernel) / stride + 1; }
};

// Applied to each output element in this order: + bias[c], + residual, ReLU.
struct Epilogue {
  const float* bias = nullptr;      // [out_c] or null
  const float* residual = nullptr;  // NHWC [out_h * out_w * out_c] or null
  bool relu = false;
};

// One conv of a task application, read straight from the base (see conv_apply).
struct ApplyArgs {
  ConvGeometry g;                      // the pruned conv: in_c / out_c are the kept counts
  const float* base = nullptr;         // base weight as the bundle stores it: OIHW base[o][i][t]
  int base_in = 0, base_out = 0;       // channels of the base conv
  const int32_t* out_index = nullptr;  // [out_c] kept base outputs (each < base_out)
  const int32_t* in_index = nullptr;   // [in_c] kept base inputs (each < base_in)
  int rank = 0;                        // Channel-SPA rank, 0 = no adapter
  const float* a = nullptr;            // A' [rank][in_c]
  const float* bt = nullptr;           // B'^T [rank][out_c] (B' transposed)
  bool fused = false;                  // pack for conv_lowrank (B' scaled, A') instead of merging
  const float* scale = nullptr;        // [out_c] folded BatchNorm scale, or null (= 1)
};

// Requantization of an int8 conv (kernels.inc, qconv). With acc the exact
// int32 sum over K of w[o][k] * q_in[k] (the padding is in_zp), for every
// output element (o = its channel, r its residual element):
//   t = fma(float(acc - in_zp * wsum[o]), mul[o], add[o])       (wsum: packed)
//   t = fma(float(r - res_zp), res_mul, t)                       if residual
//   t = min(max(t, relu ? 0 : -out_zp), 255 - out_zp)
//   q_out = rne(t) + out_zp                                      (in [0, 255])
// so mul[o] = in_scale * w_scale[o] / out_scale, add[o] = bias[o] / out_scale,
// res_mul = res_scale / out_scale. fma is fused (one rounding), rne rounds to
// nearest, ties to even; max(t, lo) is t > lo ? t : lo, so a NaN (a bad
// scale) gives the lower bound on every ISA.
struct QEpilogue {
  int in_zp = 0;                      // input zero point [0, 255]
  const float* mul = nullptr;         // [out_c]
  const float* add = nullptr;         // [out_c] or null (= 0)
  int out_zp = 0;                     // output zero point [0, 255]
  const uint8_t* residual = nullptr;  // NHWC u8 like the output, or null
  int res_zp = 0;                     // residual zero point [0, 255]
  float res_mul = 0.0f;               // residual scale / output scale
  bool relu = false;
};

// One conv of an int8 task application, read straight from the int8 base
// (qconv_gather_pack, qconv_dequant_gather; docs/int8.md (c)).
struct QApplyArgs {
  ConvGeometry g;                      // the pruned conv: in_c / out_c are the kept counts
  const int8_t* base = nullptr;        // base weight as the bundle stores it: OIHW base[o][i][t]
  const float* base_scale = nullptr;   // [base_out] its per-output-channel scale
  int base_in = 0, base_out = 0;       // channels of the base conv
  const int32_t* out_index = nullptr;  // [out_c] kept base outputs (each < base_out)
  const int32_t* in_index = nullptr;   // [in_c] kept base inputs (each < base_in)
  const float* scale = nullptr;        // [out_c] folded BatchNorm scale, or null (= 1)
};

// SPLoPA (block-SPA) expansion of one conv (see splopa_expand): n prototypes
// P_p = U_p V_p of bo x bi channels and the conv's block coefficients C_p.
struct SplopaArgs {
  int out_c = 0, in_c = 0;      // kept channels: multiples of bo and bi
  int n = 0, rank = 0;          // prototypes, their rank (>= 1)
  int bo = 1, bi = 1;           // block: output x input channels
  const float* u = nullptr;     // U [n][bo][rank]
  const float* v = nullptr;     // V [n][rank][bi]
  const float* coef = nullptr;  // C [n][out_c / bo][in_c / bi]
};

// The type of every ISA's version of each kernel (kernels.inc): fn::conv is
// the type of avx2::conv, neon::conv, ...
namespace fn {
#define SPAEDGE_KERNEL(name, ret, params) using name = ret params;
#include "kernels/kernels.inc"
#undef SPAEDGE_KERNEL
}  // namespace fn

// One ISA's kernels: a field per line of kernels.inc (which documents each),
// bound by name to that ISA's function (isa_table.inc).
struct KernelTable {
  const char* isa;  // its name in isas.inc: "scalar", "avx2", ...
#define SPAEDGE_KERNEL(name, ret, params) fn::name* name;
#include "kernels/kernels.inc"
#undef SPAEDGE_KERNEL
};

// What every ISA of isas.inc defines in its folder's table.cpp (built only
// when CMake builds the ISA; use them through isas()).
#define SPAEDGE_ISA(name, priority)                                            \
  namespace name {                                                             \
  const KernelTable& table(); /* every kernel of kernels.inc, bound by name */ \
  bool supported();           /* this CPU and OS can run it */                 \
  }
#include "kernels/isas.inc"
#undef SPAEDGE_ISA

// One ISA of isas.inc as this binary and CPU see it.
struct Isa {
  const char* name;
  int priority;
  const KernelTable* table;  // null when this binary does not build it
  bool supported;            // built, and this CPU and OS can run it
};

struct IsaList {
  const Isa* first;
  int count;
  const Isa* begin() const { return first; }
  const Isa* end() const { return first + count; }
};

// Every ISA of isas.inc, in its order (the CPU checked once, thread-safe).
IsaList isas();
// The ISA of isas.inc called `name`, or null.
const Isa* find_isa(const char* name);

// The one dispatch point. Chooses once (thread-safe): the environment variable
// SPAEDGE_ISA=<name in isas.inc> forces a path (an unavailable one is an error
// reported through `dispatch_error`); otherwise the built ISA of highest
// priority that this CPU and OS support (AVX-512F or AVX2+FMA on x86-64,
// NEON on aarch64, scalar elsewhere).
const KernelTable& active();
// Non-empty when SPAEDGE_ISA asked for a path this binary or CPU cannot run;
// active() then falls back to scalar.
const char* dispatch_error();
// True when this CPU can run `table` (e.g. AVX2+FMA present).
bool cpu_supports(const KernelTable& table);

}  // namespace spaedge::kernels
