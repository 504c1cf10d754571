#include "runtime/workers.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace spaedge {

namespace {

// One short pause between looks at a shared flag (lets the sibling
// hyperthread run and saves power while spinning).
inline void cpu_pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace

Workers::~Workers() {
  stop_.store(true, std::memory_order_seq_cst);
  {
    std::lock_guard<std::mutex> lock(mu_);
  }  // a helper between its check and its wait gets there
  wake_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void Workers::work(uint32_t gen, int n, int ranges, Range* range, RawFn fn, void* arg, int w) {
  for (int k = 0; k < ranges; ++k) {
    const int r = (w + k) % ranges;
    const int end = int(int64_t(n) * (r + 1) / ranges);
    std::atomic<uint64_t>& next = range[r].next;
    uint64_t c = next.load(std::memory_order_relaxed);
    for (;;) {
      if (uint32_t(c >> 32) != gen || int(uint32_t(c)) >= end) break;
      if (!next.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel,
                                      std::memory_order_relaxed))
        continue;  // c reloaded
      fn(arg, int(uint32_t(c)), w);
      done_.fetch_add(1, std::memory_order_release);
      c = next.load(std::memory_order_relaxed);
    }
  }
}

bool Workers::spin(uint32_t seen) const {
  if (kSpinMicros <= 0) return false;
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (published_.load(std::memory_order_relaxed) != seen ||
          stop_.load(std::memory_order_relaxed))
        return true;
      cpu_pause();
    }
    if (std::chrono::steady_clock::now() >= until) return false;
  }
}

void Workers::helper(int index) {
  uint32_t seen = 0;  // generation last taken (or skipped)
  for (;;) {
    if (stop_.load(std::memory_order_acquire)) return;
    const uint32_t g = published_.load(std::memory_order_acquire);
    if (g == 0 || g == seen) {
      // Nothing new (or a job being written): look for a while, then sleep.
      if (g == seen && !spin(seen)) {
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [&] {
          const uint32_t p = published_.load(std::memory_order_seq_cst);
          return stop_.load(std::memory_order_seq_cst) || (p != 0 && p != seen);
        });
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
      }
      continue;
    }
    const int n = n_.load(std::memory_order_relaxed);
    const int wanted = wanted_.load(std::memory_order_relaxed);
    const RawFn fn = fn_.load(std::memory_order_relaxed);
    void* const arg = arg_.load(std::memory_order_relaxed);
    Range* const range = range_.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (published_.load(std::memory_order_relaxed) != g) continue;  // rewritten meanwhile
    seen = g;
    if (index < wanted) work(g, n, wanted + 1, range, fn, arg, index + 1);
  }
}

void Workers::run(int n, int threads, RawFn fn, void* arg) {
  if (n <= 0) return;
  const int helpers = std::min(threads, n) - 1;
  if (helpers <= 0) {
    for (int i = 0; i < n; ++i) fn(arg, i, 0);
    return;
  }
  while (int(threads_.size()) < helpers) {
    const int index = int(threads_.size());
    try {
      threads_.emplace_back([this, index] { helper(index); });
    } catch (...) {
      break;  // no more threads: fewer helpers
    }
  }
  const int wanted = std::min(helpers, int(threads_.size()));
  const int ranges = wanted + 1;
  if (ranges > range_capacity_) {
    range_capacity_ = std::max(ranges, 2 * range_capacity_);
    range_blocks_.emplace_back(new Range[size_t(range_capacity_)]);
  }
  Range* const range = range_blocks_.back().get();
  uint32_t gen = ++gen_;
  if (gen == 0) gen = ++gen_;  // 0 means "being written"
  // Seqlock write: helpers ignore the fields until the generation is back.
  published_.store(0, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  n_.store(n, std::memory_order_relaxed);
  wanted_.store(wanted, std::memory_order_relaxed);
  fn_.store(fn, std::memory_order_relaxed);
  arg_.store(arg, std::memory_order_relaxed);
  range_.store(range, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  for (int r = 0; r < ranges; ++r)
    range[r].next.store((uint64_t(gen) << 32) | uint64_t(int64_t(n) * r / ranges),
                        std::memory_order_relaxed);
  published_.store(gen, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    {
      std::lock_guard<std::mutex> lock(mu_);
    }  // a helper between its check and its wait gets there
    wake_.notify_all();
  }
  work(gen, n, ranges, range, fn, arg, 0);
  // Every item is claimed; wait for the ones helpers are still running
  // (yielding, so a helper descheduled mid-item gets this CPU).
  while (done_.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace spaedge
