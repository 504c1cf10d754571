// The int8 kernel tester: every int8 kernel of every kernel table compiled
// into this binary that the CPU can run, checked BIT FOR BIT against the
// scalar reference, and scalar against the definitions (QEpilogue's formula,
// kernels.inc) computed here from the unpacked OHWI weights.
//
// Shapes: awkward channel counts (not multiples of 4 or 16), kernels 1/3/5/7,
// strides 1/2, pads 0-3, residual on/off (also in place), ReLU on/off, zero
// points and weights at the u8/s8 extremes, outputs saturating at 0 and 255,
// exact rounding ties, and the largest K the scheme allows. Buffers carry
// canaries; a kernel writing outside its output, packed weights or scratch,
// or writing to its input, fails. qconv and qmaxpool also run with 2 and 3
// workers (threads, and a serial stand-in running the items shuffled on
// random workers): bit for bit the serial result.
//
//   test_kernels_int8 [--expect-variant NAME]
//
// --expect-variant: the active table's qconv_variant() must be NAME (CI runs
// the aarch64 build under qemu as a Cortex-A72, "neon", and a Cortex-A76,
// "neondot", so both NEON paths are exercised).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "kernel_check.h"

namespace {

// f(par, name) for serial (null) and every shared way of kernel_check.h.
template <class F>
void each_sharing(F&& f) {
  with_sharing(kSerial, [&](const k::Parallel* par) { f(par, "serial"); });
  for (const Sharing& sh : kShared) {
    const std::string name = sh.name();
    with_sharing(sh, [&](const k::Parallel* par) { f(par, name.c_str()); });
  }
}

// ---- guarded buffers ------------------------------------------------------------

constexpr size_t kByteGuard = 64;
constexpr uint8_t kByteCanary = 0xA5;

struct ByteGuarded {
  std::vector<uint8_t> v;
  size_t n;
  explicit ByteGuarded(size_t bytes) : v(bytes + 2 * kByteGuard + 64, kByteCanary), n(bytes) {}
  // 64-byte aligned start (packed weights are read with 64-byte loads).
  uint8_t* data() {
    uintptr_t p = reinterpret_cast<uintptr_t>(v.data()) + kByteGuard;
    p = (p + 63) & ~uintptr_t(63);
    return reinterpret_cast<uint8_t*>(p);
  }
  bool intact() {
    const uint8_t* d = data();
    for (const uint8_t* p = v.data(); p < d; ++p)
      if (*p != kByteCanary) return false;
    for (const uint8_t* p = d + n; p < v.data() + v.size(); ++p)
      if (*p != kByteCanary) return false;
    return true;
  }
};

// ---- the definitions ----------------------------------------------------------

uint8_t requant_def(int32_t acc, int32_t wsum, float mul, float add, const uint8_t* res,
                    const k::QEpilogue& ep) {
  float t = std::fma(static_cast<float>(acc - ep.in_zp * wsum), mul, add);
  if (res) t = std::fma(static_cast<float>(int(*res) - ep.res_zp), ep.res_mul, t);
  const float lo = ep.relu ? 0.0f : float(-ep.out_zp), hi = float(255 - ep.out_zp);
  t = t > lo ? t : lo;  // NaN: the lower bound
  t = t < hi ? t : hi;
  return static_cast<uint8_t>(int(std::nearbyint(t)) + ep.out_zp);
}

std::vector<uint8_t> qconv_def(const k::ConvGeometry& g, const std::vector<int8_t>& w,
                               const uint8_t* in, const k::QEpilogue& ep) {
  const int oh = g.out_h(), ow = g.out_w();
  std::vector<uint8_t> out(size_t(oh) * ow * g.out_c);
  for (int oy = 0; oy < oh; ++oy)
    for (int ox = 0; ox < ow; ++ox)
      for (int o = 0; o < g.out_c; ++o) {
        int32_t acc = 0, wsum = 0;
        for (int ky = 0; ky < g.kernel; ++ky)
          for (int kx = 0; kx < g.kernel; ++kx) {
            const int iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
            const bool inside = iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w;
            for (int ci = 0; ci < g.in_c; ++ci) {
              const int wv = w[((size_t(o) * g.kernel + ky) * g.kernel + kx) * g.in_c + ci];
              const int x = inside ? in[(size_t(iy) * g.in_w + ix) * g.in_c + ci] : ep.in_zp;
              acc += wv * x;
              wsum += wv;
            }
          }
        const size_t e = (size_t(oy) * ow + ox) * g.out_c + o;
        out[e] = requant_def(acc, wsum, ep.mul[o], ep.add ? ep.add[o] : 0.0f,
                             ep.residual ? ep.residual + e : nullptr, ep);
      }
  return out;
}

// ---- qconv ------------------------------------------------------------------------

struct ConvCase {
  k::ConvGeometry g;
  bool residual = false, relu = false;
  int wmode = 0;    // 0 random, 1 all 127, 2 all -128, 3 random in {-128, 127}, 4 all 1
  int xmode = 0;    // 0 random, 1 all 255, 2 all 0, 3 random in {0, 255}, 4 element index % 256
  int in_zp = -1;   // -1: random
  int out_zp = -1;  // -1: random
  int mulmode = 0;  // 0 random scale, 1 exact ties (0.5), 2 huge (saturates),
                    // 3 near ties that only a fused multiply-add resolves right,
                    // 4 random with NaN and infinite scales and biases
  std::string name() const {
    char b[200];
    std::snprintf(b, sizeof b, "%dx%dx%d->%d k%d s%d p%d%s%s w%d x%d", g.in_h, g.in_w, g.in_c,
                  g.out_c, g.kernel, g.stride, g.pad, residual ? " res" : "", relu ? " relu" : "",
                  wmode, xmode);
    return b;
  }
};

struct Saturation {
  size_t zeros = 0, fulls = 0, total = 0;
  size_t unfused = 0;  // outputs where mul-then-add would differ from the fma
};

void run_conv_case(const ConvCase& cc, uint64_t seed, Saturation& sat) {
  const k::ConvGeometry& g = cc.g;
  Rng rng(seed);
  const size_t nin = size_t(g.in_h) * g.in_w * g.in_c;
  const size_t nout = size_t(g.out_h()) * g.out_w() * g.out_c;
  const size_t nw = size_t(g.out_c) * g.kernel * g.kernel * g.in_c;
  std::vector<int8_t> w(nw);
  for (auto& v : w)
    v = static_cast<int8_t>(cc.wmode == 1   ? 127
                            : cc.wmode == 2 ? -128
                            : cc.wmode == 3 ? (rng.next() & 1 ? 127 : -128)
                            : cc.wmode == 4 ? 1
                                            : rng.range(-128, 127));
  std::vector<uint8_t> in(nin);
  for (auto& v : in)
    v = static_cast<uint8_t>(cc.xmode == 1   ? 255
                             : cc.xmode == 2 ? 0
                             : cc.xmode == 3 ? (rng.next() & 1 ? 255 : 0)
                             : cc.xmode == 4 ? (&v - in.data()) % 256
                                             : rng.range(0, 255));
  k::QEpilogue ep;
  ep.in_zp = cc.in_zp >= 0 ? cc.in_zp : rng.range(0, 255);
  ep.out_zp = cc.out_zp >= 0 ? cc.out_zp : rng.range(0, 255);
  ep.relu = cc.relu;
  // Scales such that the output spans its range: |acc - corr| is about
  // 128 * 128 * sqrt(K) for random data.
  const double K = double(g.kernel) * g.kernel * g.in_c;
  std::vector<float> mul(size_t(g.out_c)), add(size_t(g.out_c));
  for (int o = 0; o < g.out_c; ++o) {
    if (cc.mulmode == 1) {
      mul[size_t(o)] = (o % 2) ? 0.5f : 0.25f;
      add[size_t(o)] = float(rng.range(-4, 4)) * 0.5f;
    } else if (cc.mulmode == 3) {
      // t = v0 * mul + add lands within rounding of n + 0.5 for one input
      // value v0 (a 1x1 conv of one input channel, weights 1: acc - corr =
      // x - in_zp): multiply-then-add rounds to the tie exactly, the fused
      // multiply-add to one side of it.
      const int v0 = rng.range(-ep.in_zp, 255 - ep.in_zp);
      const float m = rng.uniform(0.1f, 1.0f);
      const int n = rng.range(-ep.out_zp, 254 - ep.out_zp);
      const volatile float prod = float(v0) * m;  // volatile: never contracted into an fma
      mul[size_t(o)] = m;
      add[size_t(o)] = (float(n) + 0.5f) - prod;
    } else if (cc.mulmode == 2) {
      mul[size_t(o)] = rng.uniform(-1.0f, 1.0f);
      add[size_t(o)] = rng.uniform(-1e4f, 1e4f);
    } else {
      mul[size_t(o)] = float(rng.uniform(0.2f, 2.0f) * 128.0 / (128.0 * 128.0 * std::sqrt(K)));
      add[size_t(o)] = rng.uniform(-100.0f, 100.0f);
    }
  }
  if (cc.mulmode == 4 && g.out_c >= 5) {
    mul[0] = std::nanf("");
    mul[1] = INFINITY;
    mul[2] = -INFINITY;
    add[3] = std::nanf("");
    add[4] = -INFINITY;
  }
  ep.mul = mul.data();
  ep.add = (seed % 5 == 4 && cc.mulmode != 3) ? nullptr : add.data();
  std::vector<uint8_t> res;
  if (cc.residual) {
    res.resize(nout);
    for (auto& v : res) v = static_cast<uint8_t>(rng.range(0, 255));
    ep.residual = res.data();
    ep.res_zp = rng.range(0, 255);
    ep.res_mul = rng.uniform(0.1f, 1.5f);
  }

  const std::vector<uint8_t> want = qconv_def(g, w, in.data(), ep);
  if (cc.mulmode == 3)
    for (size_t e = 0; e < nout; ++e) {
      const int o = int(e % size_t(g.out_c));
      const int v = int(in[e / size_t(g.out_c)]) - ep.in_zp;
      const volatile float prod = float(v) * mul[size_t(o)];  // rounded on its own
      float t = prod;
      t = std::min(std::max(t + add[size_t(o)], float(-ep.out_zp)), float(255 - ep.out_zp));
      sat.unfused += uint8_t(int(std::nearbyint(t)) + ep.out_zp) != want[e];
    }
  for (uint8_t v : want) {
    sat.zeros += v == 0;
    sat.fulls += v == 255;
  }
  sat.total += want.size();

  const k::KernelTable& sc = k::scalar::table();
  const size_t pbytes = sc.qconv_packed_bytes(g);
  std::vector<uint8_t> scalar_packed;
  std::vector<uint8_t> scalar_out;
  for (const k::Isa& isa : k::isas()) {
    if (!isa.supported) continue;
    const k::KernelTable& t = *isa.table;
    const std::string what = std::string(isa.name) + " (" + t.qconv_variant() + ") " + cc.name();
    CHECK_MSG(t.qconv_packed_bytes(g) == pbytes, what);
    ByteGuarded packed(pbytes);
    t.qconv_pack(g, w.data(), packed.data());
    CHECK_MSG(packed.intact(), what + ": qconv_pack wrote outside");
    std::vector<uint8_t> pk(packed.data(), packed.data() + pbytes);
    if (scalar_packed.empty())
      scalar_packed = pk;
    else
      CHECK_MSG(pk == scalar_packed, what + ": packed layout differs from scalar's");

    each_sharing([&](const k::Parallel* par, const char* sharing) {
      const int threads = par ? par->threads : 1;
      ByteGuarded scratch(t.qconv_scratch_bytes(g, threads));
      ByteGuarded gin(nin), gout(nout);
      std::memcpy(gin.data(), in.data(), nin);
      std::memset(gout.data(), 0x5A, nout);
      t.qconv(g, packed.data(), gin.data(), gout.data(), ep, scratch.data(), par);
      const std::string w2 = what + " " + sharing;
      CHECK_MSG(gin.intact() && gout.intact() && scratch.intact(),
                w2 + ": wrote outside its buffers");
      CHECK_MSG(std::memcmp(gin.data(), in.data(), nin) == 0, w2 + ": input modified");
      std::vector<uint8_t> got(gout.data(), gout.data() + nout);
      if (std::string(isa.name) == "scalar" && !par) {
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < nout; ++i)
          if (got[i] != want[i] && bad++ == 0) first = i;
        CHECK_MSG(bad == 0, w2 + ": scalar differs from the definition at " + std::to_string(bad) +
                                " elements, first " + std::to_string(first) + ": " +
                                std::to_string(got[first]) + " vs " + std::to_string(want[first]));
        scalar_out = got;
      } else {
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < nout; ++i)
          if (got[i] != scalar_out[i] && bad++ == 0) first = i;
        CHECK_MSG(bad == 0, w2 + ": differs from scalar at " + std::to_string(bad) +
                                " elements, first " + std::to_string(first) + ": " +
                                std::to_string(got[first]) + " vs " +
                                std::to_string(scalar_out[first]));
      }
      // In place: the output aliases the residual.
      if (cc.residual && !par) {
        ByteGuarded io(nout);
        std::memcpy(io.data(), res.data(), nout);
        k::QEpilogue ep2 = ep;
        ep2.residual = io.data();
        t.qconv(g, packed.data(), gin.data(), io.data(), ep2, scratch.data(), nullptr);
        CHECK_MSG(io.intact() && std::memcmp(io.data(), scalar_out.data(), nout) == 0,
                  what + ": in place (out aliases the residual) differs from scalar");
      }
    });
  }
}

