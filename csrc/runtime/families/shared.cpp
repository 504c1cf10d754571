// Shared-adapter family (shared.h).
#include "runtime/families/shared.h"

#include <map>

#include "runtime/task.h"

namespace spaedge::families::shared {

void read_conv(Reader&, const ConvSite&, ConvTask&) {}  // needs every conv: read_model

void read_model(Reader& r, std::vector<ConvTask>& convs) {
  const auto& entries = r.entries(Family::shared);
  if (entries.empty()) return;
  std::map<std::string, size_t> conv_by_name;
  for (size_t ci = 0; ci < convs.size(); ++ci) conv_by_name[r.conv_name(convs[ci])] = ci;
  std::map<std::string, std::string> targets(entries.begin(), entries.end());
  for (const auto& kv : entries) {
    const std::string where = "metadata 'shared_adapters': entry '" + kv.first + "'";
    auto ti = conv_by_name.find(kv.first);
    auto si = conv_by_name.find(kv.second);
    if (ti == conv_by_name.end())
      r.b.fail(where + ": no conv of the base is called '" + kv.first + "'");
    if (si == conv_by_name.end())
      r.b.fail(where + ": no conv of the base is called '" + kv.second + "'");
    ConvTask& tc = convs[ti->second];
    const ConvTask& sc = convs[si->second];
    if (tc.lowrank || (tc.sparse && tc.sparse->factors))
      r.b.fail(where + ": the target has its own lora_a/lora_b; a shared adapter replaces them");
    if (sc.sparse && sc.sparse->factors)
      r.b.fail(where + ": the source '" + kv.second +
               "' has sparse factors; only dense lora_a/lora_b are shared");
    if (!sc.lowrank || sc.shared || targets.count(kv.second))
      r.b.fail(where + ": the source '" + kv.second +
               "' has no lora_a/lora_b of its own (chains are not allowed)");
    if (sc.out_c != tc.out_c || sc.in_c != tc.in_c)
      r.b.fail(where + ": the source keeps " + std::to_string(sc.out_c) + "x" +
               std::to_string(sc.in_c) + " channels, the target " + std::to_string(tc.out_c) + "x" +
               std::to_string(tc.in_c) + "; a shared adapter needs equal kept shapes");
    tc.lowrank = sc.lowrank;
    tc.shared = State{kv.second};
  }
}

bool general(const State&) {
  return false;
}

void apply(const State&, const ConvTask&, const ApplyStep&, float*) {}  // applied as low-rank

}  // namespace spaedge::families::shared
