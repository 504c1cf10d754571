// The execution plan of a task: the base graph's nodes fused into steps
// (conv [+ batchnorm] [+ add] [+ relu], add [+ relu], the rest one node a
// step) and every value's place in one activation arena, assigned by
// liveness. Built once when a task is loaded. Internal header.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/model.h"

namespace spaedge {

class Task;

enum class StepKind { Conv, Relu, Add, MaxPool, Gap, Linear };

struct Step {
  StepKind kind = StepKind::Relu;
  int index = -1;              // ConvTask / LinearTask index for conv / linear steps
  int in = -1, in2 = -1;       // value ids; in2 = residual (conv) or second operand (add)
  int out = -1;                // value id written
  bool relu = false;           // fused ReLU (conv epilogue, add)
  kernels::ConvGeometry geom;  // conv
  int h = 0, w = 0, c = 0;     // input dims (maxpool, gap, relu, add: h*w*c elements)
  int pool_k = 0, pool_s = 0, pool_p = 0;
  std::string label;  // node names fused into this step, for diagnostics
};

struct ValueShape {
  int h = 0, w = 0, c = 0;
  size_t floats() const { return size_t(h) * size_t(w) * size_t(c); }
};

// What the executor runs: the steps in order, over one arena of
// `arena_floats` floats in which value v lives at offset[v].
struct ExecPlan {
  std::vector<Step> steps;
  std::vector<ValueShape> shape;  // per value id
  std::vector<size_t> offset;     // arena offset per materialised value
  size_t arena_floats = 0;
  int output = -1;
};

// Fills task.exec_plan (whose `shape` the task's validation has set: the
// task's size of every value) from the graph and the task's convs and
// linears.
void build_exec_plan(const Graph& g, Task& task);

}  // namespace spaedge
