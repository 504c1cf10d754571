// Work sharing for task application that a busy machine cannot stall.
// Internal header.
//
// An OpenMP parallel region ends in a barrier that waits for every thread of
// the team, including one the OS has not scheduled yet; on a loaded machine
// that costs a scheduler time slice (~10 ms here) per region, and a spinning
// waiter makes it worse. Here the caller works through the items itself and
// helper threads join in when they get a CPU: items are claimed one at a time,
// and the caller waits only for items a helper has actually claimed. A helper
// that never ran costs nothing, so `threads` > 1 is never slower than 1 by
// more than one item. Idle helpers sleep on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace spaedge {

class Workers {
public:
    Workers() = default;
    ~Workers();
    Workers(const Workers&) = delete;
    Workers& operator=(const Workers&) = delete;

    // Calls fn(i, w) once for every item i in [0, n), on the calling thread
    // (w = 0) and up to threads - 1 helpers (w = 1, 2, ...: each w runs one
    // item at a time, so per-w scratch is safe); returns when all calls have
    // returned (their writes visible to the caller). fn must not throw. One
    // caller at a time (the Runtime's mutex).
    using Fn = std::function<void(int, int)>;
    void run(int n, int threads, const Fn& fn);

private:
    void helper(int index);
    // Claims items of generation `gen` and runs them; returns when none are left.
    void work(uint32_t gen, int n, const Fn* fn, int w);

    std::mutex mu_;
    std::condition_variable wake_;
    std::vector<std::thread> threads_;
    bool stop_ = false;
    uint32_t gen_ = 0;  // job generation (under mu_)
    int n_ = 0, wanted_ = 0;  // items and helpers of the current job (under mu_)
    const Fn* fn_ = nullptr;
    std::atomic<uint64_t> claim_{0};  // (generation << 32) | next item
    std::atomic<int> done_{0};        // items of the current generation finished
};

}  // namespace spaedge
