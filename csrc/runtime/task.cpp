// A task bundle read and validated against its base (task.h).
#include "runtime/task.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "runtime/json.h"

namespace spaedge {

namespace {

constexpr size_t kMaxValueFloats = kMaxArenaBytes / sizeof(float);

std::string shape_str(const std::vector<int64_t>& s) {
  TensorView t;
  t.shape = s;
  return t.shape_str();
}

json::Value meta_json(const Bundle& b, const std::string& key) {
  return json::parse(b.meta(key), b.path() + ": metadata '" + key + "'");
}

int meta_int(const Bundle& b, const json::Value& obj, const std::string& key, const char* field,
             int lo, int hi) {
  const json::Value* v = obj.find(field);
  if (!v) b.fail("metadata '" + key + "': missing field '" + field + "'");
  if (!v->is(json::Type::Number) || v->number != std::floor(v->number) || v->number < lo ||
      v->number > hi)
    b.fail("metadata '" + key + "': field '" + field + "' must be an integer in [" +
           std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return int(v->number);
}

std::vector<float> meta_floats(const Bundle& b, const json::Value& obj, const std::string& key,
                               const char* field, size_t n) {
  const json::Value* v = obj.find(field);
  if (!v) b.fail("metadata '" + key + "': missing field '" + field + "'");
  if (!v->is(json::Type::Array) || v->array.size() != n)
    b.fail("metadata '" + key + "': field '" + field + "' must be a list of " + std::to_string(n) +
           " numbers (one per input channel)");
  std::vector<float> out;
  for (const auto& e : v->array) {
    if (!e.is(json::Type::Number))
      b.fail("metadata '" + key + "': field '" + field + "' must hold numbers");
    out.push_back(float(e.number));
  }
  return out;
}

}  // namespace

TaskMetadata read_task_metadata(const Bundle& b) {
  TaskMetadata m;
  m.base_hash = b.meta("base_hash");
  bool hex = m.base_hash.size() == 64;
  for (char c : m.base_hash)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) hex = false;
  if (!hex) b.fail("metadata 'base_hash' is not 64 lowercase hex digits (a base's content_hash)");
  m.name = b.meta("task");
  if (m.name.empty()) b.fail("metadata 'task' is empty");
  m.method = b.meta("method");
  if (m.method.empty()) b.fail("metadata 'method' is empty");
  if (const std::string* info = b.find_meta("info")) {
    if (!meta_json(b, "info").is(json::Type::Object))
      b.fail("metadata 'info' must be a JSON object");
    m.info = *info;
  } else {
    m.info = "{}";
  }

  json::Value labels = meta_json(b, "labels");
  if (!labels.is(json::Type::Array) || labels.array.empty())
    b.fail("metadata 'labels' must be a non-empty JSON list of strings");
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < labels.array.size(); ++i) {
    const json::Value& l = labels.array[i];
    if (!l.is(json::Type::String))
      b.fail("metadata 'labels' must be a non-empty JSON list of strings");
    if (l.string.empty()) b.fail("metadata 'labels': label " + std::to_string(i) + " is empty");
    auto it = seen.emplace(l.string, i);
    if (!it.second)
      b.fail("metadata 'labels': label " + std::to_string(i) + " '" + l.string +
             "' repeats label " + std::to_string(it.first->second) +
             " (class names must be distinct)");
    m.labels.push_back(l.string);
  }

  json::Value in = meta_json(b, "input");
  if (!in.is(json::Type::Object)) b.fail("metadata 'input' must be a JSON object");
  m.channels = meta_int(b, in, "input", "channels", 1, kMaxInputChannels);
  m.height = meta_int(b, in, "input", "height", 1, kMaxInputSide);
  m.width = meta_int(b, in, "input", "width", 1, kMaxInputSide);
  m.mean = meta_floats(b, in, "input", "mean", size_t(m.channels));
  m.std = meta_floats(b, in, "input", "std", size_t(m.channels));
  for (size_t c = 0; c < m.std.size(); ++c) {
    if (!std::isfinite(m.mean[c]))
      b.fail("metadata 'input': mean[" + std::to_string(c) + "] is not finite");
    if (!(m.std[c] > 0) || !std::isfinite(m.std[c]))
      b.fail("metadata 'input': std[" + std::to_string(c) + "] must be a positive finite number");
  }

  if (b.find_meta("shared_adapters")) {
    json::Value sa = meta_json(b, "shared_adapters");
    if (!sa.is(json::Type::Object))
      b.fail("metadata 'shared_adapters' must be a JSON object {target conv: source conv}");
    for (const auto& kv : sa.object) {
      if (!kv.second.is(json::Type::String))
        b.fail("metadata 'shared_adapters': entry '" + kv.first +
               "' must map to a conv name (a string)");
      m.shared_adapters.emplace_back(kv.first, kv.second.string);
    }
  }

