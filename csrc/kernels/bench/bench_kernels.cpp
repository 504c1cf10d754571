// Standalone conv timing: prints median time and GFLOP/s per layer shape for
// every kernel table this CPU supports (or only those named on the command
// line). Not a test; numbers only.
//
//   bench_kernels [--threads N] [--reps N] [--isa NAME]... [--quick] [--rank R]
//
// NAME: an ISA of kernels/isas.inc (scalar, avx2, avx512, neon).
//
// --rank R times the fused low-rank entry (conv_lowrank) with rank R instead of
// conv; GFLOP/s then still counts only the conv's own FLOPs, so the ratio to
// the plain run is the cost of keeping the adapter unmerged.
//
// Threads are the runtime's pool (runtime/workers.h) lent to the kernels as a
// kernels::Parallel, as in inference.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/workers.h"

namespace k = spaedge::kernels;

namespace {

struct Shape {
  const char* name;
  int h, w, c, oc, kernel, stride, pad;
};

// CPU time of the calling thread: on a shared machine it excludes the time the
// thread was descheduled, so single-thread figures are stable.
double thread_cpu_s() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
#else
  return 0.0;
#endif
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  spaedge::Workers pool;
  std::vector<int> threads_list = {1, 2};
  int reps = 50;
  bool quick = false;
  int rank = -1;
  std::vector<std::string> isas;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads_list = {std::atoi(argv[++i])};
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--isa") && i + 1 < argc) {
      isas.push_back(argv[++i]);
    } else if (!std::strcmp(argv[i], "--rank") && i + 1 < argc) {
      rank = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--threads N] [--reps N] [--isa NAME]... [--quick] [--rank R]\n",
                   argv[0]);
      return 2;
    }
  }
  const std::vector<Shape> shapes = {
      {"res2 3x3", 56, 56, 64, 64, 3, 1, 1},   {"res3 3x3", 28, 28, 128, 128, 3, 1, 1},
      {"res4 3x3", 14, 14, 256, 256, 3, 1, 1}, {"res5 3x3", 7, 7, 512, 512, 3, 1, 1},
      {"1x1", 56, 56, 64, 64, 1, 1, 0},        {"1x1 s2 down", 56, 56, 64, 128, 1, 2, 0},
      {"3x3 s2", 56, 56, 64, 128, 3, 2, 1},    {"stem 7x7 s2", 224, 224, 3, 64, 7, 2, 3},
      {"pruned 3x3", 28, 28, 77, 45, 3, 1, 1}, {"pruned 1x1", 14, 14, 179, 203, 1, 1, 0},
  };

  std::vector<const k::KernelTable*> tables;
  for (const k::Isa& i : k::isas()) {  // every ISA of isas.inc this binary and CPU can run
    if (!i.supported) continue;
    if (!isas.empty() && std::find(isas.begin(), isas.end(), i.name) == isas.end()) continue;
    if (isas.empty() && quick && !std::strcmp(i.name, "scalar")) continue;
    tables.push_back(i.table);
  }

  // The best wall time is the figure of merit on a shared machine (other
  // processes only ever add time); the median is printed alongside. With one
  // thread, "GF/s cpu" uses the best thread CPU time instead, which does not
  // count time the thread spent descheduled.
  std::printf("%-8s %-12s %-22s %4s %9s %9s %9s %9s %9s\n", "isa", "layer", "shape", "thr",
              "best ms", "median ms", "GF/s best", "GF/s med", "GF/s cpu");
  for (const k::KernelTable* t : tables) {
    for (const Shape& s : shapes) {
      k::ConvGeometry g;
      g.in_h = s.h;
      g.in_w = s.w;
      g.in_c = s.c;
      g.out_c = s.oc;
      g.kernel = s.kernel;
      g.stride = s.stride;
      g.pad = s.pad;
      const size_t out_n = static_cast<size_t>(g.out_h()) * g.out_w() * g.out_c;
      std::vector<float> w(static_cast<size_t>(g.out_c) * g.kernel * g.kernel * g.in_c);
      std::vector<float> in(static_cast<size_t>(g.in_h) * g.in_w * g.in_c), bias(g.out_c);
      for (size_t i = 0; i < w.size(); ++i)
        w[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f;
      for (size_t i = 0; i < in.size(); ++i)
        in[i] = static_cast<float>((i * 104729) % 1000) * 1e-3f - 0.5f;
      std::vector<float> out(out_n);
      k::Epilogue ep;
      ep.bias = bias.data();
      ep.relu = true;
      const bool lr = rank >= 0;
      std::vector<float> la(static_cast<size_t>(std::max(rank, 0)) * g.in_c + 1, 0.01f);
      std::vector<float> lb(static_cast<size_t>(g.out_c) * std::max(rank, 0) + 1, 0.01f);
      std::vector<float> packed(lr ? t->conv_lowrank_packed_floats(g, rank)
                                   : t->conv_packed_floats(g));
      if (lr)
        t->conv_lowrank_pack(g, rank, w.data(), la.data(), lb.data(), packed.data());
      else
        t->conv_pack(g, w.data(), packed.data());
      auto run = [&](float* scratch, int threads) {
        const spaedge::PoolParallel par(pool, threads);
        if (lr)
          t->conv_lowrank(g, rank, packed.data(), in.data(), out.data(), ep, scratch, par.get());
        else
          t->conv(g, packed.data(), in.data(), out.data(), ep, scratch, par.get());
      };
      const double flops = 2.0 * out_n * g.kernel * g.kernel * g.in_c;
      for (int threads : threads_list) {
        std::vector<float> scratch((lr ? t->conv_lowrank_scratch_floats(g, rank, threads)
                                       : t->conv_scratch_floats(g, threads)) +
                                   1);
        const int n = std::strcmp(t->isa, "scalar") ? reps : std::max(3, reps / 10);
        for (int i = 0; i < 3; ++i) run(scratch.data(), threads);
        std::vector<double> times;
        double best_cpu = 1e30;
        for (int i = 0; i < n; ++i) {
          const double c0 = thread_cpu_s();
          const double t0 = now_s();
          run(scratch.data(), threads);
          times.push_back(now_s() - t0);
          best_cpu = std::min(best_cpu, thread_cpu_s() - c0);
        }
        std::sort(times.begin(), times.end());
        const double med = times[times.size() / 2];
        char shape[64];
        std::snprintf(shape, sizeof shape, "%dx%dx%d->%d k%ds%d", s.h, s.w, s.c, s.oc, s.kernel,
                      s.stride);
        char cpu[32] = "-";
        if (threads == 1 && best_cpu > 0.0)
          std::snprintf(cpu, sizeof cpu, "%.1f", flops / best_cpu * 1e-9);
        std::printf("%-8s %-12s %-22s %4d %9.3f %9.3f %9.1f %9.1f %9s\n", t->isa, s.name, shape,
                    threads, times[0] * 1e3, med * 1e3, flops / times[0] * 1e-9, flops / med * 1e-9,
                    cpu);
      }
    }
  }
  return 0;
}
