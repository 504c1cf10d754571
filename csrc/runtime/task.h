// A task bundle, read and validated against its base at load time
// (Task::Task): everything a switch and a run need, copied out of the file,
// and the task's execution plan. Internal header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/exec_plan.h"
#include "runtime/model.h"

namespace spaedge {

// Per-conv task data, validated and copied out of the bundle at load time so a
// switch never touches the task file again.
struct ConvTask {
  int node = -1;                        // graph node index of the conv
  int out_c = 0, in_c = 0, kernel = 1;  // kept output/input channels
  std::vector<int32_t> out_index, in_index;
  int rank = 0;
  std::vector<float> lora_a;           // [rank, in_c]
  std::vector<float> lora_b;           // [out_c, rank]
  std::vector<float> lora_bt;          // lora_b transposed, [rank, out_c] (for kernels::conv_apply)
  std::vector<float> weight_delta;     // OIHW [out_c, in_c, k, k] or empty
  std::vector<float> pointwise_delta;  // [out_c, in_c] added at the centre tap, or empty
  std::vector<float> sparse_values;    // sparse update: values ...
  std::vector<int64_t>
      sparse_index;            // ... at flat OIHW positions (increasing; the set bits of its mask)
  std::vector<float> scale;    // folded BN scale per out channel, empty = 1
  std::vector<float> bias;     // final (folded) bias per out channel
  kernels::ConvGeometry geom;  // at the task's input size
  // SPLoPA (block-SPA): the conv's block coefficients C [n, out_c/bo, in_c/bi]
  // and a copy of its prototype set's U [n, bo, rank] and V [n, rank, bi]
  // (stored once per set in the bundle; a few dozen floats), expanded into
  // the centre tap at task application (kernels::splopa_expand). Empty
  // splopa_coef: none.
  int splopa_n = 0, splopa_rank = 0, splopa_bo = 1, splopa_bi = 1;
  std::vector<float> splopa_coef, splopa_u, splopa_v;
};

struct LinearTask {
  int node = -1;
  int in_f = 0, out_f = 0;
  std::vector<float> weight;  // [out_f, in_f]
  std::vector<float> bias;    // [out_f]
};

// Input limits of a task (docs/runtime.md), checked from the metadata before
// anything is allocated: 1 to kMaxInputChannels channels, sides up to
// kMaxInputSide; and the activation arena the input size implies, checked
// once the execution plan is laid out, before the switch allocates it.
constexpr int kMaxInputSide = 4096;
constexpr size_t kMaxArenaBytes = size_t(1) << 30;

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
  std::vector<std::pair<std::string, std::string>> shared_adapters;
  std::vector<std::pair<std::string, std::string>> splopa_sets;  // SPLoPA: {conv: prototype set}
};
TaskMetadata read_task_metadata(const Bundle& b);

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
  int classes() const { return int(labels.size()); }
};

}  // namespace spaedge
