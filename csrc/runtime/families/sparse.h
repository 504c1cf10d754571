// Sparse-with-bitmask family: stored entries as F32 values at the set bits
// of a U8 mask (docs/format.md, "Sparse positions"): a sparse update of the
// task weight (SparseAdapter on SPPaRA), and sparse low-rank factors
// (SparseAdapter on SPLoRA), densified at load into the low-rank or the
// pointwise family. Internal header.
#pragma once

#include <cstdint>
#include <vector>

namespace spaedge::families::sparse {

struct State {
  std::vector<int64_t> index;  // flat OIHW positions in [O', I', k, k], increasing ...
  std::vector<float> values;   // ... and their values
  bool factors = false;        // the conv's low-rank factors were stored sparse
};

}  // namespace spaedge::families::sparse
