#include "runtime/workers.h"

#include <algorithm>

namespace spaedge {

Workers::~Workers() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
}

void Workers::work(uint32_t gen, int n, const Fn* fn, int w) {
    uint64_t c = claim_.load(std::memory_order_relaxed);
    for (;;) {
        if (uint32_t(c >> 32) != gen || int(uint32_t(c)) >= n) return;
        if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_relaxed))
            continue;  // c reloaded
        (*fn)(int(uint32_t(c)), w);
        done_.fetch_add(1, std::memory_order_release);
        c = claim_.load(std::memory_order_relaxed);
    }
}

void Workers::helper(int index) {
    uint32_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        wake_.wait(lock, [&] { return stop_ || (gen_ != seen && index < wanted_); });
        if (stop_) return;
        seen = gen_;
        const int n = n_;
        const Fn* fn = fn_;
        lock.unlock();
        work(seen, n, fn, index + 1);
        lock.lock();
    }
}

void Workers::run(int n, int threads, const Fn& fn) {
    if (n <= 0) return;
    const int helpers = std::min(threads, n) - 1;
    if (helpers <= 0) {
        for (int i = 0; i < n; ++i) fn(i, 0);
        return;
    }
    uint32_t gen;
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
        if (gen == 0) gen = ++gen_;  // 0 means "nothing seen yet"
        n_ = n;
        wanted_ = std::min(helpers, int(threads_.size()));
        fn_ = &fn;
        done_.store(0, std::memory_order_relaxed);
        claim_.store(uint64_t(gen) << 32, std::memory_order_release);
    }
    wake_.notify_all();
    work(gen, n, &fn, 0);
    // Every item is claimed; wait for the ones helpers are still running
    // (yielding, so a helper descheduled mid-item gets this CPU).
    while (done_.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace spaedge
