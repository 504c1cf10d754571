// What every tensor family (families.inc) implements, and the dispatch over
// the list: per-conv and model-level readers, whether a conv needs the
// general path of task application, the general path's update steps, and
// the names for messages and the fuzz dictionary. Internal header.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/model.h"
#include "spaedge/bundle.h"

namespace spaedge {

struct ConvTask;
struct TaskMetadata;

namespace families {

enum class Family {
#define SPAEDGE_FAMILY(id, ...) id,
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
};
constexpr size_t kFamilies = 0
#define SPAEDGE_FAMILY(...) +1
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
    ;

// One row of families.inc, as data.
struct Info {
  const char* id;
  const char* name;
  const char* conv_tensors;   // suffixes, space-separated
  const char* model_tensors;  // patterns, space-separated
  const char* metadata;       // key or ""
  const char* map_from;
  const char* map_to;
};
const std::vector<Info>& list();
const Info& info(Family f);

// What a family's reader sees: the bundle, the base's graph, the task's
// metadata (parsed once), and the tensors taken so far (anything not taken
// by the end is an unknown tensor).
class Reader {
 public:
  Reader(const Bundle& b, const Graph& g, const TaskMetadata& m, uint64_t& params)
      : b(b), graph(g), meta(m), params_(params) {}
  const Bundle& b;
  const Graph& graph;
  const TaskMetadata& meta;

  // The tensor, checked for dtype and marked used; null when absent and not
  // `required` (then "missing tensor 'name' (what)").
  const TensorView* get(const std::string& name, DType dt, bool required, const std::string& what);
  void expect_shape(const TensorView& t, const std::vector<int64_t>& s,
                    const std::string& why) const;
  // The values, each finite.
  std::vector<float> floats(const TensorView& t) const;
  bool used(const std::string& name) const { return used_.count(name) != 0; }
  const std::string& conv_name(const ConvTask& ct) const;
  // The {from: to} entries of a family's metadata key (empty when absent).
  const std::vector<std::pair<std::string, std::string>>& entries(Family f) const;

 private:
  std::set<std::string> used_;
  uint64_t& params_;
};

// The conv being read: its base node and kept sizes (O' outputs, I' inputs, k x k taps).
struct ConvSite {
  const Node& node;
  int64_t O, I, k;
};

// What an update step of the general path sees: the kernel table and the
// rank fused into the kernel (0: merged mode or no factors).
struct ApplyStep {
  const kernels::KernelTable& kt;
  int fused;
};

// Every family implements these (a no-op where it has nothing to do).
#define SPAEDGE_FAMILY(id, ...)                                                    \
  namespace id {                                                                   \
  struct State;                                                                    \
  /* Reads and checks the conv's tensors of this family (graph order). */          \
  void read_conv(Reader& r, const ConvSite& site, ConvTask& ct);                   \
  /* After every conv: model-level tensors and metadata. */                        \
  void read_model(Reader& r, std::vector<ConvTask>& convs);                        \
  /* Whether the conv's state needs the general path (a gathered workspace). */    \
  bool general(const State& s);                                                    \
  /* Adds the conv's update to the gathered OHWI workspace w [O'][k*k][I']. */     \
  void apply(const State& s, const ConvTask& ct, const ApplyStep& step, float* w); \
  }
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY

// The list walked in order.
void read_conv(Reader& r, const ConvSite& site, ConvTask& ct);
void read_model(Reader& r, std::vector<ConvTask>& convs);
bool needs_general(const ConvTask& ct);
void apply(const ConvTask& ct, const ApplyStep& step, float* w);
// "<conv>.lora_a, .lora_b, ..." and the model tensors: every family's
// tensors, for the unknown-tensor message.
std::string tensor_names();

}  // namespace families
}  // namespace spaedge
