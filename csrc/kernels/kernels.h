// spaedge kernels: pure functions over raw buffers, one table per ISA.
//
// Conventions
// - Batch 1, activations NHWC fp32: element (y, x, c) of an H x W x C tensor is
//   at index (y * W + x) * C + c.
// - Conv weights enter packing in OHWI order: w[o][ky][kx][i].
// - Every ISA has the same table; only dispatch.cpp chooses which one runs.
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
// call is done by the caller alone: handing a helper a job costs ~2 us here
// (publishing, claiming, the uneven end), so the default (2M, ~25 us of one
// core) keeps the digits task's tiny convs serial (sharing them made it 15-25%
// slower on 2 threads than on 1), and on a busy machine a small job is not
// worth the risk of waiting for a helper preempted mid-item. Tests set 0 to
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
    par->run(par->ctx, n, [](void* arg, int item, int worker) { (*static_cast<Fn*>(arg))(item, worker); },
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
        bands = par->min_work > 0.0 && min_band_work > 0.0 ? static_cast<int>(std::min<double>(n, total / min_band_work)) : n;
    bands = std::max(bands, 1);
    const int per = (n + bands - 1) / bands;
    bands = (n + per - 1) / per;
    parallel_for(bands > 1 ? par : nullptr, bands, [&](int b, int worker) {
        f(b * per, std::min(n, (b + 1) * per), worker);
    });
}

// f(oy0, oy1, worker) over maxpool's output rows [0, oh) in bands of at least
// 256K units; a comparison counts as 4 multiply-adds against min_work (the
// pool is memory-bound and its vectors are half as wide as the conv's FMAs).
template <class F>
void maxpool_row_bands(const Parallel* par, int oh, int ow, int c, int kernel, F&& f) {
    constexpr double kBandWork = 262144.0;
    parallel_for_bands(par, oh, 4.0 * ow * c * kernel * kernel, kBandWork, f);
}

struct ConvGeometry {
    int in_h = 0, in_w = 0, in_c = 0;
    int out_c = 0;
    int kernel = 1;   // square kernel size (1, 3, 7, ...)
    int stride = 1;   // same in H and W
    int pad = 0;      // same on all sides
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
    ConvGeometry g;                  // the pruned conv: in_c / out_c are the kept counts
    const float* base = nullptr;     // base weight: tap-major HWIO base[t][i][o] (conv_apply)
                                     // or the bundle's OIHW base[o][i][t] (conv_apply_oihw)
    int base_in = 0, base_out = 0;   // channels of the base conv (base row length = base_out)
    const int32_t* out_index = nullptr;  // [out_c] kept base outputs (each < base_out)
    const int32_t* in_index = nullptr;   // [in_c] kept base inputs (each < base_in)
    int rank = 0;                    // Channel-SPA rank, 0 = no adapter
    const float* a = nullptr;        // A' [rank][in_c]
    const float* bt = nullptr;       // B'^T [rank][out_c] (B' transposed)
    bool fused = false;              // pack for conv_lowrank (B' scaled, A') instead of merging
    const float* scale = nullptr;    // [out_c] folded BatchNorm scale, or null (= 1)
};

struct KernelTable {
    const char* isa;  // "scalar", "avx2", "neon"

    // Floats needed by the packed weights of this geometry (the panel layout is
    // private to the ISA; padding of ragged channel counts included).
    size_t (*conv_packed_floats)(const ConvGeometry& g);
    // Pack OHWI weights w[out_c][kernel][kernel][in_c] into `packed`.
    void (*conv_pack)(const ConvGeometry& g, const float* w_ohwi, float* packed);
    // Floats of scratch one conv call needs when run with a Parallel of
    // `threads` workers (also enough for any smaller count).
    size_t (*conv_scratch_floats)(const ConvGeometry& g, int threads);
    // out[out_h][out_w][out_c] = epilogue(conv(in[in_h][in_w][in_c], W)).
    // `out` never aliases `in`; it may alias `ep.residual` exactly (in place).
    // `par`: work sharing (null = serial); par->threads <= the scratch's count.
    void (*conv)(const ConvGeometry& g, const float* packed, const float* in, float* out,
                 const Epilogue& ep, float* scratch, const Parallel* par);

    // Max pooling, padding counts as -infinity. out is out_h x out_w x c.
    void (*maxpool)(int in_h, int in_w, int c, int kernel, int stride, int pad, const float* in,
                    float* out, const Parallel* par);
    // Global average pooling: out[c] = mean over h*w of in.
    void (*global_avgpool)(int h, int w, int c, const float* in, float* out);
    // y[o] = bias[o] + sum_i w[o][i] * x[i]; w row-major [out_f][in_f]; bias may be null.
    void (*linear)(int in_f, int out_f, const float* w, const float* bias, const float* x,
                   float* y);

