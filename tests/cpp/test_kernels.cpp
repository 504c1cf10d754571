// The one shared kernel tester: every kernel table compiled into this binary
// that the CPU can run is checked against the scalar reference over awkward
// shapes. Plain C++ with check.h; prints each failing case and returns
// nonzero on any failure.
//
// Tolerance (per case): max |got - ref| <= 1e-4 * (1 + max |ref|).
// Infinities (maxpool windows that lie entirely in the padding) must match
// exactly; NaN anywhere is a failure.
//
// Buffers are surrounded by canary floats; a kernel writing outside its
// output, packed-weight or scratch region, or writing to its input, fails.
//
// Threads: conv, conv_lowrank and maxpool also run with 2 and 3 workers
// through kernels::Parallel, lent by the runtime's pool (Workers) and by a
// serial stand-in that runs the items in a shuffled order on random workers;
// their outputs must equal the serial run's bit for bit.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "check.h"
#include "kernels/kernels.h"
#include "runtime/workers.h"

namespace k = spaedge::kernels;

namespace {

constexpr float kTolerance = 1e-4f;

// Deterministic xorshift generator: same data on every platform.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<uint32_t>(s >> 32);
  }
  float uniform() { return static_cast<float>(next()) / 4294967296.0f * 2.0f - 1.0f; }
};

std::vector<float> random_vec(size_t n, Rng& rng) {
  std::vector<float> v(n);
  for (auto& x : v) x = rng.uniform();
  return v;
}

// ---- work sharing: how a kernel call gets its workers ----------------------

struct Sharing {
  int threads;    // workers
  bool shuffled;  // serial stand-in: items in a random order, random workers
  std::string name() const {
    return "threads=" + std::to_string(threads) + (shuffled ? " shuffled" : "");
  }
};
const Sharing kSerial{1, false};
// Every non-serial way a call is checked against the serial one.
const Sharing kShared[] = {{2, false}, {3, false}, {3, true}};

spaedge::Workers& pool() {
  static spaedge::Workers p;
  return p;
}

struct ShuffledCtx {
  int threads;
  uint64_t seed;
};

void shuffled_run(void* ctx, int n, void (*fn)(void*, int, int), void* arg) {
  ShuffledCtx& s = *static_cast<ShuffledCtx*>(ctx);
  Rng rng(s.seed++);
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  for (int i = n - 1; i > 0; --i) std::swap(order[size_t(i)], order[rng.next() % uint32_t(i + 1)]);
  for (int i : order) fn(arg, i, int(rng.next() % uint32_t(s.threads)));
}

// Calls f(const k::Parallel*) with the Parallel that `sh` describes.
template <class F>
void with_sharing(const Sharing& sh, F&& f) {
  if (sh.threads == 1 && !sh.shuffled) {
    f(static_cast<const k::Parallel*>(nullptr));
  } else if (sh.shuffled) {
    ShuffledCtx ctx{sh.threads, 7};
    k::Parallel par;
    par.threads = sh.threads;
    par.ctx = &ctx;
    par.run = shuffled_run;
    par.min_work = 0.0;  // share even the smallest case
    f(static_cast<const k::Parallel*>(&par));
  } else {
    const spaedge::PoolParallel par(pool(), sh.threads, 0.0);  // share even the smallest case
    f(par.get());
  }
}

// A buffer with canaries on both sides.
constexpr size_t kGuard = 64;
constexpr float kCanary = 1.2345678e30f;

struct Guarded {
  std::vector<float> buf;
  size_t n;
  explicit Guarded(size_t count, float fill = 0.0f) : buf(count + 2 * kGuard, kCanary), n(count) {
    for (size_t i = 0; i < n; ++i) buf[kGuard + i] = fill;
  }
  float* data() { return buf.data() + kGuard; }
  const float* data() const { return buf.data() + kGuard; }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i)
      if (buf[i] != kCanary || buf[kGuard + n + i] != kCanary) return false;
    return true;
  }
};

struct Compare {
  float max_err = 0.0f;
  float max_ref = 0.0f;
  bool bad_special = false;  // NaN, or mismatched infinities
  size_t worst = 0;
};

Compare compare(const float* ref, const float* got, size_t n) {
  Compare c;
  for (size_t i = 0; i < n; ++i) {
    const float r = ref[i], g = got[i];
    if (std::isnan(r) || std::isnan(g)) {
      c.bad_special = true;
      c.worst = i;
      continue;
    }
    if (std::isinf(r) || std::isinf(g)) {
      if (r != g) {
        c.bad_special = true;
        c.worst = i;
      }
      continue;
    }
    c.max_ref = std::fmax(c.max_ref, std::fabs(r));
    const float e = std::fabs(r - g);
    if (e > c.max_err) {
      c.max_err = e;
      c.worst = i;
    }
  }
  return c;
}

bool within(const Compare& c) {
  return !c.bad_special && c.max_err <= kTolerance * (1.0f + c.max_ref);
}

// One check (check.h); a failed comparison also prints its errors.
void report(bool ok, const std::string& what, const Compare* c = nullptr) {
  if (ok || !c) {
    tcheck::check(ok, what);
    return;
  }
  char detail[192];
  std::snprintf(detail, sizeof detail, ": max_err=%.3g tol=%.3g (max|ref|=%.3g, worst index %zu%s)",
                c->max_err, kTolerance * (1.0f + c->max_ref), c->max_ref, c->worst,
                c->bad_special ? ", NaN/inf mismatch" : "");
  tcheck::check(false, what + detail);
}

