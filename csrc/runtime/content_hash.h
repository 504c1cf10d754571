// The canonical content hash of format version 2 (docs/format.md, "Content
// hash"). Internal header.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "runtime/sha256.h"
#include "spaedge/bundle.h"

namespace spaedge {

// Feeds `h` the canonical encoding of a bundle's header: every metadata entry
// but content_hash in bytewise key order, then every tensor's table entry
// (name, dtype, shape, data_offsets) in bytewise name order. The caller then
// feeds the data section and finishes the hash.
void hash_header(Sha256& h, const std::map<std::string, std::string>& metadata,
                 const std::vector<TensorView>& tensors);

}  // namespace spaedge
