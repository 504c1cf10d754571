// How close task application (conv_apply, the work of a task switch) runs to
// this machine's memory speed. Not a test; numbers only.
//
//   bench_switch [--case d30|d10] [--reps N] [--isa NAME] [--int8]
//
// For every conv of ResNet-18 pruned as the benchmark suite's task is
// (benchmarks/bench_cases.py: random base, magnitude criterion; the kept
// channel counts below are that task's), one thread times:
//   apply   what Runtime::switch_to does in merged mode (rank-8 merge and BN
//           scale included): each conv from the base's OIHW weights
//           (conv_apply);
//   floor   apply's bytes moved with no arithmetic: every base row it reads,
//           read whole (a kept output's OIHW row holds all base inputs; kept
//           channels are scattered, so nearly every line of such a row is
//           touched), and as
//           many packed floats written as the switch writes, with the stores
//           the switch uses (streaming on x86, plain on aarch64);
//   read / write  the two halves of the floor alone.
// apply / floor is the share of the switch that is not data movement.
//
// --int8: the same convs on an int8 base (s8 OIHW rows, per-channel
// scales; docs/int8.md (c)), applied as the runtime's apply_int8 does, in
// output ranges of whole panels, next to fp32's apply in the same run:
//   int8 lowrank  qconv_dequant_gather + lowrank_merge (rank 8) +
//                 qconv_requant_pack per range (every conv has an update);
//   int8 keep     qconv_gather_pack (no conv has an update);
//   dequant / merge / requant   the three steps of int8 lowrank alone.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <time.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "kernels/kernels.h"
#include "runtime/buffer.h"

namespace k = spaedge::kernels;

