// The executor: runs an applied task's execution plan over its arena with
// the active kernel table. Internal header.
#pragma once

#include "runtime/apply.h"
#include "runtime/workers.h"

namespace spaedge {

// Runs `batch` NCHW images through the applied task; logits are [batch, classes].
// Kernels run on the caller and `threads` - 1 helpers of `pool`.
void execute(Applied& a, int threads, Workers& pool, const float* input_nchw, int batch,
             float* logits);

}  // namespace spaedge
