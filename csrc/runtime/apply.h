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

}  // namespace spaedge
