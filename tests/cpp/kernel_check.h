// The kernel tests' shared part (tests/cpp/test_kernels_*.cpp): every kernel
// table compiled into the binary that the CPU can run is checked against the
// scalar reference over awkward shapes. Plain C++ with check.h; each test
// prints its failing cases and returns nonzero on any failure.
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
#pragma once

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
  float uniform(float lo, float hi) {
    return lo + (hi - lo) * static_cast<float>(next()) / 4294967296.0f;
  }
  int range(int lo, int hi) {  // [lo, hi]
    return lo + static_cast<int>(next() % uint32_t(hi - lo + 1));
  }
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

// Every ISA of isas.inc built into this binary that the CPU supports, scalar
// included (the reference against itself: deterministic); says which.
std::vector<const k::KernelTable*> tested_tables() {
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
  return tables;
}

}  // namespace
