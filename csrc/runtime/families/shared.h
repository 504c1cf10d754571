// Shared-adapter family (Pear): low-rank factors stored once in the BASE's
// channel coordinates, shared.S.a [r, I] and shared.S.b [O, r], and metadata
// 'shared_adapters' {conv: S}. Every conv of S gathers its own kept columns
// and rows (a[:, in_index], b[out_index]) into a low-rank state, so convs
// whose kept channels differ share one adapter. Internal header.
#pragma once

#include <string>

namespace spaedge::families::shared {

struct State {
  std::string set;  // the shared adapter this conv gathers its factors from
};

}  // namespace spaedge::families::shared
