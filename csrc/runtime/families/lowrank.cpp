// Low-rank family (lowrank.h): <conv>.lora_a F32 [r, I'] and <conv>.lora_b
// F32 [O', r], present together; r in [1, kMaxRank].
#include "runtime/families/lowrank.h"

#include "runtime/task.h"

namespace spaedge::families::lowrank {

State make(int rank, int out_c, std::vector<float> a, std::vector<float> b) {
  State s;
  s.rank = rank;
  s.a = std::move(a);
  s.b = std::move(b);
  s.bt.resize(size_t(rank) * size_t(out_c));
  for (size_t o = 0; o < size_t(out_c); ++o)
    for (size_t r = 0; r < size_t(rank); ++r)
      s.bt[r * size_t(out_c) + o] = s.b[o * size_t(rank) + r];
  return s;
}

void read_conv(Reader& r, const ConvSite& site, ConvTask& ct) {
  const std::string& L = site.node.name;
  const TensorView* la = r.get(L + ".lora_a", DType::F32, false, "");
  const TensorView* lb = r.get(L + ".lora_b", DType::F32, false, "");
  if (la && !lb) r.b.fail("missing tensor '" + L + ".lora_b' (present iff '" + L + ".lora_a' is)");
  if (lb && !la) r.b.fail("missing tensor '" + L + ".lora_a' (present iff '" + L + ".lora_b' is)");
  if (!la) return;
  if (la->shape.size() != 2 || la->shape[1] != site.I)
    r.b.fail_tensor(la->name, "shape " + la->shape_str() + ", expected [r, " +
                                  std::to_string(site.I) + "] (rank x kept inputs)");
  const int64_t rank = la->shape[0];
  if (rank > kMaxRank) r.b.fail_tensor(la->name, "rank " + std::to_string(rank) + " is absurd");
  r.expect_shape(*lb, {site.O, rank}, "(kept outputs x rank of lora_a)");
  ct.lowrank = make(int(rank), int(site.O), r.floats(*la), r.floats(*lb));
}

void read_model(Reader&, std::vector<ConvTask>&) {}

// The one-pass path applies factors itself (kernels::conv_apply).
bool general(const State&) {
  return false;
}

void apply(const State& s, const ConvTask& ct, const ApplyStep& step, float* w) {
  if (step.fused == 0)
    step.kt.lowrank_merge(ct.out_c, ct.in_c, ct.kernel, s.rank, s.a.data(), s.b.data(), w);
}

}  // namespace spaedge::families::lowrank