// A kernel's guarded output against the reference `want`: nothing written
// outside `got` (else one failure naming `region`), then within the tolerance.
void check_output(const std::string& what, const Guarded& got, const float* want,
                  const char* region) {
  if (!got.guards_intact()) {
    report(false, what + ": wrote outside " + region);
    return;
  }
  const Compare c = compare(want, got.data(), got.n);
  report(within(c), what, &c);
}

std::string geom_str(const k::ConvGeometry& g) {
  char b[160];
  std::snprintf(b, sizeof b, "%dx%dx%d->%d k%d s%d p%d (out %dx%d)", g.in_h, g.in_w, g.in_c,
                g.out_c, g.kernel, g.stride, g.pad, g.out_h(), g.out_w());
  return b;
}

// ---------------------------------------------------------------- conv ------

enum EpVariant {
  EP_NONE,
  EP_BIAS,
  EP_BIAS_RELU,
  EP_RESIDUAL_RELU,          // residual in a separate buffer, no bias
  EP_BIAS_RESIDUAL_INPLACE,  // out aliases residual, + ReLU
  EP_RESIDUAL_INPLACE,       // out aliases residual, no bias, no ReLU
  EP_COUNT
};

const char* ep_name(int v) {
  switch (v) {
    case EP_NONE:
      return "plain";
    case EP_BIAS:
      return "bias";
    case EP_BIAS_RELU:
      return "bias+relu";
    case EP_RESIDUAL_RELU:
      return "residual+relu";
    case EP_BIAS_RESIDUAL_INPLACE:
      return "bias+residual(in place)+relu";
    case EP_RESIDUAL_INPLACE:
      return "residual(in place)";
  }
  return "?";
}

struct ConvData {
  k::ConvGeometry g;
  std::vector<float> w, in, bias, residual;
  int rank = -1;              // >= 0: run the fused low-rank entry with la, lb
  std::vector<float> la, lb;  // A' [rank][in_c], B' [out_c][rank]
};

// A plain conv case of geometry g: weights, input, bias and residual drawn
// from rng in that order.
ConvData random_conv(const k::ConvGeometry& g, Rng& rng) {
  ConvData d;
  d.g = g;
  const size_t out_n = static_cast<size_t>(g.out_h()) * g.out_w() * g.out_c;
  d.w = random_vec(static_cast<size_t>(g.out_c) * g.kernel * g.kernel * g.in_c, rng);
  d.in = random_vec(static_cast<size_t>(g.in_h) * g.in_w * g.in_c, rng);
  d.bias = random_vec(g.out_c, rng);
  d.residual = random_vec(out_n, rng);
  return d;
}

// Runs table `t` on the case (conv, or conv_lowrank when d.rank >= 0);
// returns the output (guards checked inside).
bool run_conv(const k::KernelTable& t, const ConvData& d, int ep_variant, const Sharing& sh,
              std::vector<float>& result, std::string& problem) {
  const int threads = sh.threads;
  const k::ConvGeometry& g = d.g;
  const size_t out_n = static_cast<size_t>(g.out_h()) * g.out_w() * g.out_c;
  const bool lr = d.rank >= 0;

  Guarded packed(lr ? t.conv_lowrank_packed_floats(g, d.rank) : t.conv_packed_floats(g));
  if (lr)
    t.conv_lowrank_pack(g, d.rank, d.w.data(), d.la.data(), d.lb.data(), packed.data());
  else
    t.conv_pack(g, d.w.data(), packed.data());
  if (!packed.guards_intact()) {
    problem = "pack wrote outside its packed_floats";
    return false;
  }
  // Scratch sized for more threads must serve fewer (the contract in kernels.h).
  for (int fewer = 1; fewer < threads; ++fewer) {
    const size_t need =
        lr ? t.conv_lowrank_scratch_floats(g, d.rank, fewer) : t.conv_scratch_floats(g, fewer);
    const size_t have =
        lr ? t.conv_lowrank_scratch_floats(g, d.rank, threads) : t.conv_scratch_floats(g, threads);
    if (need > have) {
      problem = "scratch for " + std::to_string(threads) + " threads is smaller than for " +
                std::to_string(fewer);
      return false;
    }
  }
  Guarded scratch(
      lr ? t.conv_lowrank_scratch_floats(g, d.rank, threads) : t.conv_scratch_floats(g, threads),
      std::numeric_limits<float>::quiet_NaN());
  Guarded in(d.in.size());
  std::memcpy(in.data(), d.in.data(), d.in.size() * sizeof(float));
  Guarded out(out_n, std::numeric_limits<float>::quiet_NaN());
  Guarded res_sep(out_n);

  k::Epilogue ep;
  switch (ep_variant) {
    case EP_NONE:
      break;
    case EP_BIAS:
      ep.bias = d.bias.data();
      break;
    case EP_BIAS_RELU:
      ep.bias = d.bias.data();
      ep.relu = true;
      break;
    case EP_RESIDUAL_RELU:
      std::memcpy(res_sep.data(), d.residual.data(), out_n * sizeof(float));
      ep.residual = res_sep.data();
      ep.relu = true;
      break;
    case EP_BIAS_RESIDUAL_INPLACE:
      std::memcpy(out.data(), d.residual.data(), out_n * sizeof(float));
      ep.bias = d.bias.data();
      ep.residual = out.data();
      ep.relu = true;
      break;
    case EP_RESIDUAL_INPLACE:
      std::memcpy(out.data(), d.residual.data(), out_n * sizeof(float));
      ep.residual = out.data();
      break;
  }
  with_sharing(sh, [&](const k::Parallel* par) {
    if (lr)
      t.conv_lowrank(g, d.rank, packed.data(), in.data(), out.data(), ep, scratch.data(), par);
    else
      t.conv(g, packed.data(), in.data(), out.data(), ep, scratch.data(), par);
  });
  if (!out.guards_intact()) {
    problem = "conv wrote outside its output";
    return false;
  }
  if (!scratch.guards_intact()) {
    problem = "conv wrote outside conv_scratch_floats";
    return false;
  }
  if (std::memcmp(in.data(), d.in.data(), d.in.size() * sizeof(float)) != 0 ||
      !in.guards_intact()) {
    problem = "conv modified its input";
    return false;
  }
  if (ep_variant == EP_RESIDUAL_RELU &&
      std::memcmp(res_sep.data(), d.residual.data(), out_n * sizeof(float)) != 0) {
    problem = "conv modified a non-aliased residual";
    return false;
  }
  result.assign(out.data(), out.data() + out_n);
  return true;
}

