// The thread pool lent to kernels and task application (runtime/workers.h).
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "check.h"
#include "runtime/workers.h"

namespace {

// Workers: every item exactly once, per-worker ids below the thread count,
// helpers that start late (or never) still leave a complete result.
void test_workers() {
  spaedge::Workers pool;
  for (int round = 0; round < 200; ++round) {
    const int n = round % 37, threads = 1 + round % 4;
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n) + 1);
    std::vector<std::atomic<int>> busy(static_cast<size_t>(threads));
    std::atomic<bool> ok{true};
    pool.run(n, threads, [&](int i, int w) {
      if (i < 0 || i >= n || w < 0 || w >= threads) {
        ok = false;
        return;
      }
      if (busy[size_t(w)].fetch_add(1) != 0) ok = false;  // one item per worker id at a time
      if (round % 5 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
      hits[size_t(i)].fetch_add(1);
      busy[size_t(w)].fetch_sub(1);
    });
    for (int i = 0; i < n; ++i) ok = ok && hits[size_t(i)].load() == 1;
    CHECK(ok.load());
  }
}

}  // namespace

int main() {
  test_workers();
  return tcheck::summary("test_workers");
}
