// Dense-delta family (dense_delta.h): <conv>.weight_delta F32 [O', I', k, k].
#include "runtime/families/dense_delta.h"

#include "runtime/task.h"

namespace spaedge::families::dense_delta {

void read_conv(Reader& r, const ConvSite& site, ConvTask& ct) {
  const TensorView* wd = r.get(site.node.name + ".weight_delta", DType::F32, false, "");
  if (!wd) return;
  r.expect_shape(*wd, {site.O, site.I, site.k, site.k},
                 "(kept outputs, kept inputs, kernel, kernel)");
  ct.dense_delta = State{r.floats(*wd)};
}

void read_model(Reader&, std::vector<ConvTask>&) {}

bool general(const State& s) {
  return !s.delta.empty();
}

void apply(const State& s, const ConvTask& ct, const ApplyStep&, float* w) {
  const size_t kk = size_t(ct.kernel) * size_t(ct.kernel), Ip = size_t(ct.in_c);
  const float* d = s.delta.data();  // OIHW
  for (size_t o = 0; o < size_t(ct.out_c); ++o)
    for (size_t i = 0; i < Ip; ++i)
      for (size_t t = 0; t < kk; ++t) w[(o * kk + t) * Ip + i] += d[(o * Ip + i) * kk + t];
}

}  // namespace spaedge::families::dense_delta