struct ConvCase {
  k::ConvGeometry g;
  bool all_epilogues;  // false for the large shapes: a subset keeps the test quick
};

k::ConvGeometry geom(int h, int w, int c, int oc, int kk, int s, int p) {
  k::ConvGeometry g;
  g.in_h = h;
  g.in_w = w;
  g.in_c = c;
  g.out_c = oc;
  g.kernel = kk;
  g.stride = s;
  g.pad = p;
  return g;
}

// Table `t` on the case, serially (against the reference `want`, within the
// tolerance) and with every kShared sharing (equal to the serial output bit
// for bit).
void check_conv_sharing(const k::KernelTable& t, const ConvData& d, int ev,
                        const std::vector<float>& want, const std::string& what) {
  std::string problem;
  std::vector<float> serial;
  if (!run_conv(t, d, ev, kSerial, serial, problem)) {
    report(false, what + " " + kSerial.name() + ": " + problem);
    return;
  }
  const Compare c = compare(want.data(), serial.data(), want.size());
  report(within(c), what + " " + kSerial.name(), &c);
  for (const Sharing& sh : kShared) {
    std::vector<float> got;
    if (!run_conv(t, d, ev, sh, got, problem)) {
      report(false, what + " " + sh.name() + ": " + problem);
      continue;
    }
    report(got.size() == serial.size() &&
               std::memcmp(got.data(), serial.data(), got.size() * sizeof(float)) == 0,
           what + " " + sh.name() + " == serial bit for bit");
  }
}

void test_conv(const std::vector<const k::KernelTable*>& tables) {
  const std::vector<ConvCase> cases = {
      // tiny and ragged
      {geom(1, 1, 1, 1, 1, 1, 0), true},
      {geom(1, 1, 3, 5, 3, 1, 1), true},
      {geom(2, 3, 5, 17, 3, 1, 1), true},
      {geom(2, 3, 5, 17, 3, 2, 1), true},
      {geom(2, 3, 17, 3, 1, 1, 0), true},
      {geom(4, 5, 1, 1, 3, 1, 1), true},
      {geom(3, 3, 3, 64, 7, 2, 3), true},
      {geom(9, 11, 3, 33, 7, 2, 3), true},
      {geom(8, 8, 33, 17, 3, 1, 0), true},
      {geom(7, 7, 17, 100, 1, 2, 0), true},
      {geom(5, 13, 100, 33, 3, 2, 1), true},
      {geom(6, 6, 64, 64, 3, 1, 1), true},
      {geom(10, 10, 8, 24, 1, 1, 0), true},
      {geom(13, 7, 24, 48, 3, 1, 1), true},
      {geom(6, 6, 7, 9, 3, 1, 3), true},  // border windows entirely in the padding
      {geom(12, 12, 16, 16, 5, 1, 2), true},
      {geom(8, 9, 6, 10, 2, 2, 0), true},
      {geom(1, 1, 512, 10, 1, 1, 0), true},
      {geom(3, 2, 129, 65, 1, 1, 0), true},
      {geom(11, 17, 31, 47, 3, 1, 1), true},
      {geom(15, 15, 40, 23, 1, 1, 0), true},
      {geom(14, 14, 96, 130, 3, 2, 1), true},
      // long K: several K blocks per kernel row in every ISA's blocking
      {geom(3, 4, 1700, 20, 1, 1, 0), true},
      {geom(5, 5, 600, 24, 3, 1, 1), false},
      {geom(4, 4, 1100, 17, 3, 2, 1), false},
      // ResNet-18-like and larger spatial sizes
      {geom(32, 32, 3, 64, 7, 2, 3), false},
      {geom(56, 56, 17, 33, 3, 1, 1), false},
      {geom(57, 55, 5, 9, 3, 2, 1), false},
      {geom(56, 56, 64, 64, 3, 1, 1), false},
      {geom(56, 56, 64, 128, 1, 2, 0), false},
      {geom(28, 28, 64, 128, 3, 2, 1), false},
      {geom(14, 14, 256, 256, 1, 1, 0), false},
      {geom(7, 7, 512, 512, 3, 1, 1), false},
      {geom(7, 7, 300, 200, 3, 1, 1), false},
  };
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 1;
  for (const ConvCase& cc : cases) {
    Rng rng(seed++);
    const ConvData d = random_conv(cc.g, rng);
    const std::vector<int> eps = cc.all_epilogues
                                     ? std::vector<int>{EP_NONE,
                                                        EP_BIAS,
                                                        EP_BIAS_RELU,
                                                        EP_RESIDUAL_RELU,
                                                        EP_BIAS_RESIDUAL_INPLACE,
                                                        EP_RESIDUAL_INPLACE}
                                     : std::vector<int>{EP_NONE, EP_BIAS_RESIDUAL_INPLACE};
    for (int ev : eps) {
      std::vector<float> want;
      std::string problem;
      if (!run_conv(ref, d, ev, kSerial, want, problem)) {
        report(false,
               std::string("conv[scalar] ") + geom_str(d.g) + " " + ep_name(ev) + ": " + problem);
        continue;
      }
      for (const k::KernelTable* t : tables) {
        const std::string what =
            std::string("conv[") + t->isa + "] " + geom_str(d.g) + " " + ep_name(ev);
        check_conv_sharing(*t, d, ev, want, what);
      }
    }
  }
}

