// int8 against fp32 convolution on the same shapes, one thread: the conv
// layers of ResNet-18 with every channel count at 30 % (the pruned network
// of issue 19), each layer's median time in both precisions, and the whole
// network's convs (each layer times its count in ResNet-18). Not a test;
// numbers only, noisy on a shared machine (the "cpu" columns use the best
// thread-CPU time, which ignores time spent descheduled).
//
//   bench_int8 [--isa NAME] [--reps N] [--density D]
//
// NAME: an ISA of kernels/isas.inc; default the one dispatch picks.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace k = spaedge::kernels;

namespace {

double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Layer {
  const char* name;
  int h, c, oc, kernel, stride, pad, count;  // count: how often ResNet-18 has it
};

struct Time {
  double median = 0, best_cpu = 0;
};

template <class F>
Time time_it(int reps, F&& f) {
  f();  // warm up
  std::vector<double> wall;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s(), c0 = thread_cpu_s();
    f();
    const double c1 = thread_cpu_s(), t1 = now_s();
    wall.push_back(t1 - t0);
    best = std::min(best, c1 - c0);
  }
  std::sort(wall.begin(), wall.end());
  return {wall[wall.size() / 2], best};
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20;
  double density = 0.3;
  const k::KernelTable* t = &k::active();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--density" && i + 1 < argc) {
      density = std::atof(argv[++i]);
    } else if (a == "--isa" && i + 1 < argc) {
      const k::Isa* isa = k::find_isa(argv[++i]);
      if (!isa || !isa->supported) {
        std::fprintf(stderr, "bench_int8: ISA %s is not built or not supported by this CPU\n",
                     argv[i]);
        return 2;
      }
      t = isa->table;
    } else {
      std::fprintf(stderr, "usage: bench_int8 [--isa NAME] [--reps N] [--density D]\n");
      return 2;
    }
  }
  if (!(density > 0.0 && density <= 1.0)) {
    std::fprintf(stderr, "bench_int8: --density must be in (0, 1]\n");
    return 2;
  }
  auto kept = [&](int c) { return std::max(1, static_cast<int>(std::lround(c * density))); };
  const int c1 = kept(64), c2 = kept(128), c3 = kept(256), c4 = kept(512);
  const Layer layers[] = {
      {"stem 224 7x7 s2", 224, 3, c1, 7, 2, 3, 1}, {"l1 56 3x3", 56, c1, c1, 3, 1, 1, 4},
      {"l2 56 3x3 s2", 56, c1, c2, 3, 2, 1, 1},    {"l2 28 3x3", 28, c2, c2, 3, 1, 1, 3},
      {"l2 down 1x1 s2", 56, c1, c2, 1, 2, 0, 1},  {"l3 28 3x3 s2", 28, c2, c3, 3, 2, 1, 1},
      {"l3 14 3x3", 14, c3, c3, 3, 1, 1, 3},       {"l3 down 1x1 s2", 28, c2, c3, 1, 2, 0, 1},
      {"l4 14 3x3 s2", 14, c3, c4, 3, 2, 1, 1},    {"l4 7 3x3", 7, c4, c4, 3, 1, 1, 3},
      {"l4 down 1x1 s2", 14, c3, c4, 1, 2, 0, 1},
  };
  std::printf(
      "bench_int8: isa %s, int8 path %s, ResNet-18 convs at density %.2f, 1 thread, %d reps\n",
      t->isa, t->qconv_variant(), density, reps);
  std::printf("%-18s %5s %5s | %9s %9s | %9s %9s | %7s %7s\n", "layer", "in_c", "out_c", "fp32 ms",
              "int8 ms", "fp32 GF/s", "int8 GOP/s", "x wall", "x cpu");
  double sum_f = 0, sum_q = 0, sum_fc = 0, sum_qc = 0;
  uint32_t seed = 1;
  auto rnd = [&] {
    seed = seed * 1664525u + 1013904223u;
    return seed >> 8;
  };
  for (const Layer& l : layers) {
    k::ConvGeometry g;
    g.in_h = g.in_w = l.h;
    g.in_c = l.c;
    g.out_c = l.oc;
    g.kernel = l.kernel;
    g.stride = l.stride;
    g.pad = l.pad;
    const size_t nin = size_t(l.h) * l.h * l.c, nout = size_t(g.out_h()) * g.out_w() * l.oc;
    const size_t nw = size_t(l.oc) * l.kernel * l.kernel * l.c;
    // fp32
    std::vector<float> wf(nw), xf(nin), yf(nout), bias(size_t(l.oc));
    for (auto& v : wf) v = float(rnd() % 2001) * 1e-3f - 1.0f;
    for (auto& v : xf) v = float(rnd() % 1001) * 1e-3f;
    for (auto& v : bias) v = 0.01f;
    std::vector<float> pf(t->conv_packed_floats(g) + 16), sf(t->conv_scratch_floats(g, 1) + 16);
    t->conv_pack(g, wf.data(), pf.data());
    k::Epilogue ep;
    ep.bias = bias.data();
    ep.relu = true;
    const Time tf =
        time_it(reps, [&] { t->conv(g, pf.data(), xf.data(), yf.data(), ep, sf.data(), nullptr); });
    // int8
    std::vector<int8_t> wq(nw);
    std::vector<uint8_t> xq(nin), yq(nout);
    for (auto& v : wq) v = int8_t(int(rnd() % 255) - 127);
    for (auto& v : xq) v = uint8_t(rnd() % 256);
    std::vector<float> mul(size_t(l.oc), 1e-3f), add(size_t(l.oc), 1.0f);
    std::vector<uint8_t> pq(t->qconv_packed_bytes(g) + 64), sq(t->qconv_scratch_bytes(g, 1) + 64);
    uint8_t* pq_al = pq.data() + (64 - reinterpret_cast<uintptr_t>(pq.data()) % 64) % 64;
    t->qconv_pack(g, wq.data(), pq_al);
    k::QEpilogue qe;
    qe.in_zp = 3;
    qe.mul = mul.data();
    qe.add = add.data();
    qe.relu = true;
    const Time tq =
        time_it(reps, [&] { t->qconv(g, pq_al, xq.data(), yq.data(), qe, sq.data(), nullptr); });
    const double ops = 2.0 * double(nout) * l.kernel * l.kernel * l.c;
    std::printf("%-18s %5d %5d | %9.3f %9.3f | %9.1f %9.1f | %7.2f %7.2f\n", l.name, l.c, l.oc,
                tf.median * 1e3, tq.median * 1e3, ops / tf.best_cpu * 1e-9,
                ops / tq.best_cpu * 1e-9, tf.median / tq.median, tf.best_cpu / tq.best_cpu);
    sum_f += tf.median * l.count;
    sum_q += tq.median * l.count;
    sum_fc += tf.best_cpu * l.count;
    sum_qc += tq.best_cpu * l.count;
  }
  std::printf("%-30s | %9.3f %9.3f | %19s | %7.2f %7.2f\n", "ResNet-18 convs (x count)",
              sum_f * 1e3, sum_q * 1e3, "", sum_f / sum_q, sum_fc / sum_qc);
  return 0;
}