namespace {

// taps, base in, base out, kept in, kept out; stride/pad/spatial size do not
// matter to the application (it writes weights only).
struct Layer {
  int taps, base_in, base_out, kept_in, kept_out;
};

// ResNet-18's convs in graph order (stem, layer1..layer4 with each stage's
// downsample after its first conv2) with the kept channel counts (in, out)
// of the suite's resnet18-d30 and -d10 tasks.
struct LayerCases {
  int taps, base_in, base_out;
  int d30[2], d10[2];
};
const LayerCases kLayers[] = {
    {49, 3, 64, {3, 47}, {3, 40}},        {9, 64, 64, {47, 37}, {40, 28}},
    {9, 64, 64, {37, 47}, {28, 40}},      {9, 64, 64, {47, 32}, {40, 25}},
    {9, 64, 64, {32, 47}, {25, 40}},      {9, 64, 128, {47, 79}, {40, 63}},
    {9, 128, 128, {79, 31}, {63, 20}},    {1, 64, 128, {47, 31}, {40, 20}},
    {9, 128, 128, {31, 65}, {20, 39}},    {9, 128, 128, {65, 31}, {39, 20}},
    {9, 128, 256, {31, 143}, {20, 86}},   {9, 256, 256, {143, 62}, {86, 20}},
    {1, 128, 256, {31, 62}, {20, 20}},    {9, 256, 256, {62, 177}, {20, 100}},
    {9, 256, 256, {177, 62}, {100, 20}},  {9, 256, 512, {62, 379}, {20, 231}},
    {9, 512, 512, {379, 218}, {231, 95}}, {1, 256, 512, {62, 218}, {20, 95}},
    {9, 512, 512, {218, 484}, {95, 416}}, {9, 512, 512, {484, 218}, {416, 95}},
};

constexpr int kRank = 8;

// A sorted random subset of n of [0, total), as a pruned task keeps.
std::vector<int32_t> kept(int n, int total, std::mt19937& rng) {
  std::vector<int32_t> all(size_t(total), 0);
  for (int i = 0; i < total; ++i) all[size_t(i)] = i;
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(size_t(n));
  std::sort(all.begin(), all.end());
  return all;
}

struct Conv {
  Layer l;
  int kernel;
  spaedge::FloatBuffer oihw;  // the base weights, in the bundle's OIHW order
  std::vector<int32_t> in_index, out_index;
  std::vector<float> a, bt, scale;
  size_t packed_offset = 0, packed_floats = 0;
  // --int8: the base as s8 with per-channel scales, B' [out][rank], and
  // the output ranges the runtime's apply_int8 would cut.
  std::vector<int8_t> s8;
  std::vector<float> s8scale, b;
  size_t qoffset = 0;
  std::vector<std::pair<int, int>> ranges;
};

// Sums whole rows (so the loads cannot be dropped) and writes `n` floats with
// the kind of stores the switch uses.
float read_rows(const float* const* rows, int nrows, int len) {
#if defined(__x86_64__) || defined(_M_X64)
  __m128 s0 = _mm_setzero_ps(), s1 = s0;
  for (int r = 0; r < nrows; ++r) {
    const float* p = rows[r];
    int i = 0;
    for (; i + 8 <= len; i += 8) {
      s0 = _mm_add_ps(s0, _mm_loadu_ps(p + i));
      s1 = _mm_add_ps(s1, _mm_loadu_ps(p + i + 4));
    }
    for (; i < len; ++i) s0 = _mm_add_ss(s0, _mm_set_ss(p[i]));
  }
  float out[4];
  _mm_storeu_ps(out, _mm_add_ps(s0, s1));
  return out[0] + out[1] + out[2] + out[3];
#elif defined(__aarch64__)
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0;
  float tail = 0.0f;
  for (int r = 0; r < nrows; ++r) {
    const float* p = rows[r];
    int i = 0;
    for (; i + 8 <= len; i += 8) {
      s0 = vaddq_f32(s0, vld1q_f32(p + i));
      s1 = vaddq_f32(s1, vld1q_f32(p + i + 4));
    }
    for (; i < len; ++i) tail += p[i];
  }
  return vaddvq_f32(vaddq_f32(s0, s1)) + tail;
#else
  float s = 0.0f;
  for (int r = 0; r < nrows; ++r)
    for (int i = 0; i < len; ++i) s += rows[r][i];
  return s;
#endif
}

void write_floats(float* d, size_t n, float v) {
#if defined(__x86_64__) || defined(_M_X64)
  const __m128 x = _mm_set1_ps(v);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_stream_ps(d + i, x);  // d is 64-byte aligned, n a multiple of 16
  for (; i < n; ++i) d[i] = v;
  _mm_sfence();
#elif defined(__aarch64__)
  const float32x4_t x = vdupq_n_f32(v);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(d + i, x);
  for (; i < n; ++i) d[i] = v;
#else
  for (size_t i = 0; i < n; ++i) d[i] = v;
#endif
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Measure {
  const char* name;
  std::function<void()> fn;
  std::vector<double> ms;
  std::vector<double> cpu =
      {};  // --int8: this thread's CPU time (a loaded machine's steals excluded)
};

double cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// --int8: see the header. Returns main's exit code.
int bench_int8(std::vector<Conv>& convs, const k::KernelTable& t, const std::string& which,
               int reps, const std::function<void()>& fp32_apply) {
  constexpr size_t kItemElems = size_t(48) << 10;  // as runtime/apply.cpp
  size_t qtotal = 0, slice = 0, s8_read = 0;
  std::vector<k::QApplyArgs> args(convs.size());
  for (size_t c = 0; c < convs.size(); ++c) {
    Conv& v = convs[c];
    const size_t n = v.oihw.size();
    v.s8.resize(n);
    for (size_t i = 0; i < n; ++i) v.s8[i] = int8_t(int(i % 199) - 99);
    v.s8scale.assign(size_t(v.l.base_out), 1e-3f);
    v.b.assign(size_t(kRank) * v.l.kept_out, 0.02f);
    k::QApplyArgs& a = args[c];
    a.g.in_h = a.g.in_w = 7;
    a.g.in_c = v.l.kept_in;
    a.g.out_c = v.l.kept_out;
    a.g.kernel = v.kernel;
    a.g.pad = v.kernel / 2;
    a.base = v.s8.data();
    a.base_scale = v.s8scale.data();
    a.base_in = v.l.base_in;
    a.base_out = v.l.base_out;
    a.out_index = v.out_index.data();
    a.in_index = v.in_index.data();
    a.scale = v.scale.data();
    v.qoffset = qtotal;
    qtotal += (t.qconv_packed_bytes(a.g) + 63) / 64 * 64;
    const size_t K = size_t(v.l.taps) * v.l.kept_in;
    const int step = int(std::max<size_t>(16, kItemElems / K / 16 * 16));
    for (int o0 = 0; o0 < v.l.kept_out; o0 += step)
      v.ranges.push_back({o0, std::min(v.l.kept_out, o0 + step)});
    slice = std::max(slice, size_t(std::min(step, v.l.kept_out)) * K);
    s8_read += size_t(v.l.kept_out) * v.l.base_in * v.l.taps;
  }
  spaedge::FloatBuffer qpacked, w, ws;
  qpacked.resize((qtotal + 3) / 4);
  w.resize(slice);
  ws.resize(512);
  auto* qp = reinterpret_cast<unsigned char*>(qpacked.data());
  auto each_range = [&](const std::function<void(size_t, const Conv&, int, int)>& f) {
    for (size_t c = 0; c < convs.size(); ++c)
      for (const auto& r : convs[c].ranges) f(c, convs[c], r.first, r.second);
  };
  auto dequant = [&](size_t c, const Conv&, int o0, int o1) {
    t.qconv_dequant_gather(args[c], o0, o1, w.data());
  };
  auto merge = [&](size_t c, const Conv& v, int o0, int o1) {
    t.lowrank_merge(o1 - o0, v.l.kept_in, v.kernel, kRank, v.a.data(),
                    v.b.data() + size_t(o0) * kRank, w.data());
    (void)c;
  };
  auto requant = [&](size_t c, const Conv& v, int o0, int o1) {
    t.qconv_requant_pack(args[c].g, w.data(), args[c].scale, o0, o1, ws.data(), qp + v.qoffset);
  };
  // The requantization alone reads rows the dequantization left (the last range's).
  std::vector<Measure> ms = {
      {"fp32 apply", fp32_apply, {}},
      {"int8 lowrank",
       [&] {
         each_range([&](size_t c, const Conv& v, int o0, int o1) {
           dequant(c, v, o0, o1);
           merge(c, v, o0, o1);
           requant(c, v, o0, o1);
         });
       },
       {}},
      {"int8 keep",
       [&] {
         each_range([&](size_t c, const Conv& v, int o0, int o1) {
           t.qconv_gather_pack(args[c], o0, o1, ws.data(), qp + v.qoffset);
         });
       },
       {}},
      {"  dequant", [&] { each_range(dequant); }, {}},
      {"  merge", [&] { each_range(merge); }, {}},
      {"  requant", [&] { each_range(requant); }, {}},
  };
  for (Measure& m : ms) m.fn();
  for (int r = 0; r < reps; ++r)
    for (Measure& m : ms) {
      const double t0 = now_ms(), c0 = cpu_ms();
      m.fn();
      m.cpu.push_back(cpu_ms() - c0);
      m.ms.push_back(now_ms() - t0);
    }
  std::printf(
      "bench_switch --int8: ResNet-18 %s, isa %s, 1 thread, %d reps; int8 reads %.1f MB of base "
      "rows and writes %.1f MB of panels\n",
      which.c_str(), t.isa, reps, s8_read * 1e-6, qtotal * 1e-6);
  const double fp32 = median(ms[0].ms), fp32_cpu = median(ms[0].cpu);
  for (const Measure& m : ms)
    std::printf("  %-13s median %7.3f ms (%.2fx fp32 apply), thread CPU %7.3f ms (%.2fx)\n", m.name,
                median(m.ms), median(m.ms) / fp32, median(m.cpu), median(m.cpu) / fp32_cpu);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string which = "d30";
  int reps = 40;
  std::string isa;
  bool int8 = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--int8")) {
      int8 = true;
    } else if (!std::strcmp(argv[i], "--case") && i + 1 < argc) {
      which = argv[++i];
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = std::max(3, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--isa") && i + 1 < argc) {
      isa = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: %s [--case d30|d10] [--reps N] [--isa NAME (kernels/isas.inc)] "
                   "[--int8]\n",
                   argv[0]);
      return 2;
    }
  }
  if (which != "d30" && which != "d10") {
    std::fprintf(stderr, "bench_switch: --case must be d30 or d10, got '%s'\n", which.c_str());
    return 2;
  }
  const k::KernelTable* t = &k::active();
  if (!isa.empty()) {
    const k::Isa* i = k::find_isa(isa.c_str());  // an ISA of isas.inc
    t = i && i->supported ? i->table : nullptr;
    if (!t) {
      std::fprintf(stderr,
                   "bench_switch: ISA '%s' is not built into this binary or not supported here\n",
                   isa.c_str());
      return 2;
    }
  }

