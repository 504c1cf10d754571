// Dense-delta family: a whole [O', I', k, k] update of the kept weight
// (fine-pruning). Internal header.
#pragma once

#include <vector>

namespace spaedge::families::dense_delta {

struct State {
  std::vector<float> delta;  // OIHW [O', I', k, k]
};

}  // namespace spaedge::families::dense_delta
