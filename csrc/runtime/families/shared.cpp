// Shared-adapter family (shared.h): shared.S.a F32 [r, I] and shared.S.b F32
// [O, r] per shared adapter S, r in [1, kMaxRank], O x I the base channels of
// every conv using S; metadata 'shared_adapters' {conv: S}. A conv of S has
// no lora_a/lora_b of its own (dense or sparse); it gets the low-rank state of
// a[:, in_index] and b[out_index] (its kept channels, checked in range by the
// graph walk). Every entry names a conv of the base and an adapter whose
// tensors exist and fit, and every shared.* tensor is used.
#include "runtime/families/shared.h"

#include <map>

#include "runtime/task.h"

namespace spaedge::families::shared {

namespace {

struct Factors {
  int64_t rank = 0, out = 0, in = 0;
  std::vector<float> a, b;  // [r, I], [O, r]
};

const Factors& factors_of(Reader& r, std::map<std::string, Factors>& sets, const std::string& name,
                          const std::string& conv) {
  auto it = sets.find(name);
  if (it != sets.end()) return it->second;
  const std::string why =
      "shared adapter '" + name + "' of conv '" + conv + "' (metadata 'shared_adapters')";
  const TensorView* a = r.get("shared." + name + ".a", DType::F32, true, why);
  const TensorView* b = r.get("shared." + name + ".b", DType::F32, true, why);
  if (a->shape.size() != 2 || a->shape[0] < 1 || a->shape[1] < 1)
    r.b.fail_tensor(a->name, "shape " + a->shape_str() +
                                 ", expected [r, I] (rank, the base conv's input channels), "
                                 "each at least 1");
  const int64_t rank = a->shape[0];
  if (rank > kMaxRank) r.b.fail_tensor(a->name, "rank " + std::to_string(rank) + " is absurd");
  if (a->shape[1] > kMaxChannels)
    r.b.fail_tensor(a->name, std::to_string(a->shape[1]) + " input channels is absurd");
  if (b->shape.size() != 2 || b->shape[1] != rank || b->shape[0] < 1 || b->shape[0] > kMaxChannels)
    r.b.fail_tensor(b->name, "shape " + b->shape_str() + ", expected [O, " + std::to_string(rank) +
                                 "] (the base conv's output channels, the "
                                 "rank of '" +
                                 a->name + "')");
  Factors f;
  f.rank = rank;
  f.out = b->shape[0];
  f.in = a->shape[1];
  f.a = r.floats(*a);
  f.b = r.floats(*b);
  return sets.emplace(name, std::move(f)).first->second;
}

}  // namespace

void read_conv(Reader&, const ConvSite&, ConvTask&) {}  // needs the sets: read_model

void read_model(Reader& r, std::vector<ConvTask>& convs) {
  std::map<std::string, size_t> conv_by_name;
  for (size_t ci = 0; ci < convs.size(); ++ci) conv_by_name[r.conv_name(convs[ci])] = ci;
  std::map<std::string, Factors> sets;
  for (const auto& kv : r.entries(Family::shared)) {
    const std::string where = "metadata 'shared_adapters': entry '" + kv.first + "'";
    auto ci = conv_by_name.find(kv.first);
    if (ci == conv_by_name.end())
      r.b.fail(where + ": no conv of the base is called '" + kv.first + "'");
    ConvTask& ct = convs[ci->second];
    if (ct.lowrank || (ct.sparse && ct.sparse->factors))
      r.b.fail(where + ": the conv has its own lora_a/lora_b; a shared adapter replaces them");
    const Factors& f = factors_of(r, sets, kv.second, kv.first);
    const Node& node = r.graph.nodes[size_t(ct.node)];
    if (f.out != node.out_channels || f.in != node.in_channels)
      r.b.fail(where + ": shared adapter '" + kv.second + "' is " + std::to_string(f.out) + "x" +
               std::to_string(f.in) + " (b's rows x a's columns), but conv '" + kv.first +
               "' has " + std::to_string(node.out_channels) + "x" +
               std::to_string(node.in_channels) +
               " base channels; a shared adapter is stored in the base's channel coordinates");
    const size_t R = size_t(f.rank), Op = size_t(ct.out_c), Ip = size_t(ct.in_c);
    std::vector<float> a(R * Ip), b(Op * R);
    for (size_t k = 0; k < R; ++k)
      for (size_t i = 0; i < Ip; ++i) {
        const int32_t src = ct.in_index[i];
        if (src < 0 || src >= f.in)  // the graph walk checked it; never read out of bounds
          r.b.fail(where + ": kept input channel " + std::to_string(src) + " is out of range");
        a[k * Ip + i] = f.a[k * size_t(f.in) + size_t(src)];
      }
    for (size_t o = 0; o < Op; ++o) {
      const int32_t src = ct.out_index[o];
      if (src < 0 || src >= f.out)
        r.b.fail(where + ": kept output channel " + std::to_string(src) + " is out of range");
      for (size_t k = 0; k < R; ++k) b[o * R + k] = f.b[size_t(src) * R + k];
    }
    ct.lowrank = lowrank::make(int(f.rank), ct.out_c, std::move(a), std::move(b));
    ct.shared = State{kv.second};
  }
  for (const auto& t : r.b.tensors())
    if (t.name.compare(0, 7, "shared.") == 0 && !r.used(t.name))
      r.b.fail_tensor(t.name,
                      "unknown tensor: no entry of metadata 'shared_adapters' uses this shared "
                      "adapter (its tensors are shared.<adapter>.a and shared.<adapter>.b)");
}

bool general(const State&) {
  return false;
}

void apply(const State&, const ConvTask&, const ApplyStep&, float*) {}  // applied as low-rank

}  // namespace spaedge::families::shared
