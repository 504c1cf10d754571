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
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
        published_.store(0, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
}

void Workers::work(uint32_t gen, int n, RawFn fn, void* arg, int w) {
    uint64_t c = claim_.load(std::memory_order_relaxed);
    for (;;) {
        if (uint32_t(c >> 32) != gen || int(uint32_t(c)) >= n) return;
        if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_relaxed))
            continue;  // c reloaded
        fn(arg, int(uint32_t(c)), w);
        done_.fetch_add(1, std::memory_order_release);
        c = claim_.load(std::memory_order_relaxed);
    }
}

bool Workers::spin(uint32_t seen) const {
    if (kSpinMicros <= 0) return false;
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    for (;;) {
        for (int i = 0; i < 64; ++i) {
            const uint32_t g = published_.load(std::memory_order_acquire);
            if (g != seen) return true;  // a new job, or 0: stopping
            cpu_pause();
        }
        if (std::chrono::steady_clock::now() >= until) return false;
    }
}

void Workers::helper(int index) {
    uint32_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        if (!stop_ && gen_ == seen) {
            // Idle: look for the next job for a little while, then sleep.
            lock.unlock();
            spin(seen);
            lock.lock();
            ++sleepers_;
            wake_.wait(lock, [&] { return stop_ || gen_ != seen; });
            --sleepers_;
        }
        if (stop_) return;
        seen = gen_;
        if (index >= wanted_) continue;  // not needed for this job
        const int n = n_;
        const RawFn fn = fn_;
        void* const arg = arg_;
        lock.unlock();
        work(seen, n, fn, arg, index + 1);
        lock.lock();
    }
}

void Workers::run(int n, int threads, RawFn fn, void* arg) {
    if (n <= 0) return;
    const int helpers = std::min(threads, n) - 1;
    if (helpers <= 0) {
        for (int i = 0; i < n; ++i) fn(arg, i, 0);
        return;
    }
    uint32_t gen;
    bool notify;
    {
        std::lock_guard<std::mutex> lock(mu_);
        while (int(threads_.size()) < helpers) {
            const int index = int(threads_.size());
            try {
                threads_.emplace_back([this, index] { helper(index); });
            } catch (...) {
                break;  // no more threads: fewer helpers
            }
        }
        gen = ++gen_;
        if (gen == 0) gen = ++gen_;  // 0 means "nothing seen yet" / "stopping"
        n_ = n;
        wanted_ = std::min(helpers, int(threads_.size()));
        fn_ = fn;
        arg_ = arg;
        done_.store(0, std::memory_order_relaxed);
        claim_.store(uint64_t(gen) << 32, std::memory_order_release);
        published_.store(gen, std::memory_order_release);
        notify = sleepers_ > 0;
    }
    if (notify) wake_.notify_all();
    work(gen, n, fn, arg, 0);
    // Every item is claimed; wait for the ones helpers are still running
    // (yielding, so a helper descheduled mid-item gets this CPU).
    while (done_.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace spaedge