    // Channel-SPA merge into OHWI weights: for every o, i
    //   w[o][c][c][i] += sum_r b[o][r] * a[r][i],  c = kernel / 2
    // a is [rank][in_c], b is [out_c][rank].
    void (*lowrank_merge)(int out_c, int in_c, int kernel, int rank, const float* a,
                          const float* b, float* w_ohwi);

    // Fused low-rank conv (the unmerged Channel-SPA mode): one pass computing
    //   out = epilogue(conv(in, W') + B' (A' x_centre)),
    // where x_centre is the input pixel under the centre tap (kernel / 2, kernel / 2)
    // of each window (zero in the padding), a is A' [rank][in_c] and b is
    // B' [out_c][rank]. Equivalent to lowrank_merge into W' followed by conv.
    // rank 0 is a plain conv. Same aliasing rules as `conv`.
    size_t (*conv_lowrank_packed_floats)(const ConvGeometry& g, int rank);
    // Pack OHWI W' together with A' and B' into `packed`.
    void (*conv_lowrank_pack)(const ConvGeometry& g, int rank, const float* w_ohwi,
                              const float* a, const float* b, float* packed);
    size_t (*conv_lowrank_scratch_floats)(const ConvGeometry& g, int rank, int threads);
    void (*conv_lowrank)(const ConvGeometry& g, int rank, const float* packed, const float* in,
                         float* out, const Epilogue& ep, float* scratch, const Parallel* par);

    // Task application of one conv in one pass, from the base into the packed
    // layout: rows [k0, k1) of K = kernel^2 * in_c (in (ky, kx, ci) order) of
    //   W'[o][t][i] = (base[t][in_index[i]][out_index[o]]
    //                  + (t == centre && !fused ? sum_r bt[r][o] * a[r][i] : 0)) * scale[o]
    // for every kept o, written where conv_pack (fused: conv_lowrank_pack with
    // B' scaled by `scale`) would put them; padding lanes are written as zeros.
    // The call whose range ends at K (k1 == K) also writes the fused mode's
    // B' and A' parts. Disjoint ranges may run concurrently. The result equals
    // gather + lowrank_merge + scale + conv_pack (conv_lowrank_pack) of this
    // table: bit for bit on scalar and AVX2 (the merge is summed in the same
    // order), within rounding on NEON (whose merge has a non-fused in_c tail).
    void (*conv_apply)(const ApplyArgs& a, int k0, int k1, float* packed);

    // The same values from the base in its stored OIHW layout (a.base is
    // base[o][i][t]), cut by kept outputs instead of rows: every K row (and,
    // fused, every B' row) of kept outputs [o0, o1), o0 a multiple of 16 and
    // o1 a multiple of 16 or out_c; the call with o1 == out_c also writes the
    // fused mode's A' part. It reads the kept outputs' base rows (out_c x
    // base_in x k^2 floats) where conv_apply reads the kept inputs' rows
    // (k^2 x in_c x base_out): the runtime takes whichever reads less (see
    // apply_read_floats). Offsets into the base must fit in int32. Equal to
    // conv_apply of the same table bit for bit.
    void (*conv_apply_oihw)(const ApplyArgs& a, int o0, int o1, float* packed);
};

// Floats of the base one conv's application reads: conv_apply reads every
// kept input's tap-major row whole (k^2 x in_c x base_out), conv_apply_oihw
// every kept output's OIHW row whole (out_c x base_in x k^2). Kept channels
// are scattered, so nearly every cache line of a row they touch is read.
inline size_t apply_read_floats(const ApplyArgs& a, bool oihw) {
    const size_t taps = static_cast<size_t>(a.g.kernel) * a.g.kernel;
    return oihw ? static_cast<size_t>(a.g.out_c) * a.base_in * taps
                : taps * a.g.in_c * static_cast<size_t>(a.base_out);
}

// Tables compiled into this binary (null when the ISA is not built).
const KernelTable& scalar_table();
const KernelTable* avx2_table();
const KernelTable* avx512_table();  // conv/conv_lowrank AVX-512, the rest avx2 (same packed layout)
const KernelTable* neon_table();

// The one dispatch point. Chooses once (thread-safe): the environment variable
// SPAEDGE_ISA=scalar|avx2|neon forces a path (an unavailable one is an error
// reported through `dispatch_error`); otherwise cpuid picks AVX2+FMA on x86-64
// when the CPU and OS support it, NEON on aarch64, scalar elsewhere.
const KernelTable& active();
// Non-empty when SPAEDGE_ISA asked for a path this binary or CPU cannot run;
// active() then falls back to scalar.
const char* dispatch_error();
// True when this CPU can run `table` (e.g. AVX2+FMA present).
bool cpu_supports(const KernelTable& table);

}  // namespace spaedge::kernels
