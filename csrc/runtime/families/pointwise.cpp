// Pointwise family (pointwise.h): <conv>.pointwise_delta F32 [O', I'].
#include "runtime/families/pointwise.h"

#include "runtime/task.h"

namespace spaedge::families::pointwise {

void read_conv(Reader& r, const ConvSite& site, ConvTask& ct) {
  const TensorView* pd = r.get(site.node.name + ".pointwise_delta", DType::F32, false, "");
  if (!pd) return;
  r.expect_shape(*pd, {site.O, site.I}, "(kept outputs, kept inputs): added at the centre tap");
  ct.pointwise = State{r.floats(*pd)};
}

void read_model(Reader&, std::vector<ConvTask>&) {}

bool general(const State& s) {
  return !s.delta.empty();
}

void apply(const State& s, const ConvTask& ct, const ApplyStep&, float* w) {
  const size_t kk = size_t(ct.kernel) * size_t(ct.kernel), Ip = size_t(ct.in_c);
  const size_t c = size_t(ct.kernel / 2) * size_t(ct.kernel) + size_t(ct.kernel / 2);
  const float* d = s.delta.data();  // [O', I']
  for (size_t o = 0; o < size_t(ct.out_c); ++o)
    for (size_t i = 0; i < Ip; ++i) w[(o * kk + c) * Ip + i] += d[o * Ip + i];
}

}  // namespace spaedge::families::pointwise
