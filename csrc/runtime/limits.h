// The runtime's limits, written once (docs/runtime.md, docs/format.md). The
// compiled Python module exposes them (spaedge.runtime.LIMITS); the
// toolchain reads them from there instead of restating them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "spaedge/bundle.h"  // kMaxHeaderBytes

namespace spaedge {

// Channels of a base's (and a task's) input image.
constexpr int kMaxInputChannels = 4;
// Height and width of a task's input.
constexpr int kMaxInputSide = 4096;
// Channels of a conv in the base graph.
constexpr int kMaxChannels = 1 << 16;
// Kernel side and stride of a conv or maxpool.
constexpr int kMaxKernel = 64;
// Rank of low-rank factors (dense, sparse, prototype sets; metadata 'rank').
constexpr int kMaxRank = 1 << 16;
// Prototypes of a SPLoPA prototype set.
constexpr int kMaxPrototypes = 1 << 20;
// Classes of a task's head.
constexpr int kMaxClasses = 1 << 20;
// Activations of a task at its input size.
constexpr size_t kMaxArenaBytes = size_t(1) << 30;

}  // namespace spaedge