void test_qconv() {
  std::vector<ConvCase> cases;
  auto add = [&](int h, int w, int c, int oc, int kk, int s, int p, bool res, bool relu, int wm = 0,
                 int xm = 0, int izp = -1, int ozp = -1, int mm = 0) {
    ConvCase cc;
    cc.g.in_h = h;
    cc.g.in_w = w;
    cc.g.in_c = c;
    cc.g.out_c = oc;
    cc.g.kernel = kk;
    cc.g.stride = s;
    cc.g.pad = p;
    cc.residual = res;
    cc.relu = relu;
    cc.wmode = wm;
    cc.xmode = xm;
    cc.in_zp = izp;
    cc.out_zp = ozp;
    cc.mulmode = mm;
    cases.push_back(cc);
  };
  // Fixed awkward shapes: ragged channels, every tile edge.
  add(1, 1, 1, 1, 1, 1, 0, false, false);
  add(5, 7, 3, 5, 3, 1, 1, false, true);
  add(9, 9, 13, 17, 3, 2, 1, true, true);
  add(8, 8, 16, 16, 1, 1, 0, true, false);
  add(7, 11, 17, 33, 1, 2, 0, false, true);
  add(12, 10, 5, 31, 7, 2, 3, false, true);
  add(6, 6, 64, 40, 3, 1, 1, true, true);
  add(3, 3, 7, 48, 5, 1, 2, true, false);
  add(14, 13, 33, 15, 3, 2, 0, false, false);
  add(2, 2, 4, 65, 3, 1, 1, true, true);
  // Saturation and the u8 / s8 extremes.
  add(6, 5, 9, 19, 3, 1, 1, true, true, 1, 1, 0, 0, 2);
  add(6, 5, 9, 19, 3, 1, 1, true, false, 2, 1, 0, 255, 2);
  add(6, 5, 9, 19, 3, 2, 1, false, false, 3, 3, 255, 0, 2);
  add(6, 5, 9, 19, 3, 1, 1, true, true, 2, 2, 255, 128, 2);
  add(5, 5, 11, 21, 3, 1, 1, false, false, 3, 3, 128, 128, 2);
  // Exact rounding ties (mul 0.5 / 0.25, add multiples of 0.5).
  add(7, 7, 6, 23, 3, 1, 1, false, false, 0, 0, -1, 128, 1);
  add(7, 7, 6, 23, 1, 1, 0, true, false, 0, 0, -1, 100, 1);
  // The largest K class: 7x7x512 at the extremes, int32 stays exact.
  add(7, 7, 512, 17, 7, 1, 0, false, false, 2, 1, 0, 0, 2);
  add(7, 7, 512, 17, 7, 1, 0, false, false, 1, 2, 255, 0, 2);
  // Bad scales: NaN gives the lower bound everywhere, infinities clamp.
  add(5, 6, 7, 21, 3, 1, 1, true, false, 0, 0, -1, -1, 4);
  add(5, 6, 7, 37, 1, 1, 0, false, true, 0, 0, -1, -1, 4);
  // Near ties: only the fused multiply-add gets them right.
  for (int i = 0; i < 4; ++i) add(16, 16, 1, 37 + 16 * i, 1, 1, 0, false, false, 4, 4, -1, -1, 3);
  // Random shapes.
  Rng rng(2026);
  const int ks[] = {1, 3, 5, 7};
  for (int i = 0; i < 60; ++i) {
    const int kk = ks[rng.range(0, 3)];
    const int s = rng.range(1, 2);
    const int p = rng.range(0, std::min(3, kk / 2 + 1));
    const int h = rng.range(std::max(1, kk - 2 * p), 16);
    const int w = rng.range(std::max(1, kk - 2 * p), 16);
    const int c = rng.range(1, 70);
    const int oc = rng.range(1, 70);
    const bool res = rng.next() & 1;
    const bool relu = rng.next() & 1;
    add(h, w, c, oc, kk, s, p, res, relu, (i % 7 == 3) ? 3 : 0, (i % 5 == 2) ? 3 : 0);
  }
  Saturation sat;
  uint64_t seed = 1;
  for (const ConvCase& cc : cases) run_conv_case(cc, seed++, sat);
  // The cases must really reach both ends of u8 and the inside.
  CHECK_MSG(sat.zeros > 100 && sat.fulls > 100 && sat.zeros + sat.fulls < sat.total / 2,
            std::to_string(sat.zeros) + " zeros, " + std::to_string(sat.fulls) + " 255s of " +
                std::to_string(sat.total));
  // ... and the near-tie cases must tell a fused multiply-add from mul + add.
  CHECK_MSG(sat.unfused >= 20, std::to_string(sat.unfused) + " outputs tell fma from mul + add");
  std::printf("qconv: %zu cases, %zu outputs (%zu at 0, %zu at 255, %zu where mul+add != fma)\n",
              cases.size(), sat.total, sat.zeros, sat.fulls, sat.unfused);
}