  std::mt19937 rng(0);
  std::vector<Conv> convs(std::size(kLayers));
  size_t packed_total = 0, read_floats = 0, base_floats = 0;
  for (size_t c = 0; c < convs.size(); ++c) {
    Conv& v = convs[c];
    const LayerCases& lc = kLayers[c];
    const int* kept_io = which == "d30" ? lc.d30 : lc.d10;
    v.l = {lc.taps, lc.base_in, lc.base_out, kept_io[0], kept_io[1]};
    v.kernel = v.l.taps == 49 ? 7 : v.l.taps == 9 ? 3 : 1;
    const size_t n = size_t(v.l.taps) * v.l.base_in * v.l.base_out;
    v.oihw.resize(n);
    for (size_t i = 0; i < n; ++i) v.oihw.data()[i] = float(int(i % 199) - 99) * 1e-3f;
    base_floats += n;
    v.in_index = kept(v.l.kept_in, v.l.base_in, rng);
    v.out_index = kept(v.l.kept_out, v.l.base_out, rng);
    v.a.assign(size_t(kRank) * v.l.kept_in, 0.01f);
    v.bt.assign(size_t(kRank) * v.l.kept_out, 0.02f);
    v.scale.assign(size_t(v.l.kept_out), 1.5f);
    k::ConvGeometry g;
    g.in_h = g.in_w = 7;
    g.in_c = v.l.kept_in;
    g.out_c = v.l.kept_out;
    g.kernel = v.kernel;
    g.pad = v.kernel / 2;
    v.packed_offset = packed_total;
    v.packed_floats = t->conv_packed_floats(g);
    packed_total += spaedge::round_floats(v.packed_floats);
  }
  spaedge::FloatBuffer packed;
  packed.resize(packed_total);
  std::memset(packed.data(), 0, packed_total * sizeof(float));