// Fused low-rank conv: every table against the scalar reference, and the
// scalar reference against "lowrank_merge, then conv" (the definition).
void test_conv_lowrank(const std::vector<const k::KernelTable*>& tables) {
  struct Case {
    k::ConvGeometry g;
    std::vector<int> ranks;
  };
  const std::vector<Case> cases = {
      {geom(1, 1, 3, 5, 3, 1, 1), {0, 1, 2}},
      {geom(2, 3, 5, 17, 3, 2, 1), {1, 4}},
      {geom(7, 7, 17, 100, 1, 2, 0), {3, 17}},
      {geom(6, 6, 7, 9, 3, 1, 3), {2}},  // centre taps in the padding
      {geom(9, 11, 3, 33, 7, 2, 3), {5}},
      {geom(8, 8, 33, 17, 3, 1, 0), {8, 40}},
      {geom(13, 7, 24, 48, 3, 1, 1), {16}},
      {geom(10, 10, 8, 24, 1, 1, 0), {1, 33}},
      {geom(14, 14, 96, 130, 3, 2, 1), {8}},
      {geom(7, 7, 300, 200, 3, 1, 1), {12}},
      {geom(28, 28, 64, 64, 3, 1, 1), {8}},
  };
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 500;
  for (const Case& cs : cases) {
    for (int rank : cs.ranks) {
      Rng rng(seed++);
      ConvData d = random_conv(cs.g, rng);
      d.rank = rank;
      d.la = random_vec(static_cast<size_t>(rank) * d.g.in_c + 1, rng);
      d.lb = random_vec(static_cast<size_t>(d.g.out_c) * rank + 1, rng);
      char rs[32];
      std::snprintf(rs, sizeof rs, " rank=%d", rank);
      for (int ev : {EP_NONE, EP_BIAS_RELU, EP_BIAS_RESIDUAL_INPLACE}) {
        std::vector<float> want;
        std::string problem;
        if (!run_conv(ref, d, ev, kSerial, want, problem)) {
          report(false, std::string("conv_lowrank[scalar] ") + geom_str(d.g) + rs + " " +
                            ep_name(ev) + ": " + problem);
          continue;
        }
        {  // definition: merge into W', then a plain conv
          ConvData m = d;
          m.rank = -1;
          ref.lowrank_merge(d.g.out_c, d.g.in_c, d.g.kernel, rank, d.la.data(), d.lb.data(),
                            m.w.data());
          std::vector<float> merged;
          if (run_conv(ref, m, ev, kSerial, merged, problem)) {
            const Compare c = compare(merged.data(), want.data(), want.size());
            report(within(c),
                   std::string("conv_lowrank[scalar] == merge+conv ") + geom_str(d.g) + rs + " " +
                       ep_name(ev),
                   &c);
          } else {
            report(false, std::string("conv[scalar] merged ") + geom_str(d.g) + ": " + problem);
          }
        }
        for (const k::KernelTable* t : tables) {
          const std::string what =
              std::string("conv_lowrank[") + t->isa + "] " + geom_str(d.g) + rs + " " + ep_name(ev);
          check_conv_sharing(*t, d, ev, want, what);
        }
      }
    }
  }
}

// A few checks of the reference itself against values computed by hand.
void test_scalar_sanity() {
  const k::KernelTable& s = k::scalar::table();
  {  // 3x3 all-ones conv, pad 1, on a 3x3 all-ones image: corner 4, edge 6, centre 9
    k::ConvGeometry g = geom(3, 3, 1, 1, 3, 1, 1);
    std::vector<float> w(9, 1.0f), in(9, 1.0f), out(9), packed(s.conv_packed_floats(g));
    s.conv_pack(g, w.data(), packed.data());
    std::vector<float> scratch(s.conv_scratch_floats(g, 1) + 1);
    s.conv(g, packed.data(), in.data(), out.data(), k::Epilogue{}, scratch.data(), nullptr);
    const float want[9] = {4, 6, 4, 6, 9, 6, 4, 6, 4};
    bool ok = true;
    for (int i = 0; i < 9; ++i) ok = ok && out[i] == want[i];
    report(ok, "scalar sanity: 3x3 ones conv");
  }
  {  // 1x1 conv with weights [[1,2],[3,4]] (OHWI), bias [1,-100], relu
    k::ConvGeometry g = geom(1, 1, 2, 2, 1, 1, 0);
    std::vector<float> w = {1, 2, 3, 4}, in = {1, 1}, out(2), bias = {1, -100},
                       packed(s.conv_packed_floats(g));
    s.conv_pack(g, w.data(), packed.data());
    k::Epilogue ep;
    ep.bias = bias.data();
    ep.relu = true;
    std::vector<float> scratch(s.conv_scratch_floats(g, 1) + 1);
    s.conv(g, packed.data(), in.data(), out.data(), ep, scratch.data(), nullptr);
    report(out[0] == 4.0f && out[1] == 0.0f, "scalar sanity: 1x1 conv bias relu");
  }
  {  // maxpool 2x2 s2 on 2x2 single channel; gap; linear; merge
    std::vector<float> in = {1, -2, 5, 3}, out(1);
    s.maxpool(2, 2, 1, 2, 2, 0, in.data(), out.data(), nullptr);
    report(out[0] == 5.0f, "scalar sanity: maxpool");
    s.global_avgpool(2, 2, 1, in.data(), out.data());
    report(out[0] == 1.75f, "scalar sanity: global_avgpool");
    std::vector<float> w = {1, 2, 3, 4, 5, 6}, x = {1, 0, -1}, b = {10, 20}, y(2);
    s.linear(3, 2, w.data(), b.data(), x.data(), y.data());
    report(y[0] == 8.0f && y[1] == 18.0f, "scalar sanity: linear");
    // kernel 3, out 1, in 1, rank 2: centre tap (index 4) += 1*3 + 2*4
    std::vector<float> wm(9, 0.0f), a = {3, 4}, bb = {1, 2};
    s.lowrank_merge(1, 1, 3, 2, a.data(), bb.data(), wm.data());
    bool ok = wm[4] == 11.0f;
    for (int i = 0; i < 9; ++i) ok = ok && (i == 4 || wm[i] == 0.0f);
    report(ok, "scalar sanity: lowrank_merge");
  }
}