// ---- the other int8 ops -----------------------------------------------------------

void test_quantize() {
  Rng rng(5);
  for (int zp : {0, 3, 128, 255}) {
    const float scale = zp == 3 ? 0.037f : 0.5f;
    std::vector<float> x(1003);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] = i % 3 == 0 ? (float(rng.range(-300, 300)) + 0.5f) * scale  // exact ties
                        : rng.uniform(-200.0f, 200.0f);
    x[7] = std::nanf("");
    x[8] = INFINITY;
    x[9] = -INFINITY;
    std::vector<uint8_t> want(x.size());
    const float inv = 1.0f / scale;
    for (size_t i = 0; i < x.size(); ++i) {
      float t = x[i] * inv;
      t = t > float(-zp) ? t : float(-zp);  // NaN: 0
      t = t < float(255 - zp) ? t : float(255 - zp);
      want[i] = uint8_t(int(std::nearbyint(t)) + zp);
    }
    std::vector<float> back_want(x.size());
    for (size_t i = 0; i < x.size(); ++i) back_want[i] = scale * float(int(want[i]) - zp);
    for (const k::Isa& isa : k::isas()) {
      if (!isa.supported) continue;
      ByteGuarded q(x.size());
      isa.table->quantize(x.size(), x.data(), scale, zp, q.data());
      CHECK_MSG(q.intact() && std::memcmp(q.data(), want.data(), x.size()) == 0,
                std::string(isa.name) + " quantize zp=" + std::to_string(zp));
      std::vector<float> back(x.size() + 2, 7.0f);
      isa.table->dequantize(x.size(), want.data(), scale, zp, back.data() + 1);
      CHECK_MSG(back[0] == 7.0f && back.back() == 7.0f &&
                    std::memcmp(back.data() + 1, back_want.data(), sizeof(float) * x.size()) == 0,
                std::string(isa.name) + " dequantize zp=" + std::to_string(zp));
    }
  }
}

