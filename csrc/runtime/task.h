// A task bundle, read and validated against its base at load time
// (Task::Task): everything a switch and a run need, copied out of the file,
// and the task's execution plan. Internal header.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/exec_plan.h"
#include "runtime/families/states.h"
#include "runtime/limits.h"
#include "runtime/model.h"

namespace spaedge {

// Per-conv task data, validated and copied out of the bundle at load time so a
// switch never touches the task file again: the kept channels, the folded
// BatchNorm, and the state of each tensor family (families/families.inc)
// the conv uses, empty for the others.
struct ConvTask {
  int node = -1;                        // graph node index of the conv
  int out_c = 0, in_c = 0, kernel = 1;  // kept output/input channels
  std::vector<int32_t> out_index, in_index;
  std::vector<float> scale;    // folded BN scale per out channel, empty = 1
  std::vector<float> bias;     // final (folded) bias per out channel
  kernels::ConvGeometry geom;  // at the task's input size
#define SPAEDGE_FAMILY(id, ...) std::optional<families::id::State> id;
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
  // The conv's rank: its low-rank factors' (0 = none). Derived here only.
  int rank() const { return lowrank ? lowrank->rank : 0; }
};

struct LinearTask {
  int node = -1;
  int in_f = 0, out_f = 0;
  std::vector<float> weight;  // [out_f, in_f]
  std::vector<float> bias;    // [out_f]
};

// A task bundle's metadata, validated on its own (no base needed):
// base_hash (64 lowercase hex), task and method (non-empty), labels (a
// non-empty JSON list of distinct non-empty strings), input (channels,
// height, width within the limits; mean finite, std finite and > 0, one per
// channel), info (a JSON object when present), shared_adapters and
// splopa_sets (JSON objects of strings when present; checked against the
// graph and the tensors by Task).
struct TaskMetadata {
  std::string base_hash, name, method, info;
  std::vector<std::string> labels;
  int channels = 0, height = 0, width = 0;
  std::vector<float> mean, std;
  int rank = 0;  // metadata 'rank', 0 when absent
  // Per family (families::Family), the {from: to} entries of its metadata key.
  std::array<std::vector<std::pair<std::string, std::string>>, families::kFamilies> entries;
};
TaskMetadata read_task_metadata(const Bundle& b);
// The same checks on metadata alone (a bundle about to be written, or read
// by the Python toolchain); failures name `where`.
TaskMetadata read_task_metadata(const std::map<std::string, std::string>& metadata,
                                const std::string& where);

class Task {
 public:
  Task(const BaseModel& base, const std::string& path);

  std::string path, name, method, info;
  std::vector<std::string> labels;
  int channels = 0, height = 0, width = 0;
  std::vector<float> mean, std;
  size_t bundle_bytes = 0;
  uint64_t macs = 0;         // multiply-accumulates per image (convs + linears)
  uint64_t task_params = 0;  // F32 and I32 numbers stored in the task bundle (U8 masks not counted)
  std::vector<ConvTask> convs;  // in graph order
  std::vector<LinearTask> linears;
  ExecPlan exec_plan;
  // int8 task (docs/int8.md, (b)): per value id, the u8 quantization of
  // every spatial value the int8 executor stores (read for the graph input
  // and each conv chain's end, a maxpool's from its input); zp -1 elsewhere.
  bool int8 = false;
  std::vector<float> act_scale;
  std::vector<int> act_zp;
  int classes() const { return int(labels.size()); }
};

}  // namespace spaedge
