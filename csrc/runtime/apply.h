// Task application: a task's convs gathered from the base, merged with
// their adapters and deltas, BN-folded and packed for one kernel table,
// sized arena and scratch with them (Applied). Internal header.
#pragma once

#include <cstddef>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/buffer.h"
#include "runtime/model.h"
#include "runtime/task.h"
#include "runtime/workers.h"

namespace spaedge {

// How low-rank adapters are applied (docs/runtime.md).
enum class ApplyMode {
  Merged,        // W' += centre_tap(B A) at switch time; plain conv at run time (default)
  FusedLowRank,  // W' and (A, B) packed separately; conv + B (A x_centre) in one kernel pass
};

// One unit of task application: the whole conv `conv` by the general path
// (o0 = -1), or its kept outputs [o0, o1) in one pass from the base's stored
// OIHW weights (kernels::conv_apply).
struct ApplyItem {
  int conv = 0, o0 = 0, o1 = 0;
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
  FloatBuffer arena;                  // activations (an int8 task: u8, one byte per value)
  FloatBuffer scratch;                // conv scratch
  int scratch_threads = 0;
  // An int8 task (docs/int8.md (c), (d)): `packed` holds qconv_pack bytes,
  // packed_offset is in bytes, `ohwi` the dequantized workspace of convs
  // with an update and `bwork` the s8 OHWI workspace; per ConvTask its
  // requantization (the residual pointer set per run) over qmul / qadd.
  bool int8 = false;
  std::vector<kernels::QEpilogue> qep;
  std::vector<float> qmul, qadd;
  std::vector<size_t> vec_offset;  // per value id: its place in `vec` (vector values)
  FloatBuffer vec;                 // float values of an int8 run: gap outputs and the head's
  FloatBuffer qin;                 // one NHWC float image before it is quantized
};

// Gathers, merges, folds and packs `task` for `kt`; sizes arena and scratch.
// An int8 task is applied on the int8 base as docs/int8.md (c) says (`mode`
// must be Merged: int8 has no unmerged low-rank form).
// Work items run on the caller and `threads` - 1 helpers of `pool`.
void apply_task(const BaseModel& base, const Task& task, const kernels::KernelTable& kt,
                int threads, ApplyMode mode, Workers& pool, Applied& out);
// Resizes conv scratch for a new thread count.
void size_scratch(Applied& a, int threads);

}  // namespace spaedge