void test_pools() {
  Rng rng(9);
  struct P {
    int h, w, c, k, s, p;
  };
  const P shapes[] = {{1, 1, 1, 1, 1, 0},  {7, 9, 5, 3, 2, 1},   {16, 16, 19, 3, 2, 1},
                      {5, 6, 33, 2, 2, 0}, {10, 7, 64, 3, 1, 1}, {3, 3, 3, 3, 2, 2}};
  for (const P& p : shapes) {
    const size_t n = size_t(p.h) * p.w * p.c;
    std::vector<uint8_t> in(n);
    for (auto& v : in) v = uint8_t(rng.range(0, 255));
    const int oh = (p.h + 2 * p.p - p.k) / p.s + 1, ow = (p.w + 2 * p.p - p.k) / p.s + 1;
    const size_t no = size_t(oh) * ow * p.c;
    std::vector<uint8_t> want(no, 0);
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox)
        for (int ch = 0; ch < p.c; ++ch) {
          uint8_t m = 0;
          for (int ky = 0; ky < p.k; ++ky)
            for (int kx = 0; kx < p.k; ++kx) {
              const int iy = oy * p.s - p.p + ky, ix = ox * p.s - p.p + kx;
              if (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w)
                m = std::max(m, in[(size_t(iy) * p.w + ix) * p.c + ch]);
            }
          want[(size_t(oy) * ow + ox) * p.c + ch] = m;
        }
    const int zp = rng.range(0, 255);
    const float scale = rng.uniform(0.01f, 0.2f);
    std::vector<float> avg_want(size_t(p.c));
    const float m = scale / float(p.h * p.w);
    for (int ch = 0; ch < p.c; ++ch) {
      int32_t s = 0;
      for (int px = 0; px < p.h * p.w; ++px) s += in[size_t(px) * p.c + ch];
      avg_want[size_t(ch)] = float(s - p.h * p.w * zp) * m;
    }
    for (const k::Isa& isa : k::isas()) {
      if (!isa.supported) continue;
      const std::string what = std::string(isa.name) + " " + std::to_string(p.h) + "x" +
                               std::to_string(p.w) + "x" + std::to_string(p.c) + " k" +
                               std::to_string(p.k);
      each_sharing([&](const k::Parallel* par, const char* sharing) {
        ByteGuarded out(no);
        isa.table->qmaxpool(p.h, p.w, p.c, p.k, p.s, p.p, in.data(), out.data(), par);
        CHECK_MSG(out.intact() && std::memcmp(out.data(), want.data(), no) == 0,
                  what + " qmaxpool " + sharing);
      });
      std::vector<float> avg(size_t(p.c) + 2, 7.0f);
      isa.table->qglobal_avgpool(p.h, p.w, p.c, in.data(), scale, zp, avg.data() + 1);
      CHECK_MSG(avg[0] == 7.0f && avg.back() == 7.0f &&
                    std::memcmp(avg.data() + 1, avg_want.data(), sizeof(float) * size_t(p.c)) == 0,
                what + " qglobal_avgpool");
    }
  }
  // A channel count beyond one pass of the pool's channel chunk.
  {
    const int c = 600, h = 3, w = 2;
    std::vector<uint8_t> in(size_t(h) * w * c);
    for (auto& v : in) v = uint8_t(rng.range(0, 255));
    std::vector<float> ref(static_cast<size_t>(c)), got(static_cast<size_t>(c));
    k::scalar::table().qglobal_avgpool(h, w, c, in.data(), 0.1f, 7, ref.data());
    for (int ch = 0; ch < c; ++ch) {
      int32_t s = 0;
      for (int px = 0; px < h * w; ++px) s += in[size_t(px) * c + ch];
      got[size_t(ch)] = float(s - h * w * 7) * (0.1f / float(h * w));
    }
    CHECK_MSG(ref == got, "qglobal_avgpool over 600 channels");
  }
}

