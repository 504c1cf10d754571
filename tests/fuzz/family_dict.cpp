// Prints the libFuzzer dictionary tokens of the task bundle's tensor
// families, from the runtime's list (csrc/runtime/families/families.inc):
// every conv tensor suffix, the fixed parts of every model tensor pattern and
// every metadata key. .ci/fuzz.sh appends them to tests/fuzz/bundle.dict.
#include <cstdio>
#include <set>
#include <sstream>
#include <string>

#include "runtime/families/family.h"

int main() {
  std::set<std::string> tokens;
  for (const spaedge::families::Info& f : spaedge::families::list()) {
    std::istringstream conv(f.conv_tensors), model(f.model_tensors);
    for (std::string w; conv >> w;) tokens.insert("." + w);
    for (std::string w; model >> w;) {  // "splopa.<set>.u": "splopa." and ".u"
      const size_t at = w.find("<set>");
      tokens.insert(at == std::string::npos ? w : w.substr(0, at));
      if (at != std::string::npos) tokens.insert(w.substr(at + 5));
    }
    if (*f.metadata) tokens.insert(f.metadata);
  }
  std::printf("# tensor families (csrc/runtime/families/families.inc), printed by fuzz_dict\n");
  for (const std::string& t : tokens) std::printf("\"%s\"\n", t.c_str());
  return 0;
}