  // SPLoPA: {conv: prototype set} (Loader::read_splopa checks it against the tensors).
  if (b.find_meta("splopa_sets")) {
    json::Value ss = meta_json(b, "splopa_sets");
    if (!ss.is(json::Type::Object))
      b.fail("metadata 'splopa_sets' must be a JSON object {conv: prototype set}");
    for (const auto& kv : ss.object) {
      if (!kv.second.is(json::Type::String) || kv.second.string.empty())
        b.fail("metadata 'splopa_sets': entry '" + kv.first +
               "' must map to a prototype set name (a "
               "non-empty string)");
      m.splopa_sets.emplace_back(kv.first, kv.second.string);
    }
  }
  return m;
}

namespace {

class Loader {
 public:
  Loader(const BaseModel& base, const Bundle& b, Task& t) : base_(base), b_(b), t_(t) {}

  void run() {
    read_metadata();
    read_tensors();
    read_shared_adapters();
    read_splopa();
    check_unknown();
  }

 private:
  const BaseModel& base_;
  const Bundle& b_;
  Task& t_;
  std::set<std::string> used_;
  std::vector<std::vector<int32_t>> lists_;  // kept channels per value id
  std::vector<std::string> list_src_;        // what defined each list
  std::vector<ValueShape> shapes_;

  // ---- metadata -----------------------------------------------------------
  json::Value meta_json(const std::string& key) {
    return json::parse(b_.meta(key), b_.path() + ": metadata '" + key + "'");
  }

  void read_metadata() {
    const std::string& bh = b_.meta("base_hash");
    if (bh != base_.content_hash())
      throw Error("task bundle " + b_.path() + " was made for base " + bh +
                  ", but the loaded base is " + base_.content_hash() +
                  ": pack the task against this base or load the right base");
    TaskMetadata m = read_task_metadata(b_);
    t_.name = std::move(m.name);
    t_.method = std::move(m.method);
    t_.info = std::move(m.info);
    t_.labels = std::move(m.labels);
    t_.channels = m.channels;
    t_.height = m.height;
    t_.width = m.width;
    t_.mean = std::move(m.mean);
    t_.std = std::move(m.std);
    const int base_c = base_.graph().input_channels;
    if (t_.channels != base_c)
      b_.fail("metadata 'input': channels is " + std::to_string(t_.channels) +
              " but the base takes " + std::to_string(base_c) + " input channels");
  }

  // ---- tensors ------------------------------------------------------------
  const TensorView* get(const std::string& name, DType dt, bool required, const std::string& what) {
    const TensorView* t = b_.find(name);
    if (!t) {
      if (required) b_.fail("missing tensor '" + name + "' (" + what + ")");
      return nullptr;
    }
    used_.insert(name);
    if (t->dtype != dt)
      b_.fail_tensor(
          name, std::string("dtype is ") + dtype_name(t->dtype) + ", expected " + dtype_name(dt));
    if (dt != DType::U8) t_.task_params += t->numel;  // a U8 mask's bits are no parameters
    return t;
  }

  void expect_shape(const TensorView& t, const std::vector<int64_t>& s, const std::string& why) {
    if (t.shape != s)
      b_.fail_tensor(t.name, "shape " + t.shape_str() + ", expected " + shape_str(s) + " " + why);
  }