  auto args_of = [](const Conv& v) {
    k::ApplyArgs a;
    a.g.in_h = a.g.in_w = 7;
    a.g.in_c = v.l.kept_in;
    a.g.out_c = v.l.kept_out;
    a.g.kernel = v.kernel;
    a.g.pad = v.kernel / 2;
    a.base = v.oihw.data();
    a.base_in = v.l.base_in;
    a.base_out = v.l.base_out;
    a.out_index = v.out_index.data();
    a.in_index = v.in_index.data();
    a.rank = kRank;
    a.a = v.a.data();
    a.bt = v.bt.data();
    a.scale = v.scale.data();
    return a;
  };
  for (const Conv& v : convs) read_floats += size_t(v.l.kept_out) * v.l.base_in * v.l.taps;

  // Row pointers (and length) of the floor pass: every base row apply reads.
  std::vector<std::vector<const float*>> rows(convs.size());
  std::vector<int> row_len(convs.size());
  for (size_t c = 0; c < convs.size(); ++c) {
    const Conv& v = convs[c];
    row_len[c] = v.l.base_in * v.l.taps;
    for (int32_t o : v.out_index) rows[c].push_back(v.oihw.data() + size_t(o) * size_t(row_len[c]));
  }

  auto apply = [&] {
    for (const Conv& v : convs)
      t->conv_apply(args_of(v), 0, v.l.kept_out, packed.data() + v.packed_offset);
  };
  volatile float sink = 0.0f;
  auto read = [&] {
    float s = 0.0f;
    for (size_t c = 0; c < convs.size(); ++c)
      s += read_rows(rows[c].data(), int(rows[c].size()), row_len[c]);
    sink = sink + s;
  };
  auto write = [&] {
    for (const Conv& v : convs)
      write_floats(packed.data() + v.packed_offset, spaedge::round_floats(v.packed_floats), 0.5f);
  };
  // Interleaved per conv, as the switch reads and writes.
  auto floor = [&] {
    float s = 0.0f;
    for (size_t c = 0; c < convs.size(); ++c) {
      s += read_rows(rows[c].data(), int(rows[c].size()), row_len[c]);
      write_floats(packed.data() + convs[c].packed_offset,
                   spaedge::round_floats(convs[c].packed_floats), s);
    }
    sink = sink + s;
  };

  std::vector<Measure> ms = {
      {"apply", apply, {}}, {"floor", floor, {}}, {"read", read, {}}, {"write", write, {}}};
  if (int8) return bench_int8(convs, *t, which, reps, apply);
  for (Measure& m : ms) m.fn();  // page in, warm up
  // Taking turns, so each measure sees the same machine.
  for (int r = 0; r < reps; ++r)
    for (Measure& m : ms) {
      const double t0 = now_ms();
      m.fn();
      m.ms.push_back(now_ms() - t0);
    }

  const double mb_read = read_floats * 4e-6, mb_write = packed_total * 4e-6;
  std::printf(
      "bench_switch: ResNet-18 %s, isa %s, 1 thread, %d reps; base %.1f MB; apply reads %.1f MB "
      "of base rows and writes %.1f MB of panels\n",
      which.c_str(), t->isa, reps, base_floats * 4e-6, mb_read, mb_write);
  const double floor_ms = median(ms[1].ms);
  for (const Measure& m : ms) {
    const double med = median(m.ms);
    const std::string name = m.name;
    const double mb = name == "read" ? mb_read : name == "write" ? mb_write : mb_read + mb_write;
    std::printf(
        "  %-9s median %7.3f ms  p10 %7.3f ms  %6.1f GB/s  %.2fx floor\n", m.name, med,
        [&] {
          std::vector<double> v = m.ms;
          std::sort(v.begin(), v.end());
          return v[v.size() / 10];
        }(),
        mb / med, med / floor_ms);
  }
  return 0;
}
