// Task bundles: loading + validation against a base, the execution plan, task
// application (gather + low-rank merge + delta + BN fold + pack) and the
// executor. Internal header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/buffer.h"
#include "runtime/model.h"
#include "runtime/workers.h"

namespace spaedge {

// Per-conv task data, validated and copied out of the bundle at load time so a
// switch never touches the task file again.
struct ConvTask {
    int node = -1;                      // graph node index of the conv
    int out_c = 0, in_c = 0, kernel = 1;  // kept output/input channels
    std::vector<int32_t> out_index, in_index;
    int rank = 0;
    std::vector<float> lora_a;        // [rank, in_c]
    std::vector<float> lora_b;        // [out_c, rank]
    std::vector<float> lora_bt;       // lora_b transposed, [rank, out_c] (for kernels::conv_apply)
    std::vector<float> weight_delta;  // OIHW [out_c, in_c, k, k] or empty
    std::vector<float> pointwise_delta;  // [out_c, in_c] added at the centre tap, or empty
    std::vector<float> sparse_values;    // sparse update: values ...
    std::vector<int64_t> sparse_index;   // ... at flat OIHW positions (strictly increasing)
    std::vector<float> scale;         // folded BN scale per out channel, empty = 1
    std::vector<float> bias;          // final (folded) bias per out channel
    kernels::ConvGeometry geom;       // at the task's input size
};

struct LinearTask {
    int node = -1;
    int in_f = 0, out_f = 0;
    std::vector<float> weight;  // [out_f, in_f]
    std::vector<float> bias;    // [out_f]
};

enum class StepKind { Conv, Relu, Add, MaxPool, Gap, Linear };

struct Step {
    StepKind kind = StepKind::Relu;
    int index = -1;          // ConvTask / LinearTask index for conv / linear steps
    int in = -1, in2 = -1;   // value ids; in2 = residual (conv) or second operand (add)
    int out = -1;            // value id written
    bool relu = false;       // fused ReLU (conv epilogue, add)
    kernels::ConvGeometry geom;  // conv
    int h = 0, w = 0, c = 0;     // input dims (maxpool, gap, relu, add: h*w*c elements)
    int pool_k = 0, pool_s = 0, pool_p = 0;
    std::string label;       // node names fused into this step, for diagnostics
};

struct ValueShape {
    int h = 0, w = 0, c = 0;
    size_t floats() const { return size_t(h) * size_t(w) * size_t(c); }
};

struct Plan {
    std::vector<Step> steps;
    std::vector<ValueShape> shape;    // per value id
    std::vector<size_t> offset;       // arena offset per materialised value
    size_t arena_floats = 0;
    int output = -1;
};

class Task {
public:
    Task(const BaseModel& base, const std::string& path);

    std::string path, name, method, info;
    std::vector<std::string> labels;
    int channels = 0, height = 0, width = 0;
    std::vector<float> mean, std;
    size_t bundle_bytes = 0;
    uint64_t macs = 0;            // multiply-accumulates per image (convs + linears)
    uint64_t task_params = 0;     // floats stored in the task bundle
    std::vector<ConvTask> convs;  // in graph order
    std::vector<LinearTask> linears;
    Plan plan;
    int classes() const { return int(labels.size()); }
};

// How low-rank adapters are applied (DESIGN.md "Runtime").
enum class ApplyMode {
    Merged,        // W' += centre_tap(B A) at switch time; plain conv at run time (default)
    FusedLowRank,  // W' and (A, B) packed separately; conv + B (A x_centre) in one kernel pass
};

// One unit of task application: the whole conv `conv` by the general path
// (k0 = -1); or in one pass from the base, rows [k0, k1) from its tap-major
// copy (kernels::conv_apply) or, `oihw`, kept outputs [k0, k1) from its
// stored OIHW layout (kernels::conv_apply_oihw), whichever reads less.
struct ApplyItem {
    int conv = 0, k0 = 0, k1 = 0;
    bool oihw = false;
};

// The active task's weights packed for one kernel table, plus the arena.
struct Applied {
    const Task* task = nullptr;
    const kernels::KernelTable* kt = nullptr;
    FloatBuffer packed;                 // all conv weights, packed
    std::vector<size_t> packed_offset;  // per ConvTask
    std::vector<int> fused_rank;        // per ConvTask: rank run unmerged (0 = plain conv)
    FloatBuffer bwork;                  // BN-scaled B' workspace (fused mode)
    FloatBuffer ohwi;                   // gather/merge workspace (general path only)
    std::vector<ApplyItem> items;       // work list of the last application
    FloatBuffer arena;                  // activations
    FloatBuffer scratch;                // conv scratch
    int scratch_threads = 0;
};

// Gathers, merges, folds and packs `task` for `kt`; sizes arena and scratch.
// Work items run on the caller and `threads` - 1 helpers of `pool`.
void apply_task(const BaseModel& base, const Task& task, const kernels::KernelTable& kt,
                int threads, ApplyMode mode, Workers& pool, Applied& out);
// Resizes conv scratch for a new thread count.
void size_scratch(Applied& a, int threads);
// Runs `batch` NCHW images through the applied task; logits are [batch, classes].
// Kernels run on the caller and `threads` - 1 helpers of `pool`.
void execute(Applied& a, int threads, Workers& pool, const float* input_nchw, int batch, float* logits);

}  // namespace spaedge
