// Work sharing that a busy machine cannot stall, for task application and
// for the kernels (through kernels::Parallel). Internal header.
//
// An OpenMP parallel region ends in a barrier that waits for every thread of
// the team, including one the OS has not scheduled yet; on a loaded machine
// that costs a scheduler time slice per region, and a spinning waiter makes
// it worse (the figures: docs/benchmarks.md, "Measurements behind the kernel
// and runtime design"). Here the caller works through the items itself and
// helper threads join in when they get a CPU: items are claimed one at a time,
// and the caller waits only for items a helper has actually claimed. A helper
// that never ran costs nothing, so `threads` > 1 is never slower than 1 by
// more than one item.
//
// Claim order: the items are cut into one contiguous range per worker, as a
// static split would, and each worker claims from its own range first, in
// order, then from the next workers' ranges. When everyone shows up, each
// works on neighbouring items (a conv's items of one M block share its input
// rows); a range whose worker is late is taken by the others from its start.
//
// Between jobs a helper spins for a short while (kSpinMicros, pausing
// between looks) so that back-to-back jobs (the convs of one inference) find
// it awake, then sleeps on a condition variable until the next job. Nothing
// on the way from one job to the next takes a lock while helpers are awake
// (a contended mutex costs a futex sleep and wake).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/kernels.h"

#ifndef SPAEDGE_SPIN_MICROS
#define SPAEDGE_SPIN_MICROS 50
#endif

namespace spaedge {

class Workers {
 public:
  Workers() = default;
  ~Workers();
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  // Calls fn(arg, i, w) once for every item i in [0, n), on the calling
  // thread (w = 0) and up to threads - 1 helpers (w = 1, 2, ...: each w runs
  // one item at a time, so per-w scratch is safe); returns when all calls
  // have returned (their writes visible to the caller). fn must not throw.
  // One caller at a time (the Runtime's mutex).
  using RawFn = void (*)(void* arg, int item, int worker);
  void run(int n, int threads, RawFn fn, void* arg);

  // The same with a std::function.
  using Fn = std::function<void(int, int)>;
  void run(int n, int threads, const Fn& fn) {
    run(
        n, threads, [](void* a, int i, int w) { (*static_cast<const Fn*>(a))(i, w); },
        const_cast<Fn*>(&fn));
  }

  // How long an idle helper keeps looking for the next job before sleeping.
  static constexpr int kSpinMicros = SPAEDGE_SPIN_MICROS;

 private:
  // One worker's range of the current job: (generation << 32) | next item.
  struct alignas(64) Range {
    std::atomic<uint64_t> next{0};
  };
  void helper(int index);
  // Claims items of generation `gen` (n items in `ranges` ranges) and runs
  // them, worker w's range first; returns when none are left.
  void work(uint32_t gen, int n, int ranges, Range* range, RawFn fn, void* arg, int w);
  // Spins until published_ differs from `seen` or the pool stops, at most
  // kSpinMicros; true if it did.
  bool spin(uint32_t seen) const;

  // The current job, published seqlock-style without a lock: the caller
  // sets published_ to 0, writes the fields, then publishes the generation;
  // a helper that read the same nonzero generation before and after the
  // fields has a consistent copy. mu_ only guards sleeping (wake_).
  std::atomic<uint32_t> published_{0};  // generation of the current job; 0 while it is written
  std::atomic<int> n_{0}, wanted_{0};   // items and helpers of the job (wanted_ + 1 ranges)
  std::atomic<RawFn> fn_{nullptr};
  std::atomic<void*> arg_{nullptr};
  std::atomic<Range*> range_{nullptr};  // the job's ranges
  std::atomic<int> done_{0};            // items of the current generation finished
  // Range arrays; a larger one replaces the current one when more workers
  // join, the old ones stay alive for helpers still looking at them.
  std::vector<std::unique_ptr<Range[]>> range_blocks_;
  int range_capacity_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};  // helpers about to wait or waiting on wake_
  uint32_t gen_ = 0;              // last generation (the caller's)
  std::mutex mu_;
  std::condition_variable wake_;
  std::vector<std::thread> threads_;  // the caller's
};

// The kernels' view of a pool: a kernels::Parallel with `threads` workers
// whose items run through Workers::run. Lives as long as kernels use get().
class PoolParallel {
 public:
  PoolParallel(Workers& pool, int threads, double min_work = kernels::kMinSharedWork)
      : pool_(&pool) {
    par_.threads = threads;
    par_.min_work = min_work;
    par_.ctx = this;
    par_.run = [](void* ctx, int n, Workers::RawFn fn, void* arg) {
      const PoolParallel& self = *static_cast<const PoolParallel*>(ctx);
      self.pool_->run(n, self.par_.threads, fn, arg);
    };
  }
  PoolParallel(const PoolParallel&) = delete;
  PoolParallel& operator=(const PoolParallel&) = delete;
  const kernels::Parallel* get() const { return &par_; }

 private:
  Workers* pool_;
  kernels::Parallel par_;
};

}  // namespace spaedge
