// Hooks for tests that need an event at an exact point inside the runtime
// (so they never race a timer). Internal header; production code never sets them.
#pragma once

#include <string>

namespace spaedge::testing {

// Called by every Bundle once its file is open and checked to be a regular
// file, before any byte of it is read: a test truncates or rewrites the file
// here to act "while the runtime loads it".
extern void (*bundle_opened)(const std::string& path);

}  // namespace spaedge::testing