// ---- task application on an int8 base (docs/int8.md (c)) ------------------------

// The definitions, as the runtime computed them before the one-pass kernels:
// s8 OHWI rows, then qconv_pack.
std::vector<int8_t> kept_s8_def(const k::QApplyArgs& a) {
  const k::ConvGeometry& g = a.g;
  const size_t taps = size_t(g.kernel) * g.kernel, ic = size_t(g.in_c);
  std::vector<int8_t> q(size_t(g.out_c) * taps * ic);
  for (size_t o = 0; o < size_t(g.out_c); ++o)
    for (size_t t = 0; t < taps; ++t)
      for (size_t i = 0; i < ic; ++i)
        q[(o * taps + t) * ic + i] =
            a.base[(size_t(a.out_index[o]) * size_t(a.base_in) + size_t(a.in_index[i])) * taps + t];
  return q;
}

std::vector<float> dequant_def(const k::QApplyArgs& a) {
  const std::vector<int8_t> q = kept_s8_def(a);
  const size_t row = q.size() / size_t(a.g.out_c);
  std::vector<float> w(q.size());
  for (size_t j = 0; j < q.size(); ++j) w[j] = a.base_scale[a.out_index[j / row]] * float(q[j]);
  return w;
}

// w *= bn; ws = max|w| / 127 (1 for a zero row); q = clamp(rne(w / ws)).
std::vector<int8_t> requant_def(const k::ConvGeometry& g, std::vector<float> w, const float* scale,
                                std::vector<float>& ws) {
  const size_t row = w.size() / size_t(g.out_c);
  std::vector<int8_t> q(w.size());
  ws.assign(size_t(g.out_c), 0.0f);
  for (size_t o = 0; o < size_t(g.out_c); ++o) {
    const float bn = scale ? scale[o] : 1.0f;
    float* r = w.data() + o * row;
    float m = 0.0f;
    for (size_t j = 0; j < row; ++j) {
      r[j] = r[j] * bn;
      m = std::max(m, std::fabs(r[j]));
    }
    ws[o] = m > 0.0f ? m / 127.0f : 1.0f;
    for (size_t j = 0; j < row; ++j) {
      const float v = std::nearbyint(r[j] / ws[o]);
      q[o * row + j] = int8_t(std::min(127.0f, std::max(-127.0f, v)));
    }
  }
  return q;
}