// ------------------------------------------------------------ pooling -------

void test_maxpool(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int h, w, c, kk, s, p;
  };
  const std::vector<P> cases = {
      {1, 1, 1, 1, 1, 0},      {1, 1, 3, 3, 1, 1},   {2, 3, 5, 3, 2, 1},
      {7, 7, 17, 3, 1, 1},     {5, 5, 33, 2, 2, 0},  {9, 8, 100, 3, 2, 1},
      {112, 112, 64, 3, 2, 1}, {56, 56, 3, 3, 2, 1}, {4, 4, 8, 3, 1, 2},  // all-pad corners
      {11, 13, 129, 5, 3, 2},
  };
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 100;
  for (const P& p : cases) {
    Rng rng(seed++);
    const int oh = (p.h + 2 * p.p - p.kk) / p.s + 1, ow = (p.w + 2 * p.p - p.kk) / p.s + 1;
    const size_t out_n = static_cast<size_t>(oh) * ow * p.c;
    std::vector<float> in = random_vec(static_cast<size_t>(p.h) * p.w * p.c, rng);
    std::vector<float> want(out_n);
    ref.maxpool(p.h, p.w, p.c, p.kk, p.s, p.p, in.data(), want.data(), nullptr);
    for (const k::KernelTable* t : tables) {
      std::vector<float> serial;
      for (const Sharing& sh : {kSerial, kShared[0], kShared[1], kShared[2]}) {
        char b[160];
        std::snprintf(b, sizeof b, "maxpool[%s] %dx%dx%d k%d s%d p%d %s", t->isa, p.h, p.w, p.c,
                      p.kk, p.s, p.p, sh.name().c_str());
        Guarded gin(in.size()), out(out_n, std::numeric_limits<float>::quiet_NaN());
        std::memcpy(gin.data(), in.data(), in.size() * sizeof(float));
        with_sharing(sh, [&](const k::Parallel* par) {
          t->maxpool(p.h, p.w, p.c, p.kk, p.s, p.p, gin.data(), out.data(), par);
        });
        if (!out.guards_intact() || !gin.guards_intact() ||
            std::memcmp(gin.data(), in.data(), in.size() * sizeof(float)) != 0) {
          report(false, std::string(b) + ": wrote outside its output or to its input");
          continue;
        }
        if (sh.threads == 1) {
          const Compare c = compare(want.data(), out.data(), out_n);
          report(within(c), b, &c);
          serial.assign(out.data(), out.data() + out_n);
        } else {
          report(serial.size() == out_n &&
                     std::memcmp(serial.data(), out.data(), out_n * sizeof(float)) == 0,
                 std::string(b) + " == serial bit for bit");
        }
      }
    }
  }
}

void test_gap(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int h, w, c;
  };
  const std::vector<P> cases = {{1, 1, 1},   {1, 1, 3},    {2, 3, 17}, {7, 7, 512},
                                {7, 7, 100}, {56, 56, 64}, {3, 5, 33}, {14, 14, 1}};
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 200;
  for (const P& p : cases) {
    Rng rng(seed++);
    std::vector<float> in = random_vec(static_cast<size_t>(p.h) * p.w * p.c, rng);
    std::vector<float> want(p.c);
    ref.global_avgpool(p.h, p.w, p.c, in.data(), want.data());
    for (const k::KernelTable* t : tables) {
      char b[128];
      std::snprintf(b, sizeof b, "global_avgpool[%s] %dx%dx%d", t->isa, p.h, p.w, p.c);
      Guarded out(p.c, std::numeric_limits<float>::quiet_NaN());
      t->global_avgpool(p.h, p.w, p.c, in.data(), out.data());
      check_output(b, out, want.data(), "its output");
    }
  }
}

// ------------------------------------------------------------- linear -------

void test_linear(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int in_f, out_f;
  };
  const std::vector<P> cases = {{1, 1},      {3, 64}, {17, 5},    {100, 33},
                                {512, 1000}, {64, 1}, {2048, 37}, {9, 16}};
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 300;
  for (const P& p : cases) {
    Rng rng(seed++);
    std::vector<float> w = random_vec(static_cast<size_t>(p.in_f) * p.out_f, rng);
    std::vector<float> x = random_vec(p.in_f, rng), bias = random_vec(p.out_f, rng);
    for (bool with_bias : {false, true}) {
      std::vector<float> want(p.out_f);
      ref.linear(p.in_f, p.out_f, w.data(), with_bias ? bias.data() : nullptr, x.data(),
                 want.data());
      for (const k::KernelTable* t : tables) {
        char b[128];
        std::snprintf(b, sizeof b, "linear[%s] %d->%d %s", t->isa, p.in_f, p.out_f,
                      with_bias ? "bias" : "no-bias");
        Guarded y(p.out_f, std::numeric_limits<float>::quiet_NaN());
        t->linear(p.in_f, p.out_f, w.data(), with_bias ? bias.data() : nullptr, x.data(), y.data());
        check_output(b, y, want.data(), "its output");
      }
    }
  }
}

