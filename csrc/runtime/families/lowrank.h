// Low-rank family: dense factors A [r, I'] and B [O', r] whose product is
// added at the centre tap (SPLoRA, Pear; SparseAdapter's factors once
// densified). Internal header.
#pragma once

#include <vector>

namespace spaedge::families::lowrank {

struct State {
  int rank = 0;           // r >= 1: the conv's rank, derived here only
  std::vector<float> a;   // [r, I']
  std::vector<float> b;   // [O', r]
  std::vector<float> bt;  // b transposed, [r, O'] (kernels::conv_apply's panel lanes)
};

// The state of factors a [r, I'] and b [O', r] (bt computed).
State make(int rank, int out_c, std::vector<float> a, std::vector<float> b);

}  // namespace spaedge::families::lowrank