std::vector<uint8_t> packed_def(const k::ConvGeometry& g, const std::vector<int8_t>& q) {
  const k::KernelTable& sc = k::scalar::table();
  std::vector<uint8_t> p(sc.qconv_packed_bytes(g));
  sc.qconv_pack(g, q.data(), p.data());
  return p;
}

// Output ranges of one application: the whole conv, 16s in reverse order, 32s.
std::vector<std::vector<std::pair<int, int>>> range_splits(int out_c) {
  std::vector<std::vector<std::pair<int, int>>> all = {{{0, out_c}}};
  for (int step : {16, 32}) {
    std::vector<std::pair<int, int>> r;
    for (int o0 = 0; o0 < out_c; o0 += step) r.push_back({o0, std::min(out_c, o0 + step)});
    if (step == 16) std::reverse(r.begin(), r.end());
    all.push_back(r);
  }
  return all;
}

// The bytes of packed panels [o0 / 16, ceil(o1 / 16)) and their weight sums.
bool in_range(const k::ConvGeometry& g, size_t byte, int o0, int o1) {
  const size_t pbytes = size_t(g.kernel) * g.kernel * size_t((g.in_c + 3) / 4 * 4) * 16;
  const size_t panels = size_t(g.out_c + 15) / 16, p0 = size_t(o0) / 16, p1 = size_t(o1 + 15) / 16;
  if (byte < panels * pbytes) return byte / pbytes >= p0 && byte / pbytes < p1;
  const size_t ch = (byte - panels * pbytes) / 4;
  return ch >= p0 * 16 && ch < p1 * 16;
}

struct QApplyCase {
  int kernel, base_in, base_out, in_c, out_c;
  bool bn;
  int rows;  // requantized rows: 0 random, 1 exact ties, 2 zeros / NaN / infinities / subnormals
};

// Fills the float rows of the requantization cases.
std::vector<float> requant_rows(const QApplyCase& c, size_t row, Rng& rng) {
  std::vector<float> w(size_t(c.out_c) * row);
  for (size_t o = 0; o < size_t(c.out_c); ++o) {
    float* r = w.data() + o * row;
    for (size_t j = 0; j < row; ++j) r[j] = rng.uniform(-0.3f, 0.3f);
    if (c.rows == 1) {
      // max 127 * 2^-4: ws = 2^-4 exactly, so (n + 0.5) * 2^-4 is a tie.
      r[0] = 127.0f / 16;
      for (size_t j = 1; j < row; ++j) r[j] = (float(rng.range(-127, 126)) + 0.5f) / 16;
    } else if (c.rows == 2) {
      switch (o % 6) {
        case 0:
          std::fill(r, r + row, 0.0f);
          if (row > 1) r[1] = -0.0f;
          break;
        case 1:  // the max first, a NaN later in the same vector lane
          r[0] = 0.9f;
          r[row >= 32 ? 16 : row / 2] = std::nanf("");
          break;
        case 2:
          r[0] = INFINITY;
          break;
        case 3:
          r[row - 1] = -INFINITY;
          if (row > 1) r[0] = std::nanf("");
          break;
        case 4:  // subnormal: max / 127 loses bits, so w / ws passes 127.5
          for (size_t j = 0; j < row; ++j) r[j] = float(rng.range(-5, 5)) * 1e-45f;
          break;
        default:
          for (size_t j = 0; j < row; ++j) r[j] = rng.uniform(-3e38f, 3e38f);
          break;
      }
    }
  }
  return w;
}

