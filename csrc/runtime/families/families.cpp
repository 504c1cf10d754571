// The dispatch over the family list (family.h), generated from families.inc.
#include <cmath>
#include <sstream>

#include "runtime/task.h"

namespace spaedge::families {

const std::vector<Info>& list() {
  static const std::vector<Info> l = {
#define SPAEDGE_FAMILY(id, name, conv, model, meta, from, to) \
  {#id, name, conv, model, meta, from, to},
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
  };
  return l;
}

const Info& info(Family f) {
  return list()[size_t(f)];
}

const TensorView* Reader::get(const std::string& name, DType dt, bool required,
                              const std::string& what) {
  const TensorView* t = b.find(name);
  if (!t) {
    if (required) b.fail("missing tensor '" + name + "' (" + what + ")");
    return nullptr;
  }
  used_.insert(name);
  if (t->dtype != dt)
    b.fail_tensor(name,
                  std::string("dtype is ") + dtype_name(t->dtype) + ", expected " + dtype_name(dt));
  if (dt != DType::U8) params_ += t->numel;  // a U8 mask's bits are no parameters
  return t;
}

void Reader::expect_shape(const TensorView& t, const std::vector<int64_t>& s,
                          const std::string& why) const {
  if (t.shape == s) return;
  TensorView want;
  want.shape = s;
  b.fail_tensor(t.name, "shape " + t.shape_str() + ", expected " + want.shape_str() + " " + why);
}

std::vector<float> Reader::floats(const TensorView& t) const {
  std::vector<float> v(t.numel);
  t.copy_to(v.data());
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      b.fail_tensor(t.name, "element " + std::to_string(i) + " is not finite");
  return v;
}

const std::string& Reader::conv_name(const ConvTask& ct) const {
  return graph.nodes[size_t(ct.node)].name;
}

const std::vector<std::pair<std::string, std::string>>& Reader::entries(Family f) const {
  return meta.entries[size_t(f)];
}

void read_conv(Reader& r, const ConvSite& site, ConvTask& ct) {
#define SPAEDGE_FAMILY(id, ...) id::read_conv(r, site, ct);
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
}

void read_model(Reader& r, std::vector<ConvTask>& convs) {
#define SPAEDGE_FAMILY(id, ...) id::read_model(r, convs);
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
}

bool needs_general(const ConvTask& ct) {
#define SPAEDGE_FAMILY(id, ...) \
  if (ct.id && id::general(*ct.id)) return true;
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
  return false;
}

void apply(const ConvTask& ct, const ApplyStep& step, float* w) {
#define SPAEDGE_FAMILY(id, ...) \
  if (ct.id) id::apply(*ct.id, ct, step, w);
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
}

std::string tensor_names() {
  std::string conv, model;
  for (const Info& f : list()) {
    std::istringstream c(f.conv_tensors), m(f.model_tensors);
    for (std::string w; c >> w;) conv += ", ." + w;
    for (std::string w; m >> w;) model += "; " + w;
  }
  return conv + model;
}

}  // namespace spaedge::families
