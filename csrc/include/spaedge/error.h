// spaedge::Error: the one exception type the runtime throws.
//
// Every message names the file (as the caller spelled its path) and the field
// or tensor at fault, e.g.
//   "digits.safetensors: tensor 'layer1.0.conv1.out_index': index 70 out of
//    range for 64 output channels".
#pragma once

#include <stdexcept>
#include <string>

namespace spaedge {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace spaedge