// ------------------------------------------------------ lowrank_merge -------

void test_lowrank_merge(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int out_c, in_c, kk, rank;
  };
  const std::vector<P> cases = {{1, 1, 1, 1},      {5, 3, 1, 1},    {64, 64, 3, 8},
                                {17, 33, 3, 4},    {100, 17, 7, 3}, {3, 5, 1, 0},
                                {512, 256, 3, 16}, {33, 100, 3, 5}, {10, 1000, 1, 8}};
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 400;
  for (const P& p : cases) {
    Rng rng(seed++);
    const size_t wn = static_cast<size_t>(p.out_c) * p.kk * p.kk * p.in_c;
    std::vector<float> w = random_vec(wn, rng);
    std::vector<float> a = random_vec(static_cast<size_t>(p.rank) * p.in_c + 1, rng);
    std::vector<float> bm = random_vec(static_cast<size_t>(p.out_c) * p.rank + 1, rng);
    std::vector<float> want = w;
    ref.lowrank_merge(p.out_c, p.in_c, p.kk, p.rank, a.data(), bm.data(), want.data());
    for (const k::KernelTable* t : tables) {
      char b[128];
      std::snprintf(b, sizeof b, "lowrank_merge[%s] out=%d in=%d k%d rank=%d", t->isa, p.out_c,
                    p.in_c, p.kk, p.rank);
      Guarded got(wn);
      std::memcpy(got.data(), w.data(), wn * sizeof(float));
      t->lowrank_merge(p.out_c, p.in_c, p.kk, p.rank, a.data(), bm.data(), got.data());
      check_output(b, got, want.data(), "the weights");
    }
  }
}

// ------------------------------------------------------ conv_apply ----------

// Whether a kernel given buf.data() + lead for n floats wrote only there:
// the canaries, and the NaN the buffer was filled with before and after the
// n floats, are intact.
bool wrote_only(const Guarded& buf, size_t lead, size_t n) {
  bool inside = buf.guards_intact();
  for (size_t j = 0; j < lead; ++j) inside = inside && std::isnan(buf.data()[j]);
  for (size_t j = lead + n; j < buf.n; ++j) inside = inside && std::isnan(buf.data()[j]);
  return inside;
}

