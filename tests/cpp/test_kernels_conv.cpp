// conv and conv_lowrank of every table against the scalar reference, serially
// and shared over threads (kernel_check.h), and the scalar reference itself
// against a direct loop.
#include "kernel_check.h"

namespace {

// ---------------------------------------------------------------- conv ------

enum EpVariant {
  EP_NONE,
  EP_BIAS,
  EP_BIAS_RELU,
  EP_RESIDUAL_RELU,          // residual in a separate buffer, no bias
  EP_BIAS_RESIDUAL_INPLACE,  // out aliases residual, + ReLU
  EP_RESIDUAL_INPLACE,       // out aliases residual, no bias, no ReLU
  EP_COUNT
};

const char* ep_name(int v) {
  switch (v) {
    case EP_NONE:
      return "plain";
    case EP_BIAS:
      return "bias";
    case EP_BIAS_RELU:
      return "bias+relu";
    case EP_RESIDUAL_RELU:
      return "residual+relu";
    case EP_BIAS_RESIDUAL_INPLACE:
      return "bias+residual(in place)+relu";
    case EP_RESIDUAL_INPLACE:
      return "residual(in place)";
  }
  return "?";
}

struct ConvData {
  k::ConvGeometry g;
  std::vector<float> w, in, bias, residual;
  int rank = -1;              // >= 0: run the fused low-rank entry with la, lb
  std::vector<float> la, lb;  // A' [rank][in_c], B' [out_c][rank]
};

// A plain conv case of geometry g: weights, input, bias and residual drawn
// from rng in that order.
ConvData random_conv(const k::ConvGeometry& g, Rng& rng) {
  ConvData d;
  d.g = g;
  const size_t out_n = static_cast<size_t>(g.out_h()) * g.out_w() * g.out_c;
  d.w = random_vec(static_cast<size_t>(g.out_c) * g.kernel * g.kernel * g.in_c, rng);
  d.in = random_vec(static_cast<size_t>(g.in_h) * g.in_w * g.in_c, rng);
  d.bias = random_vec(g.out_c, rng);
  d.residual = random_vec(out_n, rng);
  return d;
}

// Runs table `t` on the case (conv, or conv_lowrank when d.rank >= 0);
// returns the output (guards checked inside).
bool run_conv(const k::KernelTable& t, const ConvData& d, int ep_variant, const Sharing& sh,
              std::vector<float>& result, std::string& problem) {
  const int threads = sh.threads;
  const k::ConvGeometry& g = d.g;
  const size_t out_n = static_cast<size_t>(g.out_h()) * g.out_w() * g.out_c;
  const bool lr = d.rank >= 0;

  Guarded packed(lr ? t.conv_lowrank_packed_floats(g, d.rank) : t.conv_packed_floats(g));
  if (lr)
    t.conv_lowrank_pack(g, d.rank, d.w.data(), d.la.data(), d.lb.data(), packed.data());
  else
    t.conv_pack(g, d.w.data(), packed.data());
  if (!packed.guards_intact()) {
    problem = "pack wrote outside its packed_floats";
    return false;
  }
  // Scratch sized for more threads must serve fewer (the contract in kernels.h).
  for (int fewer = 1; fewer < threads; ++fewer) {
    const size_t need =
        lr ? t.conv_lowrank_scratch_floats(g, d.rank, fewer) : t.conv_scratch_floats(g, fewer);
    const size_t have =
        lr ? t.conv_lowrank_scratch_floats(g, d.rank, threads) : t.conv_scratch_floats(g, threads);
    if (need > have) {
      problem = "scratch for " + std::to_string(threads) + " threads is smaller than for " +
                std::to_string(fewer);
      return false;
    }
  }
  Guarded scratch(
      lr ? t.conv_lowrank_scratch_floats(g, d.rank, threads) : t.conv_scratch_floats(g, threads),
      std::numeric_limits<float>::quiet_NaN());
  Guarded in(d.in.size());
  std::memcpy(in.data(), d.in.data(), d.in.size() * sizeof(float));
  Guarded out(out_n, std::numeric_limits<float>::quiet_NaN());
  Guarded res_sep(out_n);

  k::Epilogue ep;
  switch (ep_variant) {
    case EP_NONE:
      break;
    case EP_BIAS:
      ep.bias = d.bias.data();
      break;
    case EP_BIAS_RELU:
      ep.bias = d.bias.data();
      ep.relu = true;
      break;
    case EP_RESIDUAL_RELU:
      std::memcpy(res_sep.data(), d.residual.data(), out_n * sizeof(float));
      ep.residual = res_sep.data();
      ep.relu = true;
      break;
    case EP_BIAS_RESIDUAL_INPLACE:
      std::memcpy(out.data(), d.residual.data(), out_n * sizeof(float));
      ep.bias = d.bias.data();
      ep.residual = out.data();
      ep.relu = true;
      break;
    case EP_RESIDUAL_INPLACE:
      std::memcpy(out.data(), d.residual.data(), out_n * sizeof(float));
      ep.residual = out.data();
      break;
  }
  with_sharing(sh, [&](const k::Parallel* par) {
    if (lr)
      t.conv_lowrank(g, d.rank, packed.data(), in.data(), out.data(), ep, scratch.data(), par);
    else
      t.conv(g, packed.data(), in.data(), out.data(), ep, scratch.data(), par);
  });
  if (!out.guards_intact()) {
    problem = "conv wrote outside its output";
    return false;
  }
  if (!scratch.guards_intact()) {
    problem = "conv wrote outside conv_scratch_floats";
    return false;
  }
  if (std::memcmp(in.data(), d.in.data(), d.in.size() * sizeof(float)) != 0 ||
      !in.guards_intact()) {
    problem = "conv modified its input";
    return false;
  }
  if (ep_variant == EP_RESIDUAL_RELU &&
      std::memcmp(res_sep.data(), d.residual.data(), out_n * sizeof(float)) != 0) {
    problem = "conv modified a non-aliased residual";
    return false;
  }
  result.assign(out.data(), out.data() + out_n);
  return true;
}

struct ConvCase {
  k::ConvGeometry g;
  bool all_epilogues;  // false for the large shapes: a subset keeps the test quick
};

// Table `t` on the case, serially (against the reference `want`, within the
// tolerance) and with every kShared sharing (equal to the serial output bit
// for bit).
void check_conv_sharing(const k::KernelTable& t, const ConvData& d, int ev,
                        const std::vector<float>& want, const std::string& what) {
  std::string problem;
  std::vector<float> serial;
  if (!run_conv(t, d, ev, kSerial, serial, problem)) {
    report(false, what + " " + kSerial.name() + ": " + problem);
    return;
  }
  const Compare c = compare(want.data(), serial.data(), want.size());
  report(within(c), what + " " + kSerial.name(), &c);
  for (const Sharing& sh : kShared) {
    std::vector<float> got;
    if (!run_conv(t, d, ev, sh, got, problem)) {
      report(false, what + " " + sh.name() + ": " + problem);
      continue;
    }
    report(got.size() == serial.size() &&
               std::memcmp(got.data(), serial.data(), got.size() * sizeof(float)) == 0,
           what + " " + sh.name() + " == serial bit for bit");
  }
}

void test_conv(const std::vector<const k::KernelTable*>& tables) {
  const std::vector<ConvCase> cases = {
      // tiny and ragged
      {geom(1, 1, 1, 1, 1, 1, 0), true},
      {geom(1, 1, 3, 5, 3, 1, 1), true},
      {geom(2, 3, 5, 17, 3, 1, 1), true},
      {geom(2, 3, 5, 17, 3, 2, 1), true},
      {geom(2, 3, 17, 3, 1, 1, 0), true},
      {geom(4, 5, 1, 1, 3, 1, 1), true},
      {geom(3, 3, 3, 64, 7, 2, 3), true},
      {geom(9, 11, 3, 33, 7, 2, 3), true},
      {geom(8, 8, 33, 17, 3, 1, 0), true},
      {geom(7, 7, 17, 100, 1, 2, 0), true},
      {geom(5, 13, 100, 33, 3, 2, 1), true},
      {geom(6, 6, 64, 64, 3, 1, 1), true},
      {geom(10, 10, 8, 24, 1, 1, 0), true},
      {geom(13, 7, 24, 48, 3, 1, 1), true},
      {geom(6, 6, 7, 9, 3, 1, 3), true},  // border windows entirely in the padding
      {geom(12, 12, 16, 16, 5, 1, 2), true},
      {geom(8, 9, 6, 10, 2, 2, 0), true},
      {geom(1, 1, 512, 10, 1, 1, 0), true},
      {geom(3, 2, 129, 65, 1, 1, 0), true},
      {geom(11, 17, 31, 47, 3, 1, 1), true},
      {geom(15, 15, 40, 23, 1, 1, 0), true},
      {geom(14, 14, 96, 130, 3, 2, 1), true},
      // long K: several K blocks per kernel row in every ISA's blocking
      {geom(3, 4, 1700, 20, 1, 1, 0), true},
      {geom(5, 5, 600, 24, 3, 1, 1), false},
      {geom(4, 4, 1100, 17, 3, 2, 1), false},
      // ResNet-18-like and larger spatial sizes
      {geom(32, 32, 3, 64, 7, 2, 3), false},
      {geom(56, 56, 17, 33, 3, 1, 1), false},
      {geom(57, 55, 5, 9, 3, 2, 1), false},
      {geom(56, 56, 64, 64, 3, 1, 1), false},
      {geom(56, 56, 64, 128, 1, 2, 0), false},
      {geom(28, 28, 64, 128, 3, 2, 1), false},
      {geom(14, 14, 256, 256, 1, 1, 0), false},
      {geom(7, 7, 512, 512, 3, 1, 1), false},
      {geom(7, 7, 300, 200, 3, 1, 1), false},
  };
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 1;
  for (const ConvCase& cc : cases) {
    Rng rng(seed++);
    const ConvData d = random_conv(cc.g, rng);
    const std::vector<int> eps = cc.all_epilogues
                                     ? std::vector<int>{EP_NONE,
                                                        EP_BIAS,
                                                        EP_BIAS_RELU,
                                                        EP_RESIDUAL_RELU,
                                                        EP_BIAS_RESIDUAL_INPLACE,
                                                        EP_RESIDUAL_INPLACE}
                                     : std::vector<int>{EP_NONE, EP_BIAS_RESIDUAL_INPLACE};
    for (int ev : eps) {
      std::vector<float> want;
      std::string problem;
      if (!run_conv(ref, d, ev, kSerial, want, problem)) {
        report(false,
               std::string("conv[scalar] ") + geom_str(d.g) + " " + ep_name(ev) + ": " + problem);
        continue;
      }
      for (const k::KernelTable* t : tables) {
        const std::string what =
            std::string("conv[") + t->isa + "] " + geom_str(d.g) + " " + ep_name(ev);
        check_conv_sharing(*t, d, ev, want, what);
      }
    }
  }
}

// Fused low-rank conv: every table against the scalar reference, and the
// scalar reference against "lowrank_merge, then conv" (the definition).
void test_conv_lowrank(const std::vector<const k::KernelTable*>& tables) {
  struct Case {
    k::ConvGeometry g;
    std::vector<int> ranks;
  };
  const std::vector<Case> cases = {
      {geom(1, 1, 3, 5, 3, 1, 1), {0, 1, 2}},
      {geom(2, 3, 5, 17, 3, 2, 1), {1, 4}},
      {geom(7, 7, 17, 100, 1, 2, 0), {3, 17}},
      {geom(6, 6, 7, 9, 3, 1, 3), {2}},  // centre taps in the padding
      {geom(9, 11, 3, 33, 7, 2, 3), {5}},
      {geom(8, 8, 33, 17, 3, 1, 0), {8, 40}},
      {geom(13, 7, 24, 48, 3, 1, 1), {16}},
      {geom(10, 10, 8, 24, 1, 1, 0), {1, 33}},
      {geom(14, 14, 96, 130, 3, 2, 1), {8}},
      {geom(7, 7, 300, 200, 3, 1, 1), {12}},
      {geom(28, 28, 64, 64, 3, 1, 1), {8}},
  };
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 500;
  for (const Case& cs : cases) {
    for (int rank : cs.ranks) {
      Rng rng(seed++);
      ConvData d = random_conv(cs.g, rng);
      d.rank = rank;
      d.la = random_vec(static_cast<size_t>(rank) * d.g.in_c + 1, rng);
      d.lb = random_vec(static_cast<size_t>(d.g.out_c) * rank + 1, rng);
      char rs[32];
      std::snprintf(rs, sizeof rs, " rank=%d", rank);
      for (int ev : {EP_NONE, EP_BIAS_RELU, EP_BIAS_RESIDUAL_INPLACE}) {
        std::vector<float> want;
        std::string problem;
        if (!run_conv(ref, d, ev, kSerial, want, problem)) {
          report(false, std::string("conv_lowrank[scalar] ") + geom_str(d.g) + rs + " " +
                            ep_name(ev) + ": " + problem);
          continue;
        }
        {  // definition: merge into W', then a plain conv
          ConvData m = d;
          m.rank = -1;
          ref.lowrank_merge(d.g.out_c, d.g.in_c, d.g.kernel, rank, d.la.data(), d.lb.data(),
                            m.w.data());
          std::vector<float> merged;
          if (run_conv(ref, m, ev, kSerial, merged, problem)) {
            const Compare c = compare(merged.data(), want.data(), want.size());
            report(within(c),
                   std::string("conv_lowrank[scalar] == merge+conv ") + geom_str(d.g) + rs + " " +
                       ep_name(ev),
                   &c);
          } else {
            report(false, std::string("conv[scalar] merged ") + geom_str(d.g) + ": " + problem);
          }
        }
        for (const k::KernelTable* t : tables) {
          const std::string what =
              std::string("conv_lowrank[") + t->isa + "] " + geom_str(d.g) + rs + " " + ep_name(ev);
          check_conv_sharing(*t, d, ev, want, what);
        }
      }
    }
  }
}

// A few checks of the reference itself against values computed by hand.
void test_scalar_sanity() {
  const k::KernelTable& s = k::scalar::table();
  {  // 3x3 all-ones conv, pad 1, on a 3x3 all-ones image: corner 4, edge 6, centre 9
    k::ConvGeometry g = geom(3, 3, 1, 1, 3, 1, 1);
    std::vector<float> w(9, 1.0f), in(9, 1.0f), out(9), packed(s.conv_packed_floats(g));
    s.conv_pack(g, w.data(), packed.data());
    std::vector<float> scratch(s.conv_scratch_floats(g, 1) + 1);
    s.conv(g, packed.data(), in.data(), out.data(), k::Epilogue{}, scratch.data(), nullptr);
    const float want[9] = {4, 6, 4, 6, 9, 6, 4, 6, 4};
    bool ok = true;
    for (int i = 0; i < 9; ++i) ok = ok && out[i] == want[i];
    report(ok, "scalar sanity: 3x3 ones conv");
  }
  {  // 1x1 conv with weights [[1,2],[3,4]] (OHWI), bias [1,-100], relu
    k::ConvGeometry g = geom(1, 1, 2, 2, 1, 1, 0);
    std::vector<float> w = {1, 2, 3, 4}, in = {1, 1}, out(2), bias = {1, -100},
                       packed(s.conv_packed_floats(g));
    s.conv_pack(g, w.data(), packed.data());
    k::Epilogue ep;
    ep.bias = bias.data();
    ep.relu = true;
    std::vector<float> scratch(s.conv_scratch_floats(g, 1) + 1);
    s.conv(g, packed.data(), in.data(), out.data(), ep, scratch.data(), nullptr);
    report(out[0] == 4.0f && out[1] == 0.0f, "scalar sanity: 1x1 conv bias relu");
  }
  {  // maxpool 2x2 s2 on 2x2 single channel; gap; linear; merge
    std::vector<float> in = {1, -2, 5, 3}, out(1);
    s.maxpool(2, 2, 1, 2, 2, 0, in.data(), out.data(), nullptr);
    report(out[0] == 5.0f, "scalar sanity: maxpool");
    s.global_avgpool(2, 2, 1, in.data(), out.data());
    report(out[0] == 1.75f, "scalar sanity: global_avgpool");
    std::vector<float> w = {1, 2, 3, 4, 5, 6}, x = {1, 0, -1}, b = {10, 20}, y(2);
    s.linear(3, 2, w.data(), b.data(), x.data(), y.data());
    report(y[0] == 8.0f && y[1] == 18.0f, "scalar sanity: linear");
    // kernel 3, out 1, in 1, rank 2: centre tap (index 4) += 1*3 + 2*4
    std::vector<float> wm(9, 0.0f), a = {3, 4}, bb = {1, 2};
    s.lowrank_merge(1, 1, 3, 2, a.data(), bb.data(), wm.data());
    bool ok = wm[4] == 11.0f;
    for (int i = 0; i < 9; ++i) ok = ok && (i == 4 || wm[i] == 0.0f);
    report(ok, "scalar sanity: lowrank_merge");
  }
}

}  // namespace

int main() {
  const std::vector<const k::KernelTable*> tables = tested_tables();
  test_scalar_sanity();
  test_conv(tables);
  test_conv_lowrank(tables);
  return tcheck::summary("test_kernels_conv");
}
