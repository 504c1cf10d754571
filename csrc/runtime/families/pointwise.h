// Pointwise family: a full-rank [O', I'] update added at the centre tap
// (SPPaRA; SPLoPA's convs without blocks; sparse factors whose product is
// smaller than they are). Internal header.
#pragma once

#include <vector>

namespace spaedge::families::pointwise {

struct State {
  std::vector<float> delta;  // [O', I']
};

}  // namespace spaedge::families::pointwise