// conv_apply (task application in one pass, from the OIHW base) against what
// it replaces: gather into OHWI, the same table's lowrank_merge, BN scale,
// then conv_pack / conv_lowrank_pack. Ragged panels, (non-)contiguous kept
// outputs, centre taps of k = 1..7, ranks 0..17, both modes, and the kept
// outputs cut into ranges of 16 and 32 applied out of order (as the
// runtime's threads do), bit for bit equal to one call over all of them. The
// packed buffer starts as NaN so every padding lane must be written.
void test_conv_apply(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int base_out, base_in, out_c, in_c, kk, rank;
    bool scale, fused, contiguous;
  };
  const std::vector<P> cases = {
      {1, 1, 1, 1, 1, 0, false, false, false},       {16, 3, 16, 3, 3, 0, true, false, true},
      {40, 9, 17, 5, 3, 4, true, false, false},      {40, 9, 17, 5, 3, 4, true, true, false},
      {64, 64, 33, 20, 3, 8, true, false, false},    {64, 64, 33, 20, 3, 8, true, true, false},
      {64, 64, 64, 64, 3, 8, true, false, true},     {100, 7, 15, 7, 7, 3, false, false, false},
      {100, 7, 15, 7, 7, 3, true, true, false},      {512, 256, 154, 77, 3, 8, true, false, false},
      {512, 256, 154, 77, 1, 17, true, true, false}, {48, 48, 32, 1, 5, 2, true, false, true},
      {24, 30, 9, 30, 1, 1, true, false, false},     {3, 5, 2, 4, 3, 0, true, true, false},
  };
  uint64_t seed = 500;
  for (const P& p : cases) {
    Rng rng(seed++);
    const int kk = p.kk * p.kk;
    // Kept indices: strictly increasing, contiguous or spread out.
    auto pick = [&rng](int base, int kept, bool contiguous) {
      std::vector<int32_t> idx;
      if (contiguous) {
        const int start = static_cast<int>(rng.next() % static_cast<uint32_t>(base - kept + 1));
        for (int i = 0; i < kept; ++i) idx.push_back(start + i);
        return idx;
      }
      int left = kept;
      for (int i = 0; i < base && left > 0; ++i) {
        const int remaining = base - i;
        if (static_cast<int>(rng.next() % static_cast<uint32_t>(remaining)) < left) {
          idx.push_back(i);
          --left;
        }
      }
      return idx;
    };
    const std::vector<int32_t> oi = pick(p.base_out, p.out_c, p.contiguous);
    const std::vector<int32_t> ii = pick(p.base_in, p.in_c, false);
    const std::vector<float> oihw =
        random_vec(static_cast<size_t>(p.base_out) * p.base_in * kk, rng);
    const std::vector<float> a = random_vec(static_cast<size_t>(p.rank) * p.in_c, rng);
    const std::vector<float> bm = random_vec(static_cast<size_t>(p.out_c) * p.rank, rng);
    std::vector<float> bt(bm.size());
    for (int o = 0; o < p.out_c; ++o)
      for (int r = 0; r < p.rank; ++r)
        bt[static_cast<size_t>(r) * p.out_c + o] = bm[static_cast<size_t>(o) * p.rank + r];
    std::vector<float> scale = random_vec(static_cast<size_t>(p.out_c), rng);
    k::ConvGeometry g = geom(9, 9, p.in_c, p.out_c, p.kk, 1, p.kk / 2);
    const int K = kk * p.in_c;
    // Gathered OHWI weights (exact copies of base values).
    std::vector<float> w(static_cast<size_t>(p.out_c) * K);
    for (int o = 0; o < p.out_c; ++o)
      for (int t = 0; t < kk; ++t)
        for (int i = 0; i < p.in_c; ++i)
          w[(static_cast<size_t>(o) * kk + t) * p.in_c + i] =
              oihw[(static_cast<size_t>(oi[o]) * p.base_in + ii[i]) * kk + t];
    for (const k::KernelTable* t : tables) {
      char b[192];
      std::snprintf(b, sizeof b, "conv_apply[%s] base %dx%d kept out=%d in=%d k%d rank=%d%s%s%s",
                    t->isa, p.base_out, p.base_in, p.out_c, p.in_c, p.kk, p.rank,
                    p.scale ? " scale" : "", p.fused ? " fused" : "",
                    p.contiguous ? " contiguous" : "");
      // What the multi-pass path produces with this table.
      std::vector<float> ww = w;
      if (p.rank > 0 && !p.fused)
        t->lowrank_merge(p.out_c, p.in_c, p.kk, p.rank, a.data(), bm.data(), ww.data());
      std::vector<float> bs = bm;
      if (p.scale) {
        for (int o = 0; o < p.out_c; ++o) {
          for (int j = 0; j < K; ++j)
            ww[static_cast<size_t>(o) * K + j] *= scale[static_cast<size_t>(o)];
          for (int r = 0; r < p.rank; ++r)
            bs[static_cast<size_t>(o) * p.rank + r] *= scale[static_cast<size_t>(o)];
        }
      }
      const bool fused = p.fused && p.rank > 0;
      const size_t n = fused ? t->conv_lowrank_packed_floats(g, p.rank) : t->conv_packed_floats(g);
      std::vector<float> want(n, 0.0f);
      if (fused)
        t->conv_lowrank_pack(g, p.rank, ww.data(), a.data(), bs.data(), want.data());
      else
        t->conv_pack(g, ww.data(), want.data());

      k::ApplyArgs args;
      args.g = g;
      args.base = oihw.data();
      args.base_in = p.base_in;
      args.base_out = p.base_out;
      args.out_index = oi.data();
      args.in_index = ii.data();
      args.rank = p.rank;
      args.a = a.data();
      args.bt = bt.data();
      args.fused = fused;
      args.scale = p.scale ? scale.data() : nullptr;
      const bool merged = p.rank > 0 && !fused;
      // 64-byte aligned output (AVX2 streams its stores there) and misaligned.
      for (int misalign : {0, 1}) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> whole;  // one call over every kept output
        for (int step : {p.out_c, 16, 32}) {
          Guarded buf(n + 32, nan);
          const size_t lead =
              (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64 / sizeof(float) +
              size_t(misalign);
          float* out = buf.data() + lead;
          std::vector<int> starts;
          for (int o0 = 0; o0 < p.out_c; o0 += step) starts.push_back(o0);
          for (size_t j = starts.size(); j-- > 0;)  // last range first
            t->conv_apply(args, starts[j], std::min(p.out_c, starts[j] + step), out);
          const std::string what = std::string(b) + (misalign ? " misaligned" : " aligned") +
                                   " outputs/range=" + std::to_string(step);
          if (!wrote_only(buf, lead, n)) {
            report(false, what + ": wrote outside the packed weights");
            continue;
          }
          const Compare c = compare(want.data(), out, n);
          // Bit for bit where no merge rounding is involved, else within tolerance;
          // any cut into ranges gives the bits of one call.
          bool exact = true, same = true;
          if (whole.empty()) whole.assign(out, out + n);
          for (size_t j = 0; j < n; ++j) {
            if (std::memcmp(&want[j], out + j, sizeof(float)) != 0) exact = false;
            if (std::memcmp(&whole[j], out + j, sizeof(float)) != 0) same = false;
          }
          report(same && (merged ? within(c) : exact && within(c)), what, &c);
        }
      }
    }
  }
}

// ------------------------------------------------------ splopa_expand -------