  std::vector<float> floats(const TensorView& t) {
    std::vector<float> v(t.numel);
    t.copy_to(v.data());
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]))
        b_.fail_tensor(t.name, "element " + std::to_string(i) + " is not finite");
    return v;
  }

  std::vector<int32_t> index(const TensorView& t, int limit, const char* side) {
    if (t.shape.size() != 1)
      b_.fail_tensor(t.name, "shape " + t.shape_str() + ", expected a 1-D list of channels");
    if (t.numel == 0) b_.fail_tensor(t.name, "keeps no channels (at least one is required)");
    if (t.numel > size_t(limit))
      b_.fail_tensor(t.name, "keeps " + std::to_string(t.numel) + " channels but the conv has " +
                                 std::to_string(limit) + " " + side + " channels");
    std::vector<int32_t> v(t.numel);
    for (size_t i = 0; i < t.numel; ++i) {
      int32_t x = t.i32(i);
      if (x < 0 || x >= limit)
        b_.fail_tensor(t.name, "index " + std::to_string(x) + " out of range for " +
                                   std::to_string(limit) + " " + side + " channels");
      if (i > 0 && x <= v[i - 1])
        b_.fail_tensor(t.name, "not strictly increasing: element " + std::to_string(i) + " is " +
                                   std::to_string(x) + " after " + std::to_string(v[i - 1]));
      v[i] = x;
    }
    return v;
  }

  void read_tensors() {
    const Graph& g = base_.graph();
    const size_t nv = g.value_names.size();
    lists_.assign(nv, {});
    list_src_.assign(nv, "");
    shapes_.assign(nv, {});
    std::vector<int> conv_of_node(g.nodes.size(), -1);

    lists_[0].resize(size_t(g.input_channels));
    for (int c = 0; c < g.input_channels; ++c) lists_[0][size_t(c)] = c;
    list_src_[0] = "the graph input '" + g.input_name + "'";
    shapes_[0] = {t_.height, t_.width, t_.channels};
    if (shapes_[0].floats() > kMaxValueFloats)
      b_.fail("metadata 'input': " + std::to_string(t_.channels) + "x" + std::to_string(t_.height) +
              "x" + std::to_string(t_.width) + " is too large an input");

    for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
      const Node& n = g.nodes[ni];
      const int in = n.inputs[0];
      const ValueShape& is = shapes_[size_t(in)];
      ValueShape os = is;
      std::vector<int32_t> out_list = lists_[size_t(in)];
      std::string out_src = list_src_[size_t(in)];
      switch (n.op) {
        case Op::Conv: {
          ConvTask ct;
          ct.node = int(ni);
          ct.kernel = n.kernel;
          const std::string L = n.name;
          const TensorView* oi =
              get(L + ".out_index", DType::I32, true, "kept output channels of conv '" + L + "'");
          const TensorView* ii =
              get(L + ".in_index", DType::I32, true, "kept input channels of conv '" + L + "'");
          ct.out_index = index(*oi, n.out_channels, "output");
          ct.in_index = index(*ii, n.in_channels, "input");
          if (ct.in_index != lists_[size_t(in)]) {
            const auto& want = lists_[size_t(in)];
            std::string why;
            if (want.size() != ct.in_index.size()) {
              why = "keeps " + std::to_string(ct.in_index.size()) + " channels but its input '" +
                    g.value_names[size_t(in)] + "' keeps " + std::to_string(want.size());
            } else {
              size_t k = 0;
              while (want[k] == ct.in_index[k]) ++k;
              why = "element " + std::to_string(k) + " is " + std::to_string(ct.in_index[k]) +
                    " but its input '" + g.value_names[size_t(in)] + "' keeps channel " +
                    std::to_string(want[k]) + " there";
            }
            b_.fail_tensor(ii->name, why + " (set by " + list_src_[size_t(in)] +
                                         "); in_index must equal the channels its "
                                         "input keeps");
          }
          ct.out_c = int(ct.out_index.size());
          ct.in_c = int(ct.in_index.size());
          const int64_t O = ct.out_c, I = ct.in_c, k = n.kernel;
          const TensorView* la = get(L + ".lora_a", DType::F32, false, "");
          const TensorView* lb = get(L + ".lora_b", DType::F32, false, "");
          if (la && !lb)
            b_.fail("missing tensor '" + L + ".lora_b' (present iff '" + L + ".lora_a' is)");
          if (lb && !la)
            b_.fail("missing tensor '" + L + ".lora_a' (present iff '" + L + ".lora_b' is)");
          if (la) {
            if (la->shape.size() != 2 || la->shape[1] != I)
              b_.fail_tensor(la->name, "shape " + la->shape_str() + ", expected [r, " +
                                           std::to_string(I) + "] (rank x kept inputs)");
            const int64_t r = la->shape[0];
            if (r > (1 << 16)) b_.fail_tensor(la->name, "rank " + std::to_string(r) + " is absurd");
            expect_shape(*lb, {O, r}, "(kept outputs x rank of lora_a)");
            ct.rank = int(r);
            ct.lora_a = floats(*la);
            ct.lora_b = floats(*lb);
          }
          if (const TensorView* wd = get(L + ".weight_delta", DType::F32, false, "")) {
            expect_shape(*wd, {O, I, k, k}, "(kept outputs, kept inputs, kernel, kernel)");
            ct.weight_delta = floats(*wd);
          }
          if (const TensorView* pd = get(L + ".pointwise_delta", DType::F32, false, "")) {
            expect_shape(*pd, {O, I}, "(kept outputs, kept inputs): added at the centre tap");
            ct.pointwise_delta = floats(*pd);
          }
          refuse_index_form(L);
          {
            const TensorView* sv = get(L + ".sparse_delta_values", DType::F32, false, "");
            const TensorView* sm = get(L + ".sparse_delta_mask", DType::U8, false, "");
            if (sv && !sm)
              b_.fail("missing tensor '" + L + ".sparse_delta_mask' (present iff '" + L +
                      ".sparse_delta_values' is)");
            if (sm && !sv)
              b_.fail("missing tensor '" + L + ".sparse_delta_values' (present iff '" + L +
                      ".sparse_delta_mask' is)");
            if (sv) {
              ct.sparse_index = mask_positions(*sv, *sm, uint64_t(O * I * k * k),
                                               "[" + std::to_string(O) + ", " + std::to_string(I) +
                                                   ", " + std::to_string(k) + ", " +
                                                   std::to_string(k) + "] task weight");
              ct.sparse_values = floats(*sv);
            }
          }
          read_sparse_lora(L, O, I, la != nullptr, ct);
          if (const TensorView* tb = get(L + ".bias", DType::F32, false, "")) {
            expect_shape(*tb, {O}, "(one per kept output channel)");
            ct.bias = floats(*tb);
          } else if (n.bias) {
            ct.bias.resize(size_t(O));
            for (size_t o = 0; o < size_t(O); ++o)
              ct.bias[o] = n.bias->f32(size_t(ct.out_index[o]));
          } else {
            ct.bias.assign(size_t(O), 0.0f);
          }
          if (is.h + 2 * n.padding < n.kernel || is.w + 2 * n.padding < n.kernel)
            b_.fail("metadata 'input': " + std::to_string(t_.height) + "x" +
                    std::to_string(t_.width) + " is too small: conv '" + L + "' gets " +
                    std::to_string(is.h) + "x" + std::to_string(is.w) + " with kernel " +
                    std::to_string(n.kernel));
          ct.geom.in_h = is.h;
          ct.geom.in_w = is.w;
          ct.geom.in_c = ct.in_c;
          ct.geom.out_c = ct.out_c;
          ct.geom.kernel = n.kernel;
          ct.geom.stride = n.stride;
          ct.geom.pad = n.padding;
          os = {ct.geom.out_h(), ct.geom.out_w(), ct.out_c};
          t_.macs += uint64_t(O) * uint64_t(I) * uint64_t(k * k) * uint64_t(os.h) * uint64_t(os.w);
          out_list = ct.out_index;
          out_src = "'" + oi->name + "'";
          conv_of_node[ni] = int(t_.convs.size());
          t_.convs.push_back(std::move(ct));
          break;
        }
        case Op::BatchNorm: {
          ConvTask& ct = t_.convs[size_t(conv_of_node[size_t(g.producer[size_t(in)])])];
          const int64_t C = int64_t(out_list.size());
          const std::string why =
              "(one per channel kept by conv '" + g.nodes[size_t(ct.node)].name + "')";
          const char* parts[4] = {".weight", ".bias", ".running_mean", ".running_var"};
          std::vector<float> p[4];
          for (int k = 0; k < 4; ++k) {
            const TensorView* t =
                get(n.name + parts[k], DType::F32, true, "parameter of batchnorm '" + n.name + "'");
            expect_shape(*t, {C}, why);
            p[k] = floats(*t);
          }
          ct.scale.resize(size_t(C));
          for (size_t c = 0; c < size_t(C); ++c) {
            const double var = double(p[3][c]) + n.eps;
            if (!(var > 0))
              b_.fail_tensor(n.name + ".running_var",
                             "element " + std::to_string(c) + " plus eps is not positive");
            const double s = double(p[0][c]) / std::sqrt(var);
            ct.scale[c] = float(s);
            ct.bias[c] = float((double(ct.bias[c]) - double(p[2][c])) * s + double(p[1][c]));
          }
          break;
        }
        case Op::Relu:
          break;
        case Op::Add: {
          const int in2 = n.inputs[1];
          if (lists_[size_t(in2)] != lists_[size_t(in)]) {
            std::string src = list_src_[size_t(in)];
            std::string src2 = list_src_[size_t(in2)];
            std::string tensor =
                src.size() > 2 && src[0] == '\'' ? src.substr(1, src.size() - 2) : "";
            std::string msg = "kept channels differ between the inputs of add '" + n.name + "': '" +
                              g.value_names[size_t(in)] + "' keeps " +
                              std::to_string(lists_[size_t(in)].size()) + " (set by " + src +
                              "), '" + g.value_names[size_t(in2)] + "' keeps " +
                              std::to_string(lists_[size_t(in2)].size()) + " (set by " + src2 +
                              "); both sides of a residual add must keep the same channels";
            if (!tensor.empty()) b_.fail_tensor(tensor, msg);
            b_.fail(msg);
          }
          break;
        }
        case Op::MaxPool: {
          if (is.h + 2 * n.padding < n.kernel || is.w + 2 * n.padding < n.kernel)
            b_.fail("metadata 'input': " + std::to_string(t_.height) + "x" +
                    std::to_string(t_.width) + " is too small: maxpool '" + n.name + "' gets " +
                    std::to_string(is.h) + "x" + std::to_string(is.w) + " with kernel " +
                    std::to_string(n.kernel));
          os.h = (is.h + 2 * n.padding - n.kernel) / n.stride + 1;
          os.w = (is.w + 2 * n.padding - n.kernel) / n.stride + 1;
          break;
        }
        case Op::Gap:
          os = {1, 1, is.c};
          break;
        case Op::Linear: {
          LinearTask lt;
          lt.node = int(ni);
          lt.in_f = int(out_list.size());
          const TensorView* w = get(n.name + ".weight", DType::F32, true,
                                    "weight of the linear head '" + n.name + "'");
          if (w->shape.size() != 2 || w->shape[1] != lt.in_f || w->shape[0] < 1 ||
              w->shape[0] > (1 << 20))
            b_.fail_tensor(w->name, "shape " + w->shape_str() + ", expected [classes, " +
                                        std::to_string(lt.in_f) + "] (" + std::to_string(lt.in_f) +
                                        " = channels kept by its input '" +
                                        g.value_names[size_t(in)] + "')");
          lt.out_f = int(w->shape[0]);
          const TensorView* bt =
              get(n.name + ".bias", DType::F32, true, "bias of the linear head '" + n.name + "'");
          expect_shape(*bt, {lt.out_f}, "(one per class of '" + w->name + "')");
          lt.weight = floats(*w);
          lt.bias = floats(*bt);
          t_.macs += uint64_t(lt.in_f) * uint64_t(lt.out_f);
          out_list.resize(size_t(lt.out_f));
          for (int c = 0; c < lt.out_f; ++c) out_list[size_t(c)] = c;
          out_src = "'" + w->name + "'";
          os = {1, 1, lt.out_f};
          t_.linears.push_back(std::move(lt));
          break;
        }
      }
      if (os.floats() > kMaxValueFloats)
        b_.fail("metadata 'input': " + std::to_string(t_.height) + "x" + std::to_string(t_.width) +
                " makes the output of node '" + n.name + "' too large (over the limit of " +
                std::to_string(kMaxArenaBytes >> 20) + " MiB of activations)");
      lists_[size_t(n.out)] = std::move(out_list);
      list_src_[size_t(n.out)] = out_src;
      shapes_[size_t(n.out)] = os;
    }
    const size_t classes = lists_[size_t(g.output)].size();
    if (classes != t_.labels.size())
      b_.fail("metadata 'labels' has " + std::to_string(t_.labels.size()) +
              " labels but the output '" + g.value_names[size_t(g.output)] + "' has " +
              std::to_string(classes) + " classes (set by " + list_src_[size_t(g.output)] + ")");
    t_.exec_plan.shape = shapes_;
  }

  // ---- sparse low-rank factors (SparseAdapter on SPLoRA) --------------------
  // L.lora_rank I32 [1] = r and, per factor, its stored entries:
  // L.lora_a_values at the set bits of L.lora_a_mask (flat row-major
  // positions of A [r, I']), L.lora_b_values/_mask of B [O', r] (docs/format.md). Densified here,
  // so applying the task is the dense path's: a rank component with no stored entry in A's row or
  // in B's column adds nothing and is dropped; if the rest, dense, would be larger than its product
  // (r' (O' + I') > O' I'), the product B A is added to the pointwise delta instead. Either way a
  // conv's factors take at most O' I' floats, whatever rank the file declares.
  std::set<std::string> sparse_lora_;  // convs with sparse factors

  // Sparse entries are stored as F32 values and a U8 bitmask of their
  // positions (docs/format.md): bit i (byte i / 8, bit i % 8, least
  // significant first) set iff flat row-major position i of the `limit`
  // entries of the tensor is stored. The mask is 1-D, ceil(limit / 8)
  // bytes, with zero padding bits and one set bit per value; the set
  // positions, increasing, are returned (`shape` names the tensor in
  // messages). limit <= 2^16 * 2^16 * 64^2 (the graph's channel and kernel
  // limits, or rank 2^16), so no size below overflows; nothing is allocated
  // before the mask's length and bit count match the file's own sizes.
  std::vector<int64_t> mask_positions(const TensorView& values, const TensorView& mask,
                                      uint64_t limit, const std::string& shape) {
    if (values.shape.size() != 1)
      b_.fail_tensor(values.name, "shape " + values.shape_str() + ", expected [nnz]");
    const uint64_t bytes = limit / 8 + (limit % 8 != 0);
    if (mask.shape.size() != 1 || uint64_t(mask.shape[0]) != bytes)
      b_.fail_tensor(mask.name, "shape " + mask.shape_str() + ", expected [" +
                                    std::to_string(bytes) + "] (one bit per entry of the " + shape +
                                    ", " + std::to_string(limit) +
                                    " entries, in bytes rounded up)");
    if (limit % 8 != 0 && (mask.u8(size_t(bytes - 1)) >> (limit % 8)) != 0)
      b_.fail_tensor(mask.name, "padding bits after position " + std::to_string(limit - 1) +
                                    " are set (last byte " +
                                    std::to_string(mask.u8(size_t(bytes - 1))) +
                                    "): they must be zero");
    uint64_t set = 0;
    for (size_t j = 0; j < mask.numel; ++j) set += uint64_t(__builtin_popcount(mask.u8(j)));
    if (set != values.numel)
      b_.fail_tensor(mask.name, "has " + std::to_string(set) + " set bits but '" + values.name +
                                    "' has " + std::to_string(values.numel) +
                                    " values (one value per set bit)");
    std::vector<int64_t> v;
    v.reserve(values.numel);
    for (size_t j = 0; j < mask.numel; ++j)
      for (unsigned bits = mask.u8(j); bits != 0; bits &= bits - 1)
        v.push_back(int64_t(j) * 8 + __builtin_ctz(bits));
    return v;
  }

  // The I32 position tensors that the bitmasks replaced: refused naming the
  // tensor (before the missing mask would be reported).
  void refuse_index_form(const std::string& L) {
    for (const char* k : {".sparse_delta", ".lora_a", ".lora_b"})
      if (b_.find(L + k + "_index"))
        b_.fail_tensor(L + k + "_index",
                       "sparse positions are stored as U8 bitmasks ('" + L + k +
                           "_mask'), no longer as I32 indices: repack the bundle with "
                           "this spaedge");
  }

  void read_sparse_lora(const std::string& L, int64_t O, int64_t I, bool dense, ConvTask& ct) {
    const TensorView* rk = get(L + ".lora_rank", DType::I32, false, "");
    const TensorView* av = get(L + ".lora_a_values", DType::F32, false, "");
    const TensorView* ai = get(L + ".lora_a_mask", DType::U8, false, "");
    const TensorView* bv = get(L + ".lora_b_values", DType::F32, false, "");
    const TensorView* bi = get(L + ".lora_b_mask", DType::U8, false, "");
    if (!rk && !av && !ai && !bv && !bi) return;
    const char* pair[4][2] = {{".lora_a_values", ".lora_a_mask"},
                              {".lora_a_mask", ".lora_a_values"},
                              {".lora_b_values", ".lora_b_mask"},
                              {".lora_b_mask", ".lora_b_values"}};
    const TensorView* have[4] = {av, ai, bv, bi};
    const TensorView* partner[4] = {ai, av, bi, bv};
    for (int k = 0; k < 4; ++k)
      if (have[k] && !partner[k])
        b_.fail("missing tensor '" + L + pair[k][1] + "' (present iff '" + L + pair[k][0] +
                "' is)");
    const std::string together =
        "(sparse factors: lora_rank, lora_a_values/_mask and lora_b_values/_mask "
        "come together)";
    if (!av) b_.fail("missing tensor '" + L + ".lora_a_values' " + together);
    if (!bv) b_.fail("missing tensor '" + L + ".lora_b_values' " + together);
    if (!rk) b_.fail("missing tensor '" + L + ".lora_rank' " + together);
    if (dense)
      b_.fail_tensor(av->name, "conv '" + L +
                                   "' also has dense lora_a/lora_b: its factors are dense or "
                                   "sparse, not both");
    expect_shape(*rk, {1}, "(the rank of the sparse factors)");
    const int64_t r = rk->i32(0);
    if (r < 1 || r > (1 << 16))
      b_.fail_tensor(rk->name, "rank " + std::to_string(r) + " must be in [1, 65536]");
    const std::string dims = "[" + std::to_string(r) + ", " + std::to_string(I) + "] factor A";
    const std::vector<int64_t> a_at = mask_positions(*av, *ai, uint64_t(r * I), dims);
    const std::vector<int64_t> b_at =
        mask_positions(*bv, *bi, uint64_t(O * r),
                       "[" + std::to_string(O) + ", " + std::to_string(r) + "] factor B");
    const std::vector<float> a = floats(*av), b = floats(*bv);
    sparse_lora_.insert(L);

    // Rank components stored in both factors, renumbered.
    std::vector<char> in_a(size_t(r), 0), in_b(size_t(r), 0);
    for (int64_t x : a_at) in_a[size_t(x / I)] = 1;
    for (int64_t x : b_at) in_b[size_t(x % r)] = 1;
    std::vector<int64_t> comp(size_t(r), -1);
    int64_t re = 0;
    for (size_t j = 0; j < size_t(r); ++j)
      if (in_a[j] && in_b[j]) comp[j] = re++;
    if (re == 0) return;  // no stored entry reaches the product
    if (re * (O + I) <= O * I) {
      ct.rank = int(re);
      ct.lora_a.assign(size_t(re * I), 0.0f);
      ct.lora_b.assign(size_t(O * re), 0.0f);
      for (size_t k = 0; k < a_at.size(); ++k) {
        const int64_t j = comp[size_t(a_at[k] / I)];
        if (j >= 0) ct.lora_a[size_t(j * I + a_at[k] % I)] = a[k];
      }
      for (size_t k = 0; k < b_at.size(); ++k) {
        const int64_t j = comp[size_t(b_at[k] % r)];
        if (j >= 0) ct.lora_b[size_t(b_at[k] / r * re + j)] = b[k];
      }
      return;
    }
    // The product, row by row of B: A's entries of row j are a_at[row[j], row[j + 1]).
    std::vector<size_t> row(size_t(r) + 1, 0);
    for (int64_t x : a_at) ++row[size_t(x / I) + 1];
    for (size_t j = 0; j < size_t(r); ++j) row[j + 1] += row[j];
    if (ct.pointwise_delta.empty()) ct.pointwise_delta.assign(size_t(O * I), 0.0f);
    for (size_t k = 0; k < b_at.size(); ++k) {
      const size_t o = size_t(b_at[k] / r), j = size_t(b_at[k] % r);
      if (comp[j] < 0) continue;
      float* dst = ct.pointwise_delta.data() + o * size_t(I);
      for (size_t e = row[j]; e < row[j + 1]; ++e) dst[size_t(a_at[e] % I)] += b[k] * a[e];
    }
  }

  // Pear: metadata 'shared_adapters' = {"target conv": "source conv"}; the
  // target has no lora tensors of its own and uses the source's (same kept
  // output/input counts required).
  void read_shared_adapters() {
    const std::string* raw = b_.find_meta("shared_adapters");
    if (!raw) return;
    json::Value m = meta_json("shared_adapters");
    if (!m.is(json::Type::Object))
      b_.fail("metadata 'shared_adapters' must be a JSON object {target conv: source conv}");
    const Graph& g = base_.graph();
    std::map<std::string, size_t> conv_by_name;
    for (size_t ci = 0; ci < t_.convs.size(); ++ci)
      conv_by_name[g.nodes[size_t(t_.convs[ci].node)].name] = ci;
    for (const auto& kv : m.object) {
      const std::string where = "metadata 'shared_adapters': entry '" + kv.first + "'";
      if (!kv.second.is(json::Type::String)) b_.fail(where + " must map to a conv name (a string)");
      auto ti = conv_by_name.find(kv.first);
      auto si = conv_by_name.find(kv.second.string);
      if (ti == conv_by_name.end())
        b_.fail(where + ": no conv of the base is called '" + kv.first + "'");
      if (si == conv_by_name.end())
        b_.fail(where + ": no conv of the base is called '" + kv.second.string + "'");
      ConvTask& tc = t_.convs[ti->second];
      const ConvTask& sc = t_.convs[si->second];
      if (tc.rank > 0 || sparse_lora_.count(kv.first))
        b_.fail(where + ": the target has its own lora_a/lora_b; a shared adapter replaces them");
      if (sparse_lora_.count(kv.second.string))
        b_.fail(where + ": the source '" + kv.second.string +
                "' has sparse factors; only dense lora_a/lora_b are shared");
      if (sc.rank == 0 || m.find(kv.second.string))
        b_.fail(where + ": the source '" + kv.second.string +
                "' has no lora_a/lora_b of its own (chains are not allowed)");
      if (sc.out_c != tc.out_c || sc.in_c != tc.in_c)
        b_.fail(where + ": the source keeps " + std::to_string(sc.out_c) + "x" +
                std::to_string(sc.in_c) + " channels, the target " + std::to_string(tc.out_c) +
                "x" + std::to_string(tc.in_c) + "; a shared adapter needs equal kept shapes");
      tc.rank = sc.rank;
      tc.lora_a = sc.lora_a;
      tc.lora_b = sc.lora_b;
    }
  }

  // ---- SPLoPA (block-SPA) ----------------------------------------------------
  // <conv>.splopa_coef F32 [n, O'/bo, I'/bi] per conv; each prototype set S
  // stored once as splopa.S.u F32 [n, bo, r] and splopa.S.v F32 [n, r, bi];
  // metadata 'splopa_sets' {conv: S}. Every coefficient tensor has an entry,
  // every entry names a conv with coefficients and a set whose tensors exist
  // and fit (same n, blocks tiling the kept channels), and every set tensor
  // is used. Each conv gets a copy of its set's U and V.
  struct SplopaSet {
    int n = 0, bo = 0, bi = 0, rank = 0;
    std::vector<float> u, v;
  };

  const SplopaSet& splopa_set(std::map<std::string, SplopaSet>& sets, const std::string& name,
                              const std::string& conv) {
    auto it = sets.find(name);
    if (it != sets.end()) return it->second;
    const std::string why =
        "prototype set '" + name + "' of conv '" + conv + "' (metadata 'splopa_sets')";
    const TensorView* u = get("splopa." + name + ".u", DType::F32, true, why);
    const TensorView* v = get("splopa." + name + ".v", DType::F32, true, why);
    if (u->shape.size() != 3 || u->shape[0] < 1 || u->shape[1] < 1 || u->shape[2] < 1)
      b_.fail_tensor(u->name, "shape " + u->shape_str() +
                                  ", expected [n, bo, r] (prototypes, block outputs, "
                                  "rank), each at least 1");
    const int64_t n = u->shape[0], r = u->shape[2];
    if (n > (1 << 20)) b_.fail_tensor(u->name, std::to_string(n) + " prototypes is absurd");
    if (r > (1 << 16)) b_.fail_tensor(u->name, "rank " + std::to_string(r) + " is absurd");
    if (v->shape.size() != 3 || v->shape[0] != n || v->shape[1] != r || v->shape[2] < 1)
      b_.fail_tensor(v->name, "shape " + v->shape_str() + ", expected [" + std::to_string(n) +
                                  ", " + std::to_string(r) + ", bi] (the n and rank of '" +
                                  u->name + "', block inputs)");
    if (u->shape[1] > (1 << 30) || v->shape[2] > (1 << 30))
      b_.fail_tensor(u->name, "blocks of " + std::to_string(u->shape[1]) + "x" +
                                  std::to_string(v->shape[2]) + " channels are absurd");
    SplopaSet s;
    s.n = int(n);
    s.rank = int(r);
    s.bo = int(u->shape[1]);
    s.bi = int(v->shape[2]);
    s.u = floats(*u);
    s.v = floats(*v);
    return sets.emplace(name, std::move(s)).first->second;
  }

  void read_splopa() {
    const Graph& g = base_.graph();
    std::map<std::string, std::string> set_of;  // conv -> set
    if (b_.find_meta("splopa_sets")) {
      json::Value m = meta_json("splopa_sets");
      if (!m.is(json::Type::Object))
        b_.fail("metadata 'splopa_sets' must be a JSON object {conv: prototype set}");
      for (const auto& kv : m.object) {
        if (!kv.second.is(json::Type::String) || kv.second.string.empty())
          b_.fail("metadata 'splopa_sets': entry '" + kv.first +
                  "' must map to a prototype set name (a non-empty string)");
        set_of[kv.first] = kv.second.string;
      }
    }
    std::set<std::string> convs;
    std::map<std::string, SplopaSet> sets;
    for (ConvTask& ct : t_.convs) {
      const std::string& L = g.nodes[size_t(ct.node)].name;
      convs.insert(L);
      const TensorView* c = get(L + ".splopa_coef", DType::F32, false, "");
      auto it = set_of.find(L);
      if (!c) {
        if (it != set_of.end())
          b_.fail("metadata 'splopa_sets': entry '" + L + "': the conv has no tensor '" + L +
                  ".splopa_coef'");
        continue;
      }
      if (it == set_of.end())
        b_.fail_tensor(c->name,
                       "has no prototype set: metadata 'splopa_sets' has no entry for '" + L + "'");
      const SplopaSet& s = splopa_set(sets, it->second, L);
      const int64_t O = ct.out_c, I = ct.in_c;
      const std::string blocks = std::to_string(s.bo) + "x" + std::to_string(s.bi);
      if (c->shape.size() != 3 || c->shape[0] != s.n || s.bo > O || s.bi > I || c->shape[1] > O ||
          c->shape[2] > I || c->shape[1] * s.bo != O || c->shape[2] * s.bi != I)
        b_.fail_tensor(c->name, "shape " + c->shape_str() + ", expected [" + std::to_string(s.n) +
                                    ", " + (O % s.bo ? "?" : std::to_string(O / s.bo)) + ", " +
                                    (I % s.bi ? "?" : std::to_string(I / s.bi)) + "] (the " +
                                    std::to_string(s.n) + " prototypes of set '" + it->second +
                                    "' in " + blocks + " blocks tiling the " + std::to_string(O) +
                                    "x" + std::to_string(I) + " kept channels)");
      ct.splopa_n = s.n;
      ct.splopa_rank = s.rank;
      ct.splopa_bo = s.bo;
      ct.splopa_bi = s.bi;
      ct.splopa_coef = floats(*c);
      ct.splopa_u = s.u;
      ct.splopa_v = s.v;
    }
    for (const auto& kv : set_of)
      if (!convs.count(kv.first))
        b_.fail("metadata 'splopa_sets': entry '" + kv.first +
                "': no conv of the base is called '" + kv.first + "'");
    for (const auto& t : b_.tensors())
      if (t.name.compare(0, 7, "splopa.") == 0 && !used_.count(t.name))
        b_.fail_tensor(t.name,
                       "unknown tensor: no conv's entry in metadata 'splopa_sets' uses this "
                       "prototype set (set tensors are splopa.<set>.u and splopa.<set>.v)");
  }

  void check_unknown() {
    for (const auto& t : b_.tensors())
      if (!used_.count(t.name))
        b_.fail_tensor(t.name,
                       "unknown tensor: no graph node of the base uses it "
                       "(task tensors are <conv>.out_index, "
                       ".in_index, .lora_a, .lora_b, .weight_delta, .pointwise_delta, "
                       ".sparse_delta_values, .sparse_delta_mask, .lora_rank, "
                       ".lora_a_values, .lora_a_mask, .lora_b_values, .lora_b_mask, .bias; "
                       "<batchnorm>.weight/.bias/.running_mean/.running_var; "
                       "<linear>.weight/.bias)");
  }
};

}  // namespace

Task::Task(const BaseModel& base, const std::string& p) {
  Bundle b(p, "spaedge-task");
  path = p;
  bundle_bytes = b.file_size();
  Loader(base, b, *this).run();
  build_exec_plan(base.graph(), *this);
  if (exec_plan.arena_floats > kMaxArenaBytes / sizeof(float))
    b.fail("metadata 'input': a " + std::to_string(channels) + "x" + std::to_string(height) + "x" +
           std::to_string(width) + " input needs " +
           std::to_string((exec_plan.arena_floats * sizeof(float)) >> 20) +
           " MiB of activations in this network (limit " + std::to_string(kMaxArenaBytes >> 20) +
           " MiB)");
  // Per-task tables for a fast switch: B' transposed so the panel lanes
  // (output channels) of each rank row are contiguous.
  for (ConvTask& ct : convs) {
    ct.lora_bt.resize(size_t(ct.rank) * size_t(ct.out_c));
    for (size_t o = 0; o < size_t(ct.out_c); ++o)
      for (size_t r = 0; r < size_t(ct.rank); ++r)
        ct.lora_bt[r * size_t(ct.out_c) + o] = ct.lora_b[o * size_t(ct.rank) + r];
  }
}

}  // namespace spaedge