void test_qapply_case(const QApplyCase& c, uint64_t seed) {
  Rng rng(seed);
  k::QApplyArgs a;
  a.g.in_c = c.in_c;
  a.g.out_c = c.out_c;
  a.g.kernel = c.kernel;
  a.g.in_h = a.g.in_w = c.kernel;
  a.base_in = c.base_in;
  a.base_out = c.base_out;
  const size_t taps = size_t(c.kernel) * c.kernel, row = taps * size_t(c.in_c);
  std::vector<int8_t> base(size_t(c.base_out) * size_t(c.base_in) * taps);
  for (auto& v : base) v = int8_t(rng.range(-128, 127));
  std::vector<float> bscale(size_t(c.base_out)), bn(size_t(c.out_c));
  for (auto& v : bscale) v = rng.uniform(1e-3f, 0.1f);
  for (auto& v : bn) v = rng.uniform(-2.0f, 2.0f);
  // Kept channels: sorted or shuffled subsets, out of order too.
  auto subset = [&](int n, int total) {
    std::vector<int32_t> all(static_cast<size_t>(total));
    std::iota(all.begin(), all.end(), 0);
    for (int i = total - 1; i > 0; --i) std::swap(all[size_t(i)], all[size_t(rng.range(0, i))]);
    all.resize(size_t(n));
    if (rng.next() & 1) std::sort(all.begin(), all.end());
    return all;
  };
  const std::vector<int32_t> out_index = subset(c.out_c, c.base_out);
  const std::vector<int32_t> in_index = subset(c.in_c, c.base_in);
  a.base = base.data();
  a.base_scale = bscale.data();
  a.out_index = out_index.data();
  a.in_index = in_index.data();
  a.scale = c.bn ? bn.data() : nullptr;
  char name[160];
  std::snprintf(name, sizeof name, "k%d %d/%d -> %d/%d%s rows%d", c.kernel, c.in_c, c.base_in,
                c.out_c, c.base_out, c.bn ? " bn" : "", c.rows);

  // The definitions.
  const std::vector<uint8_t> keep_want = packed_def(a.g, kept_s8_def(a));
  std::vector<float> keep_ws(size_t(c.out_c));
  for (size_t o = 0; o < size_t(c.out_c); ++o)
    keep_ws[o] = bscale[size_t(out_index[o])] * (c.bn ? bn[o] : 1.0f);
  const std::vector<float> deq_want = dequant_def(a);
  const std::vector<float> rows = c.rows == 0 && (seed & 1) ? deq_want : requant_rows(c, row, rng);
  std::vector<float> req_ws;
  const std::vector<uint8_t> req_want = packed_def(a.g, requant_def(a.g, rows, a.scale, req_ws));
  const size_t pbytes = keep_want.size();

  for (const k::Isa& isa : k::isas()) {
    if (!isa.supported) continue;
    const k::KernelTable& t = *isa.table;
    const std::string what = std::string(isa.name) + " " + name;
    for (const auto& split : range_splits(c.out_c)) {
      const std::string w2 = what + (split.size() == 1 ? " whole" : " ranges");
      ByteGuarded keep(pbytes), req(pbytes);
      std::memset(keep.data(), 0x5A, pbytes);
      std::memset(req.data(), 0x5A, pbytes);
      std::vector<float> kws(size_t(c.out_c) + 1, 7.0f), rws(size_t(c.out_c) + 1, 7.0f);
      std::vector<float> deq(size_t(c.out_c) * row + 1, 7.0f);
      for (const auto& r : split) {
        std::vector<uint8_t> before(keep.data(), keep.data() + pbytes);
        t.qconv_gather_pack(a, r.first, r.second, kws.data(), keep.data());
        size_t outside = 0;
        for (size_t b = 0; b < pbytes; ++b)
          outside += !in_range(a.g, b, r.first, r.second) && keep.data()[b] != before[b];
        CHECK_MSG(outside == 0, w2 + ": qconv_gather_pack wrote outside its panels");
        t.qconv_requant_pack(a.g, rows.data() + size_t(r.first) * row, a.scale, r.first, r.second,
                             rws.data(), req.data());
        t.qconv_dequant_gather(a, r.first, r.second, deq.data() + size_t(r.first) * row);
      }
      CHECK_MSG(keep.intact() && req.intact(), w2 + ": wrote outside the packed bytes");
      CHECK_MSG(std::memcmp(keep.data(), keep_want.data(), pbytes) == 0,
                w2 + ": qconv_gather_pack differs from gather + qconv_pack");
      CHECK_MSG(std::memcmp(kws.data(), keep_ws.data(), sizeof(float) * keep_ws.size()) == 0 &&
                    kws.back() == 7.0f,
                w2 + ": qconv_gather_pack's weight scales");
      CHECK_MSG(std::memcmp(req.data(), req_want.data(), pbytes) == 0,
                w2 + ": qconv_requant_pack differs from requantize + qconv_pack");
      CHECK_MSG(std::memcmp(rws.data(), req_ws.data(), sizeof(float) * req_ws.size()) == 0 &&
                    rws.back() == 7.0f,
                w2 + ": qconv_requant_pack's weight scales");
      CHECK_MSG(std::memcmp(deq.data(), deq_want.data(), sizeof(float) * deq_want.size()) == 0 &&
                    deq.back() == 7.0f,
                w2 + ": qconv_dequant_gather");
    }
  }
}

