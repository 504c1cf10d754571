// maxpool, gap and linear of every table against the scalar reference.
#include "kernel_check.h"

namespace {

// ------------------------------------------------------------ pooling -------

void test_maxpool(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int h, w, c, kk, s, p;
  };
  const std::vector<P> cases = {
      {1, 1, 1, 1, 1, 0},      {1, 1, 3, 3, 1, 1},   {2, 3, 5, 3, 2, 1},
      {7, 7, 17, 3, 1, 1},     {5, 5, 33, 2, 2, 0},  {9, 8, 100, 3, 2, 1},
      {112, 112, 64, 3, 2, 1}, {56, 56, 3, 3, 2, 1}, {4, 4, 8, 3, 1, 2},  // all-pad corners
      {11, 13, 129, 5, 3, 2},
  };
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 100;
  for (const P& p : cases) {
    Rng rng(seed++);
    const int oh = (p.h + 2 * p.p - p.kk) / p.s + 1, ow = (p.w + 2 * p.p - p.kk) / p.s + 1;
    const size_t out_n = static_cast<size_t>(oh) * ow * p.c;
    std::vector<float> in = random_vec(static_cast<size_t>(p.h) * p.w * p.c, rng);
    std::vector<float> want(out_n);
    ref.maxpool(p.h, p.w, p.c, p.kk, p.s, p.p, in.data(), want.data(), nullptr);
    for (const k::KernelTable* t : tables) {
      std::vector<float> serial;
      for (const Sharing& sh : {kSerial, kShared[0], kShared[1], kShared[2]}) {
        char b[160];
        std::snprintf(b, sizeof b, "maxpool[%s] %dx%dx%d k%d s%d p%d %s", t->isa, p.h, p.w, p.c,
                      p.kk, p.s, p.p, sh.name().c_str());
        Guarded gin(in.size()), out(out_n, std::numeric_limits<float>::quiet_NaN());
        std::memcpy(gin.data(), in.data(), in.size() * sizeof(float));
        with_sharing(sh, [&](const k::Parallel* par) {
          t->maxpool(p.h, p.w, p.c, p.kk, p.s, p.p, gin.data(), out.data(), par);
        });
        if (!out.guards_intact() || !gin.guards_intact() ||
            std::memcmp(gin.data(), in.data(), in.size() * sizeof(float)) != 0) {
          report(false, std::string(b) + ": wrote outside its output or to its input");
          continue;
        }
        if (sh.threads == 1) {
          const Compare c = compare(want.data(), out.data(), out_n);
          report(within(c), b, &c);
          serial.assign(out.data(), out.data() + out_n);
        } else {
          report(serial.size() == out_n &&
                     std::memcmp(serial.data(), out.data(), out_n * sizeof(float)) == 0,
                 std::string(b) + " == serial bit for bit");
        }
      }
    }
  }
}

void test_gap(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int h, w, c;
  };
  const std::vector<P> cases = {{1, 1, 1},   {1, 1, 3},    {2, 3, 17}, {7, 7, 512},
                                {7, 7, 100}, {56, 56, 64}, {3, 5, 33}, {14, 14, 1}};
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 200;
  for (const P& p : cases) {
    Rng rng(seed++);
    std::vector<float> in = random_vec(static_cast<size_t>(p.h) * p.w * p.c, rng);
    std::vector<float> want(p.c);
    ref.global_avgpool(p.h, p.w, p.c, in.data(), want.data());
    for (const k::KernelTable* t : tables) {
      char b[128];
      std::snprintf(b, sizeof b, "global_avgpool[%s] %dx%dx%d", t->isa, p.h, p.w, p.c);
      Guarded out(p.c, std::numeric_limits<float>::quiet_NaN());
      t->global_avgpool(p.h, p.w, p.c, in.data(), out.data());
      check_output(b, out, want.data(), "its output");
    }
  }
}

// ------------------------------------------------------------- linear -------

void test_linear(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int in_f, out_f;
  };
  const std::vector<P> cases = {{1, 1},      {3, 64}, {17, 5},    {100, 33},
                                {512, 1000}, {64, 1}, {2048, 37}, {9, 16}};
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 300;
  for (const P& p : cases) {
    Rng rng(seed++);
    std::vector<float> w = random_vec(static_cast<size_t>(p.in_f) * p.out_f, rng);
    std::vector<float> x = random_vec(p.in_f, rng), bias = random_vec(p.out_f, rng);
    for (bool with_bias : {false, true}) {
      std::vector<float> want(p.out_f);
      ref.linear(p.in_f, p.out_f, w.data(), with_bias ? bias.data() : nullptr, x.data(),
                 want.data());
      for (const k::KernelTable* t : tables) {
        char b[128];
        std::snprintf(b, sizeof b, "linear[%s] %d->%d %s", t->isa, p.in_f, p.out_f,
                      with_bias ? "bias" : "no-bias");
        Guarded y(p.out_f, std::numeric_limits<float>::quiet_NaN());
        t->linear(p.in_f, p.out_f, w.data(), with_bias ? bias.data() : nullptr, x.data(), y.data());
        check_output(b, y, want.data(), "its output");
      }
    }
  }
}

}  // namespace

int main() {
  const std::vector<const k::KernelTable*> tables = tested_tables();
  test_maxpool(tables);
  test_gap(tables);
  test_linear(tables);
  return tcheck::summary("test_kernels_layers");
}
