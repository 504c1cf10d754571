// Shared-adapter family (Pear): metadata 'shared_adapters' {target conv:
// source conv}; the target stores no factors and uses the source's dense
// low-rank factors (equal kept output/input counts, no chains). Internal header.
#pragma once

#include <string>

namespace spaedge::families::shared {

struct State {
  std::string source;  // the conv whose low-rank factors this one uses
};

}  // namespace spaedge::families::shared