// The runtime's low-rank int8 path merges output ranges: on every ISA the
// merge of rows [o0, o1) alone (B' rows from o0) is bit for bit the whole
// merge's rows, and dequantize + merge + requantize by ranges is the old
// whole-conv sequence's bytes.
void test_lowrank_ranges(uint64_t seed) {
  Rng rng(seed);
  const int kernel = rng.range(0, 1) ? 3 : 1, in_c = rng.range(1, 90), out_c = rng.range(1, 70);
  const int rank = rng.range(1, 17);
  const size_t row = size_t(kernel) * kernel * size_t(in_c);
  std::vector<float> w = random_vec(size_t(out_c) * row, rng),
                     av = random_vec(size_t(rank * in_c), rng),
                     bv = random_vec(size_t(out_c * rank), rng);
  const std::string name = "lowrank_merge k" + std::to_string(kernel) + " " + std::to_string(in_c) +
                           " -> " + std::to_string(out_c) + " rank " + std::to_string(rank);
  for (const k::Isa& isa : k::isas()) {
    if (!isa.supported) continue;
    const k::KernelTable& t = *isa.table;
    std::vector<float> whole = w;
    t.lowrank_merge(out_c, in_c, kernel, rank, av.data(), bv.data(), whole.data());
    for (const auto& split : range_splits(out_c)) {
      std::vector<float> parts = w;
      for (const auto& r : split)
        t.lowrank_merge(r.second - r.first, in_c, kernel, rank, av.data(),
                        bv.data() + size_t(r.first) * size_t(rank),
                        parts.data() + size_t(r.first) * row);
      CHECK_MSG(std::memcmp(parts.data(), whole.data(), sizeof(float) * whole.size()) == 0,
                std::string(isa.name) + " " + name + ": a range's merge differs from the whole's");
    }
  }
}

void test_qapply() {
  std::vector<QApplyCase> cases = {
      {1, 1, 1, 1, 1, false, 0},
      {3, 8, 20, 5, 17, true, 0},
      {3, 64, 64, 47, 37, true, 0},
      {1, 64, 128, 47, 31, false, 0},
      {7, 3, 64, 3, 47, true, 0},
      {5, 40, 40, 33, 48, true, 0},
      {3, 300, 310, 257, 33, true, 0},
      {1, 600, 600, 513, 16, false, 0},
      {3, 30, 40, 29, 35, true, 1},
      {1, 20, 20, 13, 32, false, 1},
      {3, 16, 18, 9, 36, true, 2},
      {1, 70, 80, 64, 20, false, 2},
      // ties and special rows with runs of kept inputs past the SIMD widths
      {3, 50, 50, 40, 20, true, 1},
      {1, 300, 300, 257, 17, false, 1},
      {3, 40, 40, 35, 24, true, 2},
      {1, 99, 99, 97, 30, true, 2},
  };
  Rng rng(77);
  for (int i = 0; i < 30; ++i) {
    QApplyCase c;
    const int ks[] = {1, 3, 5, 7};
    c.kernel = ks[rng.range(0, 3)];
    c.base_in = rng.range(1, 90);
    c.base_out = rng.range(1, 90);
    c.in_c = rng.range(1, c.base_in);
    c.out_c = rng.range(1, c.base_out);
    c.bn = rng.next() & 1;
    c.rows = i % 5 == 4 ? 2 : 0;
    cases.push_back(c);
  }
  uint64_t seed = 100;
  for (const QApplyCase& c : cases) test_qapply_case(c, seed++);
  for (int i = 0; i < 40; ++i) test_lowrank_ranges(500 + uint64_t(i));
  std::printf("int8 task application: %zu cases, 40 range merges\n", cases.size());
}

}  // namespace

int main(int argc, char** argv) {
  const char* expect = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--expect-variant" && i + 1 < argc) {
      expect = argv[++i];
    } else {
      std::fprintf(stderr, "usage: test_kernels_int8 [--expect-variant NAME]\n");
      return 2;
    }
  }
  for (const k::Isa& isa : k::isas())
    if (isa.table)
      std::printf("isa %s: %s, int8 path %s\n", isa.name,
                  isa.supported ? "tested" : "not supported by this CPU",
                  isa.supported ? isa.table->qconv_variant() : "-");
  if (expect) {
    const char* got = k::active().qconv_variant();
    CHECK_MSG(std::string(got) == expect,
              std::string("active int8 path is ") + got + ", expected " + expect);
  }
  test_qconv();
  test_quantize();
  test_pools();
  test_qapply();
  return tcheck::summary("test_kernels_int8");
}
