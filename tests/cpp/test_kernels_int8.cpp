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
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
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
  return tcheck::summary("test_kernels_int8");
}