// splopa_expand (SPLoPA's Kronecker sum added into rows of dst) of every table
// against scalar, and scalar against the definition computed in double
// (sum_p kron(C_p, U_p V_p)). Blocks of 1, 2, 3, 4 (the toolchain's), 5, 8,
// 12 and 16 inputs, square and not; ragged row lengths (tails of every ISA's
// vector), 1 to 9 prototypes (groups of four and remainders), ranks 1 to 5;
// rows with a stride (the runtime passes the centre tap of an OHWI
// workspace): the floats between rows must keep their values, and nothing
// outside the buffer is written. Same tolerance as every kernel.
void test_splopa_expand(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int out_c, in_c, n, rank, bo, bi, gap;  // gap: floats between rows (ld = in_c + gap)
  };
  const std::vector<P> cases = {
      {4, 4, 1, 1, 4, 4, 0},     {16, 16, 4, 2, 4, 4, 0},      {8, 12, 3, 2, 4, 4, 5},
      {128, 128, 4, 4, 4, 4, 0}, {72, 68, 4, 2, 4, 4, 8 * 68}, {20, 36, 5, 3, 4, 4, 1},
      {12, 28, 9, 4, 4, 4, 3},   {6, 10, 2, 1, 2, 2, 0},       {5, 7, 3, 1, 1, 1, 2},
      {16, 24, 4, 5, 8, 8, 0},   {16, 40, 6, 2, 4, 8, 1},      {9, 18, 2, 2, 3, 3, 4},
      {10, 25, 4, 2, 2, 5, 0},   {24, 36, 3, 3, 12, 12, 2},    {32, 48, 4, 4, 16, 16, 0},
      {8, 32, 2, 2, 4, 16, 7},   {64, 4, 4, 1, 4, 4, 0},       {4, 64, 7, 2, 4, 4, 0},
      {3, 6, 1, 1, 3, 2, 1},     {12, 6, 4, 3, 4, 1, 2},
  };
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 900;
  for (const P& p : cases) {
    Rng rng(seed++);
    const size_t ld = static_cast<size_t>(p.in_c + p.gap);
    const size_t total = static_cast<size_t>(p.out_c) * ld;
    const int ob = p.out_c / p.bo, ib = p.in_c / p.bi;
    const std::vector<float> u = random_vec(static_cast<size_t>(p.n) * p.bo * p.rank, rng);
    const std::vector<float> v = random_vec(static_cast<size_t>(p.n) * p.rank * p.bi, rng);
    const std::vector<float> coef = random_vec(static_cast<size_t>(p.n) * ob * ib, rng);
    const std::vector<float> start = random_vec(total, rng);
    k::SplopaArgs args;
    args.out_c = p.out_c;
    args.in_c = p.in_c;
    args.n = p.n;
    args.rank = p.rank;
    args.bo = p.bo;
    args.bi = p.bi;
    args.u = u.data();
    args.v = v.data();
    args.coef = coef.data();
    char b[160];
    std::snprintf(b, sizeof b, "splopa_expand out=%d in=%d n=%d rank=%d block %dx%d ld=%zu",
                  p.out_c, p.in_c, p.n, p.rank, p.bo, p.bi, ld);
    // The definition, in double: start + sum_p kron(C_p, U_p V_p) on the rows, the gaps as they
    // were.
    std::vector<float> def = start;
    for (int o = 0; o < p.out_c; ++o)
      for (int i = 0; i < p.in_c; ++i) {
        double acc = 0.0;
        for (int q = 0; q < p.n; ++q) {
          double pv = 0.0;
          for (int r = 0; r < p.rank; ++r)
            pv += double(u[(static_cast<size_t>(q) * p.bo + o % p.bo) * p.rank + r]) *
                  double(v[(static_cast<size_t>(q) * p.rank + r) * p.bi + i % p.bi]);
          acc += double(coef[(static_cast<size_t>(q) * ob + o / p.bo) * ib + i / p.bi]) * pv;
        }
        def[static_cast<size_t>(o) * ld + i] =
            float(double(start[static_cast<size_t>(o) * ld + i]) + acc);
      }
    std::vector<float> want = start;
    ref.splopa_expand(args, want.data(), ld);
    const Compare rc = compare(def.data(), want.data(), total);
    report(within(rc), std::string(b) + " [scalar against the definition]", &rc);
    for (const k::KernelTable* t : tables) {
      Guarded got(total);
      std::memcpy(got.data(), start.data(), total * sizeof(float));
      t->splopa_expand(args, got.data(), ld);
      const std::string what = std::string(b) + " [" + t->isa + "]";
      bool gaps = true;
      for (int o = 0; o < p.out_c; ++o)
        for (size_t j = static_cast<size_t>(p.in_c); j < ld; ++j) {
          const size_t at = static_cast<size_t>(o) * ld + j;
          if (std::memcmp(&got.data()[at], &start[at], sizeof(float)) != 0) gaps = false;
        }
      if (!gaps) {
        report(false, what + ": wrote between the rows");
        continue;
      }
      check_output(what, got, want.data(), "the rows");
    }
  }
}

}  // namespace

int main() {
  // Every ISA of isas.inc built into this binary, scalar included (the
  // reference against itself: deterministic).
  std::vector<const k::KernelTable*> tables;
  for (const k::Isa& i : k::isas()) {
    if (!i.table) continue;
    if (i.supported)
      tables.push_back(i.table);
    else
      std::printf("kernels: %s compiled in but not supported by this CPU; skipped\n", i.name);
  }
  std::printf("kernels: testing");
  for (const k::KernelTable* t : tables) std::printf(" %s", t->isa);
  std::printf(" (active: %s%s%s)\n", k::active().isa, *k::dispatch_error() ? "; " : "",
              k::dispatch_error());
  report(k::cpu_supports(k::scalar::table()), "dispatch: scalar always supported");
  for (const k::Isa& i : k::isas()) {
    if (!i.table) continue;
    // Bound by name (kernels/isa_table.inc): the table is its row's, every field set.
    report(std::strcmp(i.table->isa, i.name) == 0,
           std::string("table of ") + i.name + " is named " + i.table->isa);
#define SPAEDGE_KERNEL(kernel, ret, params) \
  report(i.table->kernel != nullptr, std::string("table of ") + i.name + " binds " #kernel);
#include "kernels/kernels.inc"
#undef SPAEDGE_KERNEL
  }
  report(k::cpu_supports(k::active()), "dispatch: active table is supported");

  test_scalar_sanity();
  test_conv(tables);
  test_conv_lowrank(tables);
  test_maxpool(tables);
  test_gap(tables);
  test_linear(tables);
  test_lowrank_merge(tables);
  test_conv_apply(tables);
  test_splopa_expand(tables);

  return tcheck::summary("kernels");
}
