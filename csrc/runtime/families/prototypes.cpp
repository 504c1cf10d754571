// Prototype-set family (prototypes.h): <conv>.splopa_coef F32 [n, O'/bo,
// I'/bi]; splopa.S.u F32 [n, bo, r] and splopa.S.v F32 [n, r, bi] per set S;
// metadata 'splopa_sets' {conv: S}. Every coefficient tensor has an entry,
// every entry names a conv with coefficients and a set whose tensors exist
// and fit (same n, blocks tiling the kept channels), and every set tensor is
// used.
#include "runtime/families/prototypes.h"

#include <map>

#include "runtime/task.h"

namespace spaedge::families::prototypes {

namespace {

const State& set_of(Reader& r, std::map<std::string, State>& sets, const std::string& name,
                    const std::string& conv) {
  auto it = sets.find(name);
  if (it != sets.end()) return it->second;
  const std::string why =
      "prototype set '" + name + "' of conv '" + conv + "' (metadata 'splopa_sets')";
  const TensorView* u = r.get("splopa." + name + ".u", DType::F32, true, why);
  const TensorView* v = r.get("splopa." + name + ".v", DType::F32, true, why);
  if (u->shape.size() != 3 || u->shape[0] < 1 || u->shape[1] < 1 || u->shape[2] < 1)
    r.b.fail_tensor(u->name, "shape " + u->shape_str() +
                                 ", expected [n, bo, r] (prototypes, block outputs, "
                                 "rank), each at least 1");
  const int64_t n = u->shape[0], rank = u->shape[2];
  if (n > kMaxPrototypes) r.b.fail_tensor(u->name, std::to_string(n) + " prototypes is absurd");
  if (rank > kMaxRank) r.b.fail_tensor(u->name, "rank " + std::to_string(rank) + " is absurd");
  if (v->shape.size() != 3 || v->shape[0] != n || v->shape[1] != rank || v->shape[2] < 1)
    r.b.fail_tensor(v->name, "shape " + v->shape_str() + ", expected [" + std::to_string(n) + ", " +
                                 std::to_string(rank) + ", bi] (the n and rank of '" + u->name +
                                 "', block inputs)");
  if (u->shape[1] > kMaxChannels || v->shape[2] > kMaxChannels)
    r.b.fail_tensor(u->name, "blocks of " + std::to_string(u->shape[1]) + "x" +
                                 std::to_string(v->shape[2]) + " channels are absurd");
  State s;
  s.n = int(n);
  s.rank = int(rank);
  s.bo = int(u->shape[1]);
  s.bi = int(v->shape[2]);
  s.u = r.floats(*u);
  s.v = r.floats(*v);
  return sets.emplace(name, std::move(s)).first->second;
}

}  // namespace

void read_conv(Reader&, const ConvSite&, ConvTask&) {}  // needs the sets: read_model

void read_model(Reader& r, std::vector<ConvTask>& convs) {
  std::map<std::string, std::string> set_name;  // conv -> set
  for (const auto& kv : r.entries(Family::prototypes)) set_name[kv.first] = kv.second;
  std::set<std::string> names;
  std::map<std::string, State> sets;
  for (ConvTask& ct : convs) {
    const std::string& L = r.conv_name(ct);
    names.insert(L);
    const TensorView* c = r.get(L + ".splopa_coef", DType::F32, false, "");
    auto it = set_name.find(L);
    if (!c) {
      if (it != set_name.end())
        r.b.fail("metadata 'splopa_sets': entry '" + L + "': the conv has no tensor '" + L +
                 ".splopa_coef'");
      continue;
    }
    if (it == set_name.end())
      r.b.fail_tensor(c->name,
                      "has no prototype set: metadata 'splopa_sets' has no entry for '" + L + "'");
    const State& s = set_of(r, sets, it->second, L);
    const int64_t O = ct.out_c, I = ct.in_c;
    const std::string blocks = std::to_string(s.bo) + "x" + std::to_string(s.bi);
    if (c->shape.size() != 3 || c->shape[0] != s.n || s.bo > O || s.bi > I || c->shape[1] > O ||
        c->shape[2] > I || c->shape[1] * s.bo != O || c->shape[2] * s.bi != I)
      r.b.fail_tensor(c->name, "shape " + c->shape_str() + ", expected [" + std::to_string(s.n) +
                                   ", " + (O % s.bo ? "?" : std::to_string(O / s.bo)) + ", " +
                                   (I % s.bi ? "?" : std::to_string(I / s.bi)) + "] (the " +
                                   std::to_string(s.n) + " prototypes of set '" + it->second +
                                   "' in " + blocks + " blocks tiling the " + std::to_string(O) +
                                   "x" + std::to_string(I) + " kept channels)");
    State own = s;
    own.coef = r.floats(*c);
    ct.prototypes = std::move(own);
  }
  for (const auto& kv : set_name)
    if (!names.count(kv.first))
      r.b.fail("metadata 'splopa_sets': entry '" + kv.first + "': no conv of the base is called '" +
               kv.first + "'");
  for (const auto& t : r.b.tensors())
    if (t.name.compare(0, 7, "splopa.") == 0 && !r.used(t.name))
      r.b.fail_tensor(t.name,
                      "unknown tensor: no conv's entry in metadata 'splopa_sets' uses this "
                      "prototype set (set tensors are splopa.<set>.u and splopa.<set>.v)");
}

bool general(const State& s) {
  return !s.coef.empty();
}

void apply(const State& s, const ConvTask& ct, const ApplyStep& step, float* w) {
  const size_t kk = size_t(ct.kernel) * size_t(ct.kernel), Ip = size_t(ct.in_c);
  kernels::SplopaArgs a;
  a.out_c = ct.out_c;
  a.in_c = ct.in_c;
  a.n = s.n;
  a.rank = s.rank;
  a.bo = s.bo;
  a.bi = s.bi;
  a.u = s.u.data();
  a.v = s.v.data();
  a.coef = s.coef.data();
  const size_t c = size_t(ct.kernel / 2) * size_t(ct.kernel) + size_t(ct.kernel / 2);
  step.kt.splopa_expand(a, w + c * Ip, kk * Ip);
}

}  // namespace spaedge::families::prototypes
